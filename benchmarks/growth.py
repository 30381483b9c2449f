"""Does growing pay? static vs heuristic vs scratch on a task (mnist1d, text), several seeds, same epoch budget.

Each run is logged as events; the results, training FLOPs included (`esper.tolaria.flops`, a projection of each
run's events: training steps and isolated seed passes, not evaluations), are read back from the logs, so runs of
one workspace may come from several invocations (e.g. one seed each, in parallel) and `--report` prints the table
of what the workspace holds. Prints one JSON object on stdout (last line); progress on stderr. On text the table
also gives test bits per character (lower is better).

    .venv/bin/python benchmarks/growth.py [--task text] [--seeds 0 1 2] [--epochs N] [--workspace DIR] [--report]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from esper.app.runs import final_architecture
from esper.leyline import RunConfig
from esper.store import Recorder, Workspace
from esper.tamiyo.controllers import make_controller
from esper.tolaria.data import load_task_data
from esper.tolaria.flops import epoch_flops
from esper.tolaria.loop import StoreSink, execute, resolve_config
from esper.tolaria.tasks import get_task

RESULTS_SQL = """
SELECT s.payload->>'$.config.controller' AS controller,
       (s.payload->>'$.config.seed')::INT AS seed,
       (f.payload->>'$.test_accuracy')::DOUBLE AS test_accuracy,
       (f.payload->>'$.params')::BIGINT AS params,
       (f.payload->>'$.test_bits_per_char')::DOUBLE AS test_bits_per_char,
       (SELECT count(*) FROM events t WHERE t.run_id = s.run_id AND t.type = 'SeedTransitioned'
          AND t.payload->>'$.to_stage' = 'FOSSILIZED') AS fossilized,
       s.run_id
FROM events s JOIN events f ON f.run_id = s.run_id AND f.type = 'RunFinished'
WHERE s.type = 'RunStarted'
ORDER BY controller, seed
"""


def run_one(ws: Workspace, run_id: str, config: RunConfig) -> None:
    """Run to the end, logging into the workspace."""
    cfg = resolve_config(config)
    started = time.perf_counter()
    with Recorder(ws.store_path(run_id)) as recorder:
        execute(cfg, make_controller(cfg.controller, cfg.seed), StoreSink(recorder, run_id))
    print(f"  {run_id}: {time.perf_counter() - started:.1f}s", file=sys.stderr)


def training_flops(reader, task: str, run_ids: list[str]) -> dict[str, float]:
    """Run id → training FLOPs, projected from each run's events."""
    data = load_task_data(task, RunConfig().data_seed)
    examples = data.windows if task == "text" else len(data.train)
    return {run_id: float(sum(epoch_flops((r.event for r in reader.read_run(run_id)), data.input_shape,
                                          examples).values()))
            for run_id in run_ids}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--task", default="mnist1d")
    parser.add_argument("--epochs", type=int, default=0, help="default: the task preset's")
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--report", action="store_true", help="train nothing: the table of the workspace's runs")
    args = parser.parse_args()
    args.epochs = args.epochs or get_task(args.task).epochs  # every controller trains the same epochs
    ws = Workspace(args.workspace or Path(tempfile.mkdtemp(prefix="esper-growth-")))
    print(f"workspace {ws.root}", file=sys.stderr)
    for seed in [] if args.report else args.seeds:
        for controller in ("static", "heuristic"):
            run_one(ws, f"{controller}-{seed}", RunConfig(task=args.task, controller=controller, seed=seed,
                                                          epochs=args.epochs))
        like, architecture, _ = final_architecture(ws, f"heuristic-{seed}")
        run_one(ws, f"scratch-{seed}", RunConfig(task=args.task, controller="scratch", seed=seed, epochs=args.epochs,
                                                 like=like, architecture=architecture))
    with ws.reader() as reader:
        rows = reader.con.execute(RESULTS_SQL).fetchall()
        flops = training_flops(reader, args.task, [r[6] for r in rows])
    table: dict[str, dict] = {}
    for controller in ("static", "heuristic", "scratch"):
        mine = [r for r in rows if r[0] == controller]
        acc_mean, acc_std = mean_std([r[2] * 100 for r in mine])
        table[controller] = {
            "test_accuracy_mean": round(acc_mean, 2),
            "test_accuracy_std": round(acc_std, 2),
            "params_mean": round(statistics.fmean(r[3] for r in mine)),
            "gflops_mean": round(statistics.fmean(flops[r[6]] for r in mine) / 1e9, 3),
            "fossilized_per_run": [r[5] for r in mine],
        }
        if args.task == "text":
            bits_mean, bits_std = mean_std([r[4] for r in mine])
            table[controller] |= {"test_bits_per_char_mean": round(bits_mean, 3), "test_bits_per_char_std": round(bits_std, 3)}
    h, s, c = table["heuristic"], table["static"], table["scratch"]
    checks = {
        "heuristic_beats_static_by_10_points": h["test_accuracy_mean"] - s["test_accuracy_mean"] >= 10,
        "heuristic_within_3_points_of_scratch": h["test_accuracy_mean"] >= c["test_accuracy_mean"] - 3,
        "heuristic_less_compute_than_scratch": h["gflops_mean"] < c["gflops_mean"],
        "every_heuristic_run_fossilizes": all(n >= 1 for n in h["fossilized_per_run"]),
    }
    if args.task == "text":  # accuracy is next-byte accuracy; bits per character are what a language model reports
        checks = {"heuristic_beats_static_in_bits_per_char":
                  h["test_bits_per_char_mean"] + h["test_bits_per_char_std"] < s["test_bits_per_char_mean"],
                  "every_heuristic_run_fossilizes": checks["every_heuristic_run_fossilizes"]}
    print(f"{'controller':<10} {'test acc %':>14} {'bits/char':>14} {'params':>8} {'GFLOP':>8}", file=sys.stderr)
    for name, row in table.items():
        bits = f"{row['test_bits_per_char_mean']:>6.3f} ± {row['test_bits_per_char_std']:<5.3f}" if args.task == "text" else "-"
        print(f"{name:<10} {row['test_accuracy_mean']:>7.2f} ± {row['test_accuracy_std']:<4.2f} {bits:>14} "
              f"{row['params_mean']:>8} {row['gflops_mean']:>8.3f}", file=sys.stderr)
    seeds = sorted({r[1] for r in rows})
    print(json.dumps({"task": args.task, "epochs": args.epochs, "seeds": seeds, "results": table, "checks": checks}))


if __name__ == "__main__":
    main()
