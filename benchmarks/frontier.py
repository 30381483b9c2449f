"""Accuracy per parameter: the strongest static models beside Esper's growth, every number from a log.

    .venv/bin/python benchmarks/frontier.py --workspace runs-frontier --out docs/frontier.md --svg docs/frontier.svg
    .venv/bin/python benchmarks/frontier.py --workspace runs-frontier          # ~680 runs: ~35 minutes on 2 cores
    .venv/bin/python benchmarks/frontier.py --tune-seeds 100 --eval-seeds 0 --epochs 3   # a quick check

Static models (`esper run --controller static --host H --host-option ...`): the cnn1d host at widths 4 to 32
channels and the MNIST-1D paper's reference CNN (`paper_cnn`) at 12, 25 and 40 channels, about 0.6k-30k
parameters. Each trains at its best recipe of the grid, host learning rate × L2 weight decay (chosen by mean
validation accuracy on the tuning seeds 100-109, never the evaluation seeds), then on the evaluation seeds 0-4. The
rates span the old preset's 3e-3, the tuned preset's 1e-2 and two steps beyond (2e-2, 5e-2), so that a static
model's best rate is not at the edge of what was tried; the decays are the preset's none and 1e-3, which gave the
host alone its best validation accuracy in `benchmarks/tune.py --weight-decay 0 0.0001 0.001 0.01` (1e-2 cost it
13 points). Beside them, on the
evaluation seeds at the task's preset: the heuristic (default and eager, `min_gain=1.0`), the random
controller and any `--policy` files, uncapped and under three size caps (`--max-params`), tracing Esper's own
accuracy-per-parameter curve. The cnn1d host has a fixed depth of three stages; depth is not varied.

Prints a markdown table (mean ± sd test accuracy, params, training GFLOPs from each log) and one JSON line;
`--svg FILE` also writes the accuracy-vs-parameters chart, `--out FILE` a page with both that says which command,
commit and machine made it.
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from msgspec.structs import replace

from esper.leyline import HeuristicConfig, LifecycleConfig, RunConfig
from esper.nissa.charts import Series, line_chart, svg_file
from esper.store import Workspace
from esper.tolaria.tasks import get_task
from recording import Job, check_recipes, commit, generated_by, record_all, seed_range, stamp, training_gflops
from script import (TUNING_SEEDS, Parser, existing_file, non_negative_int, output_file, positive_int, run, say,
                    tuning_seed, write)

TASK = "mnist1d"
STATIC_MODELS = [("cnn1d", {"channels": c}) for c in (4, 8, 16, 32)] + [("paper_cnn", {"channels": c}) for c in (12, 25, 40)]
LRS = [3e-3, 1e-2, 2e-2, 5e-2]
DECAYS = [0.0, 1e-3]
CAPS = [3000, 6000, 12000]
GROWERS = {"heuristic": HeuristicConfig(), "eager": HeuristicConfig(min_gain=1.0)}


def model_name(host: str, options: dict) -> str:
    return f"{host}-" + "-".join(f"{k}{v}" for k, v in options.items())


def static_job(name: str, host: str, options: dict, recipe: tuple[float, float], seed: int, epochs: int,
               stage: str) -> Job:
    lr, decay = recipe
    preset = replace(get_task(TASK), host=host, host_options=options, lr=lr, weight_decay=decay)
    config = RunConfig(task=TASK, controller="static", seed=seed, epochs=epochs)
    return Job(f"frontier-{stage}-{name}-{recipe_tag(recipe)}-s{seed}", config, preset)


def recipe_tag(recipe: tuple[float, float]) -> str:
    """A recipe in a run id: `lr0.01`, and `-wd0.001` where it decays (so runs without decay keep their ids)."""
    lr, decay = recipe
    return f"lr{lr:g}" + (f"-wd{decay:g}" if decay else "")


def recipe_label(recipe: tuple[float, float]) -> str:
    lr, decay = recipe
    return f"lr {lr:g}, decay {decay:g}"


def grower_jobs(seeds: list[int], epochs: int, policies: list[str]) -> list[Job]:
    jobs = []
    for cap in [0, *CAPS]:
        life = LifecycleConfig(max_params=cap)
        for seed in seeds:
            for label, knobs in GROWERS.items():
                jobs.append(Job(f"frontier-grow-{label}-cap{cap}-s{seed}", RunConfig(
                    task=TASK, controller="heuristic", seed=seed, epochs=epochs, heuristic=knobs, lifecycle=life)))
            jobs.append(Job(f"frontier-grow-random-cap{cap}-s{seed}", RunConfig(
                task=TASK, controller="random", seed=seed, epochs=epochs, lifecycle=life)))
            for i, path in enumerate(policies):
                jobs.append(Job(f"frontier-grow-policy{i}-cap{cap}-s{seed}", RunConfig(
                    task=TASK, controller="policy", policy=path, seed=seed, epochs=epochs, lifecycle=life)))
    return jobs


def finished(ws: Workspace, prefix: str) -> dict[str, dict]:
    """Run id → test and validation accuracy, params and training GFLOPs of the finished runs named `prefix...`."""
    with ws.reader() as reader:
        rows = reader.con.execute("SELECT run_id, val_accuracy, test_accuracy, params FROM runs WHERE finished "
                                  "AND starts_with(run_id, ?)", [prefix]).fetchall()
        gflops = training_gflops(reader, TASK, [row[0] for row in rows])  # read from checked logs
    return {run_id: {"val": val, "test": test, "params": params, "gflops": gflops[run_id]}
            for run_id, val, test, params in rows}


def best_recipe(tuned: dict[str, dict], name: str, grid: list[tuple[float, float]], seeds: list[int]) -> tuple[float, float]:
    def mean_val(recipe: tuple[float, float]) -> float:
        return statistics.fmean(tuned[f"frontier-tune-{name}-{recipe_tag(recipe)}-s{s}"]["val"] for s in seeds)
    return max(grid, key=mean_val)


def row(label: str, runs: list[dict]) -> dict:
    tests = [r["test"] * 100 for r in runs]
    return {"model": label, "runs": len(runs), "test_accuracy": statistics.fmean(tests),
            "sd": statistics.stdev(tests) if len(tests) > 1 else 0.0,
            "params": statistics.fmean(r["params"] for r in runs), "gflops": statistics.fmean(r["gflops"] for r in runs)}


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--workspace", type=Path, default=None, help="record into (and reuse) this workspace")
    parser.add_argument("--tune-seeds", type=tuning_seed, nargs="+", default=TUNING_SEEDS,
                        help="the seeds each static model's recipe is chosen on, never the evaluation seeds 0-19")
    parser.add_argument("--eval-seeds", type=non_negative_int, nargs="+", default=list(range(5)))
    parser.add_argument("--epochs", type=non_negative_int, default=0, help="epochs per run (default: the preset's)")
    parser.add_argument("--weight-decay", type=float, nargs="+", default=DECAYS, metavar="D",
                        help=f"the static models' L2 weight decays to try (default: {' '.join(f'{d:g}' for d in DECAYS)})")
    parser.add_argument("--policy", action="append", default=[], type=existing_file,
                        help="a policy file to place on the curve (repeatable)")
    parser.add_argument("--svg", type=output_file, default=None, help="write the accuracy-vs-parameters chart here")
    parser.add_argument("--out", type=output_file, default=None, help="write a page of the table (and chart) here")
    parser.add_argument("--workers", type=positive_int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    started, made_by = time.perf_counter(), commit()
    models = {model_name(h, o): (h, o) for h, o in STATIC_MODELS}
    grid = [(lr, decay) for lr in LRS for decay in args.weight_decay]
    tuning = [static_job(n, h, o, recipe, s, args.epochs, "tune") for n, (h, o) in models.items() for recipe in grid
              for s in args.tune_seeds]
    check_recipes(tuning)  # every recipe is in the tuning grid
    ws = Workspace(args.workspace or Path(tempfile.mkdtemp(prefix="esper-frontier-")))
    say(f"workspace {ws.root}")
    recorded = record_all(ws, tuning, args.workers)
    tuned = finished(ws, "frontier-tune-")
    recipe_of = {name: best_recipe(tuned, name, grid, args.tune_seeds) for name in models}
    evaluation = [static_job(n, h, o, recipe_of[n], s, args.epochs, "eval") for n, (h, o) in models.items()
                  for s in args.eval_seeds]
    evaluated = evaluation + grower_jobs(args.eval_seeds, args.epochs, args.policy)
    recorded += record_all(ws, evaluated, args.workers)
    done = finished(ws, "frontier-")
    rows = [row(f"static {n} ({recipe_label(recipe_of[n])})", [done[j.run_id] for j in evaluation if f"-{n}-" in j.run_id])
            for n in models]
    # a policy's runs are named by its place on the command line; its rows by its file
    labels = {g: g for g in [*GROWERS, "random"]} | {f"policy{i}": f"policy:{Path(p).stem}" for i, p in enumerate(args.policy)}
    for key, label in labels.items():
        for cap in [0, *CAPS]:
            runs = [done[f"frontier-grow-{key}-cap{cap}-s{s}"] for s in args.eval_seeds]
            rows.append(row(label + (f" ≤ {cap:,}" if cap else ""), runs))
    growers = list(labels.values())
    say(table(rows))
    if args.svg is not None:
        write(args.svg, svg_file(chart(rows, growers)))
    if args.out is not None:
        made = stamp("frontier.py", ws, started, made_by, recorded, len(tuning) + len(evaluated))
        write(args.out, page(rows, growers, args, made))
    recipes = {n: {"lr": lr, "weight_decay": decay} for n, (lr, decay) in recipe_of.items()}
    print(json.dumps({"eval_seeds": args.eval_seeds, "tune_seeds": args.tune_seeds, "grid": grid, "recipe": recipes,
                      "rows": rows, "margins": margins(rows)}))


def margins(rows: list[dict]) -> list[dict]:
    """For each cap: the default heuristic under it against the best static model of no more parameters (the
    target is a margin of at least 2 points of mean test accuracy)."""
    statics = [r for r in rows if r["model"].startswith("static")]
    out = []
    for cap in CAPS:
        grown = next(r for r in rows if r["model"] == f"heuristic ≤ {cap:,}")
        rivals = [r for r in statics if r["params"] <= grown["params"]]
        best = max(rivals, key=lambda r: r["test_accuracy"], default=None)
        out.append({"cap": cap, "heuristic": grown["test_accuracy"], "params": grown["params"],
                    "best_static": best and best["model"], "static": best and best["test_accuracy"],
                    "margin": best and grown["test_accuracy"] - best["test_accuracy"]})
    return out


def margin_table(rows: list[dict]) -> str:
    lines = ["| cap | heuristic % | its params | best static of no more params | its test accuracy % | margin (points) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for m in margins(rows):
        static = "none that small" if m["best_static"] is None else m["best_static"]
        tail = "| - | - |" if m["static"] is None else f"| {m['static']:.2f} | {m['margin']:+.2f} |"
        lines.append(f"| {m['cap']:,} | {m['heuristic']:.2f} | {m['params']:,.0f} | {static} {tail}")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = ["| model | runs | test accuracy % | params | training GFLOPs |", "| --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: r["params"]):
        lines.append(f"| {r['model']} | {r['runs']} | {r['test_accuracy']:.2f} ± {r['sd']:.2f} | {r['params']:,.0f} | "
                     f"{r['gflops']:.2f} |")
    return "\n".join(lines)


def page(rows: list[dict], growers: list[str], args: argparse.Namespace, made: dict) -> str:
    chart_link = ""
    if args.svg is not None:
        chart_link = (f"\n![test accuracy against parameters]({os.path.relpath(args.svg, args.out.parent)})\n\n"
                      f"Lines: {legend(rows, growers)}.\n")
    return f"""# Accuracy per parameter: growth against the strongest static models ({TASK})

