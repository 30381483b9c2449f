"""Choose a task's preset by a recorded sweep: the heuristic's best grid point on the tuning seeds.

    .venv/bin/python benchmarks/tune.py --workspace runs-tune          # ~180 runs: ~30 min on 2 cores
    .venv/bin/python benchmarks/tune.py --seeds 100 101 --lr 0.003 0.01  # a smaller sweep
    .venv/bin/python benchmarks/tune.py --lr 0.01 --seed-lr 0.003 --batch-size 100 --weight-decay 0 0.001 0.01

The grid (why these points): the host's Adam rate around the preset's 3e-3 up to the 1e-2 of the MNIST-1D
paper's own recipe and one step beyond (2e-2); the seeds' rate at the host's old and new values (a seed
trains alone on a detached activation, so it may want its own); batch size 100 (the paper's) and 128 (the
preset's); the optimizers' L2 weight decay only when asked (`--weight-decay`; default: the preset's). Every grid point trains the `heuristic` (the default controller, which picks the preset) and
`static` (the host alone; it has no seeds, so one run per host rate and batch size) on the tuning seeds
100–109, never the evaluation seeds 0–19 of the other benchmarks. Every run is recorded in the workspace
(reused when re-run) and every number is read back from the logs: the table ranks this command's grid points
(not other sweeps' runs in the same workspace) by the mean final validation accuracy over the tuning seeds.
Prints the table on stderr and one JSON line.
"""

import itertools
import json
import os
import tempfile
from pathlib import Path

from msgspec.structs import replace

from esper.leyline import RunConfig
from esper.store import Workspace
from esper.tolaria.tasks import TASKS, get_task
from recording import Job, check_chains, check_recipes, record_all
from script import TUNING_SEEDS, Parser, positive_int, run, say, tuning_seed


def grid_jobs(task: str, lrs: list[float], seed_lrs: list[float], batches: list[int], seeds: list[int],
              decays: list[float] | None = None) -> list[Job]:
    """A heuristic run per grid point and seed, and a static one per host rate, batch size, decay and seed.
    `decays` (default: the preset's alone) name their point only when not the preset's, so the runs of a sweep
    without them keep their ids."""
    base, jobs = get_task(task), []
    for lr, seed_lr, batch, decay in itertools.product(lrs, seed_lrs, batches, decays or [base.weight_decay]):
        preset = replace(base, lr=lr, seed_lr=seed_lr, batch_size=batch, weight_decay=decay)
        tag = "" if decay == base.weight_decay else f"-wd{decay:g}"
        point = f"lr{lr:g}-slr{seed_lr:g}-b{batch}{tag}"
        for seed in seeds:
            jobs.append(Job(f"tune-heuristic-{point}-s{seed}", RunConfig(task=task, controller="heuristic", seed=seed), preset))
            if seed_lr == seed_lrs[0]:  # the static host never uses the seeds' rate
                jobs.append(Job(f"tune-static-lr{lr:g}-b{batch}{tag}-s{seed}",
                                RunConfig(task=task, controller="static", seed=seed), replace(preset, seed_lr=base.seed_lr)))
    return jobs


POINTS_SQL = """
SELECT r.controller,
       (s.payload->>'$.preset.lr')::DOUBLE AS lr,
       (s.payload->>'$.preset.seed_lr')::DOUBLE AS seed_lr,
       (s.payload->>'$.preset.batch_size')::INT AS batch_size,
       (s.payload->>'$.preset.weight_decay')::DOUBLE AS weight_decay,
       count(*) AS runs, avg(r.val_accuracy) AS val, stddev_samp(r.val_accuracy) AS val_sd,
       avg(r.test_accuracy) AS test, avg(r.params) AS params
FROM runs r JOIN events s ON s.run_id = r.run_id AND s.type = 'RunStarted'
WHERE r.finished AND list_contains(?, r.run_id)
GROUP BY ALL ORDER BY r.controller, val DESC
"""


def read_points(ws: Workspace, jobs: list[Job]) -> list[dict]:
    """The grid points of `jobs` (this command's grid: not every `tune-` run an earlier sweep left in the workspace),
    best first, each read back from its runs' checked logs."""
    run_ids = [job.run_id for job in jobs]
    with ws.reader() as reader:
        check_chains(reader, run_ids)
        cur = reader.con.execute(POINTS_SQL, [run_ids])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--task", default="mnist1d", choices=TASKS)
    parser.add_argument("--workspace", type=Path, default=None, help="record into (and reuse) this workspace")
    parser.add_argument("--seeds", type=tuning_seed, nargs="+", default=TUNING_SEEDS,
                        help="tuning seeds, never the evaluation seeds 0-19 (default 100-109)")
    parser.add_argument("--lr", type=float, nargs="+", default=[3e-3, 1e-2, 2e-2], help="host learning rates")
    parser.add_argument("--seed-lr", type=float, nargs="+", default=[3e-3, 1e-2], help="seed learning rates")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[100, 128])
    parser.add_argument("--weight-decay", type=float, nargs="+", default=None,
                        help="L2 weight decays of the optimizers (default: the preset's)")
    parser.add_argument("--workers", type=positive_int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    jobs = grid_jobs(args.task, args.lr, args.seed_lr, args.batch_size, args.seeds, args.weight_decay)
    check_recipes(jobs)
    ws = Workspace(args.workspace or Path(tempfile.mkdtemp(prefix="esper-tune-")))
    say(f"workspace {ws.root}")
    record_all(ws, jobs, args.workers)
    points = read_points(ws, jobs)
    say(f"{'controller':<10} {'lr':>7} {'seed lr':>8} {'batch':>5} {'decay':>6} {'runs':>4} {'val %':>13} {'test %':>7} "
        f"{'params':>7}")
    for p in points:
        seed_lr = f"{p['seed_lr']:g}" if p["controller"] == "heuristic" else "-"
        say(f"{p['controller']:<10} {p['lr']:>7g} {seed_lr:>8} {p['batch_size']:>5} {p['weight_decay']:>6g} {p['runs']:>4} "
            f"{p['val'] * 100:6.2f} ± {(p['val_sd'] or 0) * 100:4.2f} {p['test'] * 100:7.2f} {p['params']:>7,.0f}")
    best = {c: next(p for p in points if p["controller"] == c) for c in ("heuristic", "static") if
            any(p["controller"] == c for p in points)}
    for controller, p in best.items():
        seed_lr = f", seed lr {p['seed_lr']:g}" if controller == "heuristic" else ""
        say(f"best {controller}: lr {p['lr']:g}{seed_lr}, batch {p['batch_size']}, weight decay {p['weight_decay']:g} "
            f"(val {p['val'] * 100:.2f} %)")
    print(json.dumps({"task": args.task, "seeds": args.seeds, "workspace": str(ws.root), "preset": best.get("heuristic"),
                      "static_best": best.get("static"), "points": points}))


if __name__ == "__main__":
    run(main)