{generated_by(made)}

Static models (`esper run --controller static --host H --host-option channels=C`) each at its best recipe of host
learning rate ({', '.join(f'{lr:g}' for lr in LRS)}) and L2 weight decay ({', '.join(f'{d:g}' for d in args.weight_decay)}), chosen by mean validation accuracy on the tuning seeds
{seed_range(args.tune_seeds)}, then trained on the evaluation seeds {seed_range(args.eval_seeds)}. Beside them, on the
evaluation seeds at the task's preset: the heuristic (default, and eager: `--heuristic min_gain=1.0`), the random
controller and any policy file, uncapped and under `--max-params` caps of {', '.join(f'{c:,}' for c in CAPS)}.
Test accuracy is mean ± sd over the evaluation seeds; params and training GFLOPs are means.

{table(rows)}
{chart_link}
## The default heuristic under each cap against the best static model of no more parameters

{margin_table(rows)}
"""


COLOURS = {"#444444": "grey", "#1f77b4": "blue", "#2ca02c": "green", "#d62728": "red", "#9467bd": "purple",
           "#8c564b": "brown"}


def legend(rows: list[dict], growers: list[str]) -> str:
    return ", ".join(f"{s.label} {COLOURS[s.color]}" for s in chart_series(rows, growers))


def chart(rows: list[dict], growers: list[str]) -> str:
    return line_chart("frontier", "Test accuracy against parameters", chart_series(rows, growers),
                      y_format=lambda v: f"{v:.0f} %", y_label="test accuracy", x_label="parameters")


def chart_series(rows: list[dict], growers: list[str]) -> list[Series]:
    """Test accuracy against parameters: the static models as one line, each grower (its caps) as another."""
    colours = list(COLOURS)
    groups = {"static": [r for r in rows if r["model"].startswith("static")]}
    groups |= {g: [r for r in rows if r["model"].split(" ")[0] == g] for g in growers}
    return [Series(label, sorted((r["params"], r["test_accuracy"]) for r in members), colours[i % len(colours)])
            for i, (label, members) in enumerate(groups.items()) if members]


if __name__ == "__main__":
    run(main)
