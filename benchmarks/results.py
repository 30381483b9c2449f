"""Generate docs/results.md: every table recorded as runs in a workspace and read back from their logs.

    .venv/bin/python benchmarks/results.py --out docs/results.md              # fast: seeds 0-2, ~5 min on 2 cores
    .venv/bin/python benchmarks/results.py --full --out docs/results.md       # seeds 0-19, ~40 min on 2 cores
    .venv/bin/python benchmarks/results.py --policy ppo.pt --policy iql.pt    # add learned policies' table
    .venv/bin/python benchmarks/results.py --task text --out docs/results-text.md   # the text task: ~12 min
    .venv/bin/python benchmarks/results.py --epochs 50 --heuristic warmup_epochs=16  # another budget and gardener
    .venv/bin/python benchmarks/results.py --full --scratch-epochs 15 17     # scratch for fewer epochs, too

What it records (one run per controller and seed, `--workers` runs at a time, each in its own store file):
`static` (the host alone), `heuristic` (the default gardener, or the one `--heuristic` sets), `eager` (the
heuristic with `min_gain=1.0`: germinate as soon as the host has warmed up), `scratch` (each heuristic run's
final architecture trained from initialisation for the same epochs; with `--scratch-epochs E`, for E epochs too:
a run planned shorter, its rates annealed over its own last epochs), and each `--policy` file played greedily.
A run already in the workspace (`--workspace DIR`, reused) is read, not recorded again, if it finished with the
same resolved config and task preset (what decides its events); so adding a policy to a full workspace records
only that policy's runs. The page names the commit that ran the command.

Every number in the output comes from the logs: accuracies and parameters with SQL over the `runs` view (on
text also test bits per character, from each `RunFinished`), training FLOPs as the projection
`esper.tolaria.flops` of each run's events. Prints the markdown (also
written to `--out`), progress on stderr, and a last line of JSON with the same tables.
"""

import itertools
import json
import math
import os
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

import msgspec

from esper.app.runs import blueprints_problem, final_architecture
from esper.errors import BadInput
from esper.leyline import EpochEnded, HeuristicConfig, LifecycleConfig, RunConfig
from esper.leyline.config import commands_problem, from_knobs
from esper.store import Workspace
from esper.tamiyo.controllers import make_controller
from esper.tolaria.tasks import TASKS
from recording import Job, commit, flops_projection, generated_by, record_all, seed_range, stamp
from script import EVALUATION_SEEDS, Parser, existing_file, non_negative_int, output_file, positive_int, run, say, write

FAST_SEEDS = [0, 1, 2]
FULL_SEEDS = list(EVALUATION_SEEDS)
EAGER = HeuristicConfig(min_gain=1.0)
BASELINES = ("static", "heuristic", "eager", "scratch")


# ---- what a run is ------------------------------------------------------------------------------


def planned_config(task: str, kind: str, seed: int, epochs: int, policy: str | None = None,
                   knobs: HeuristicConfig = HeuristicConfig(), lifecycle: LifecycleConfig = LifecycleConfig(),
                   commands: int = 1) -> RunConfig:
    """The config of run `kind` (a baseline, or `policy` with its file) on `seed`, before --like is resolved;
    `knobs`: the `heuristic` runs' gardener (the default one unless `--heuristic` changes it); `lifecycle` and
    `commands` (per epoch): the `heuristic` and `eager` runs' seed lifecycle and decisions (the defaults unless
    `--lifecycle` and `--commands-per-epoch` change them)."""
    if kind in ("heuristic", "eager"):
        return RunConfig(task=task, controller="heuristic", seed=seed, epochs=epochs, lifecycle=lifecycle,
                         heuristic=knobs if kind == "heuristic" else EAGER, commands_per_epoch=commands)
    if kind == "policy":
        brain = make_controller("policy", seed, policy)
        cap = LifecycleConfig(max_params=getattr(brain, "max_params", 0))
        return RunConfig(task=task, controller="policy", seed=seed, epochs=epochs, policy=policy, lifecycle=cap)
    return RunConfig(task=task, controller=kind, seed=seed, epochs=epochs)


def run_prefix(task: str) -> str:
    """The run ids' start: mnist1d's runs keep the ids of the workspaces recorded before other tasks came."""
    return "results-" if task == "mnist1d" else f"results-{task}-"


def run_id_of(task: str, kind: str, seed: int, tag: str = "") -> str:
    return f"{run_prefix(task)}{kind}{tag}-s{seed}"


# ---- reading the logs back ----------------------------------------------------------------------

RUNS_SQL = """
SELECT r.run_id, r.seed, r.test_accuracy, r.params, (f.payload->>'$.test_bits_per_char')::DOUBLE, r.epochs
FROM runs r JOIN events f ON f.run_id = r.run_id AND f.type = 'RunFinished'
WHERE r.finished AND r.task = $task AND starts_with(r.run_id, $prefix) ORDER BY r.run_id
"""


def read_back(ws: Workspace, task: str) -> dict[str, dict[int, dict]]:
    """Kind → seed → {test_accuracy, bits_per_char (text; else None), params, epochs, gflops, curve}, from the logs;
    `curve` is epoch by epoch (training GFLOPs spent so far, validation accuracy)."""
    out: dict[str, dict[int, dict]] = {}
    with ws.reader() as reader:
        rows = reader.con.execute(RUNS_SQL, {"task": task, "prefix": run_prefix(task)}).fetchall()
        flops = flops_projection(task)
        for run_id, seed, test_accuracy, params, bits, trained in rows:
            kind = run_id.removeprefix(run_prefix(task)).rsplit("-s", 1)[0]
            # Read once, its chain checked, for the compute and the curve
            events = [r.event for r in reader.read_checked(run_id).recorded]
            compute = flops(events)
            validation = {e.epoch: e.val_accuracy for e in events if isinstance(e, EpochEnded)}
            epochs = sorted(compute)
            spent = itertools.accumulate(compute[e].total / 1e9 for e in epochs)
            out.setdefault(kind, {})[seed] = {"test_accuracy": test_accuracy, "bits_per_char": bits, "params": params,
                                              "epochs": trained,
                                              "gflops": sum(c.total for c in compute.values()) / 1e9,
                                              "isolated_gflops": sum(c.isolated for c in compute.values()) / 1e9,
                                              "curve": list(zip(spent, (validation[e] for e in epochs)))}
    return out


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def growth_table(runs: dict[str, dict[int, dict]], seeds: list[int]) -> list[dict]:
    rows = []
    for kind in BASELINES:
        per_seed = [runs[kind][s] for s in seeds if s in runs.get(kind, {})]
        acc, sd = mean_sd([r["test_accuracy"] * 100 for r in per_seed])
        row = {"controller": kind, "runs": len(per_seed), "test_accuracy": acc, "sd": sd,
               "params": statistics.fmean(r["params"] for r in per_seed),
               "gflops": statistics.fmean(r["gflops"] for r in per_seed),
               "isolated_gflops": statistics.fmean(r["isolated_gflops"] for r in per_seed)}
        if per_seed and per_seed[0]["bits_per_char"] is not None:
            row["bits_per_char"], row["bits_sd"] = mean_sd([r["bits_per_char"] for r in per_seed])
        rows.append(row)
    return rows


BUDGET_SHARES = (0.25, 0.5, 0.75, 1.0)
"""Where the compute table reads each curve: these shares of scratch's whole training compute."""


def mean_curve(per_seed: list[dict]) -> list[tuple[float, float]]:
    """Epoch by epoch, the means over seeds of the training GFLOPs spent so far and of validation accuracy (%)."""
    return [(statistics.fmean(g for g, _ in points), 100 * statistics.fmean(a for _, a in points))
            for points in zip(*(r["curve"] for r in per_seed))]


def compute_table(runs: dict[str, dict[int, dict]], seeds: list[int]) -> list[dict]:
    """Validation accuracy against training compute: each baseline's mean curve read at `BUDGET_SHARES` of
    scratch's compute (the last epoch ended within the budget; None if none did), and the GFLOPs its curve spends
    until it first reaches scratch's final validation accuracy (None: never)."""
    curves = {kind: mean_curve([runs[kind][s] for s in seeds if s in runs.get(kind, {})]) for kind in BASELINES}
    if not curves["scratch"]:
        return []
    total, target = curves["scratch"][-1]
    rows = []
    for kind, curve in curves.items():
        within = [[a for g, a in curve if g <= share * total * (1 + 1e-9)] for share in BUDGET_SHARES]
        rows.append({"controller": kind, "budgets": [share * total for share in BUDGET_SHARES],
                     "val_accuracy": [points[-1] if points else None for points in within],
                     "target": target, "gflops_to_target": next((g for g, a in curve if a >= target), None)})
    return rows


def per_seed(minuend: dict[int, dict], subtrahend: dict[int, dict], seeds: list[int]) -> dict:
    """`minuend` − `subtrahend` in test accuracy (points), seed by seed: mean, standard error, and the differences."""
    diffs = [(minuend[s]["test_accuracy"] - subtrahend[s]["test_accuracy"]) * 100 for s in seeds]
    diff, sd = mean_sd(diffs)
    return {"diff": diff, "se": sd / math.sqrt(len(diffs)), "diffs": diffs}


def shorter_scratch_table(runs: dict[str, dict[int, dict]], seeds: list[int], budgets: list[int]) -> list[dict]:
    """The heuristic against scratch of each one's final architecture, trained for the same epochs and for each of
    `budgets` (fewer epochs, longest first), seed by seed: what a run of the final architecture from initialisation
    needs to match growth."""
    grown = runs["heuristic"]
    rows = []
    for kind in ["scratch"] + [f"scratch-e{e}" for e in budgets]:
        mine = runs.get(kind, {})
        paired = [s for s in seeds if s in mine and s in grown]
        if not paired:
            continue
        versus = per_seed(grown, mine, paired)
        rows.append({"epochs": mine[paired[0]]["epochs"], "grown_epochs": grown[paired[0]]["epochs"], "runs": len(paired),
                     "test_accuracy": statistics.fmean(mine[s]["test_accuracy"] * 100 for s in paired),
                     "gflops": statistics.fmean(mine[s]["gflops"] for s in paired),
                     "grown_gflops": statistics.fmean(grown[s]["gflops"] for s in paired),
                     "diff": versus["diff"], "se": versus["se"],
                     "level_or_ahead": sum(d >= 0 for d in versus["diffs"])})
    return rows


def policy_table(runs: dict[str, dict[int, dict]], policies: dict[str, str], seeds: list[int]) -> list[dict]:
    """Each policy against the heuristic, seed by seed (the same seed: the same data order and initialisation)."""
    rows = []
    heuristic = runs["heuristic"]
    for tag, path in policies.items():
        mine = runs[f"policy{tag}"]
        versus = per_seed(mine, heuristic, seeds)
        rows.append({"policy": path, "runs": len(seeds),
                     "test_accuracy": statistics.fmean(mine[s]["test_accuracy"] * 100 for s in seeds),
                     "params": statistics.fmean(mine[s]["params"] for s in seeds),
                     "diff": versus["diff"], "se": versus["se"],
                     "won": sum(d > 0 for d in versus["diffs"]), "lost": sum(d < 0 for d in versus["diffs"])})
    return rows


# ---- the page -----------------------------------------------------------------------------------


def compute_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    budgets, target = rows[0]["budgets"], rows[0]["target"]
    shares = " | ".join(f"val % at {b:.1f} GFLOPs ({s:.0%})" for b, s in zip(budgets, BUDGET_SHARES))
    lines = [
        "", "### Accuracy against training compute", "",
        "Each controller's mean validation accuracy over the seeds, epoch by epoch, read at shares of scratch's",
        "training GFLOPs (the last epoch ended within the budget), and the GFLOPs its mean spends before it first",
        f"reaches scratch's final validation accuracy ({target:.2f} %). These are the curves of full-length runs: their",
        "learning rates anneal over the last epochs only, so a run planned shorter would end above its curve here.",
        "", f"| controller | {shares} | GFLOPs to {target:.2f} % |", "| --- |" + " --- |" * (len(budgets) + 1),
    ]
    for r in rows:
        cells = " | ".join("—" if a is None else f"{a:.1f}" for a in r["val_accuracy"])
        reached = "not reached" if r["gflops_to_target"] is None else f"{r['gflops_to_target']:.1f}"
        lines.append(f"| {r['controller']} | {cells} | {reached} |")
    return lines


def shorter_scratch_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    if all(r["epochs"] == r["grown_epochs"] for r in rows):
        title, trained = "Growth against scratch of its architecture, seed by seed", "for the same epochs"
    else:
        title, trained = "Growth against scratch run for fewer epochs", (
            "for the heuristic's epochs and for fewer (`--controller scratch --like RUN --epochs E`: a run planned "
            "shorter, its rates annealed over its own last epochs)")
    about = (f"Each heuristic run's final architecture trained from initialisation {trained}. Heuristic minus scratch "
             "in test accuracy, seed by seed (points, mean ± standard error), and the seeds where the heuristic is "
             "level or ahead; compute as the share of the heuristic's.")
    header = ("| scratch epochs | runs | scratch test % | scratch GFLOPs | of the heuristic's | heuristic − scratch per seed "
              "| heuristic level or ahead |")
    lines = ["", f"### {title}", "", *textwrap.wrap(about, 110), "", header, "|" + " --- |" * 7]
    for r in rows:
        lines.append(f"| {r['epochs']} | {r['runs']} | {r['test_accuracy']:.2f} | {r['gflops']:.2f} | "
                     f"{r['gflops'] / r['grown_gflops']:.0%} | {r['diff']:+.2f} ± {r['se']:.2f} | "
                     f"{r['level_or_ahead']} of {r['runs']} |")
    return lines


def render(growth: list[dict], compute: list[dict], shorter: list[dict], policies: list[dict], seeds: list[int],
           made: dict) -> str:
    lines = [
        "# Results" if made["task"] == "mnist1d" else f"# Results: the {made['task']} task",
        "",
        generated_by(made),
        "",
        f"## Does growing pay? ({made['task']}, seeds {seed_range(seeds)}, {made['epochs']})",
        "",
        "Test accuracy (mean ± sd over seeds), final parameters and training compute (forward and backward passes",
        "of every training step, from the architecture the log says trained each epoch) of: the host alone",
        f"(`static`), {made['gardener']}, the heuristic germinating as soon as the host has warmed up",
        "(`eager`, `--heuristic min_gain=1.0`), and each heuristic run's final architecture trained from",
        "initialisation (`scratch`, `--controller scratch --like RUN`). Of the compute, `isolated` is what seeds in",
        "TRAINING cost apart from the host's gradient: each one's isolated pass, every step of its training.",
        "",
    ]
    bits = any("bits_per_char" in r for r in growth)  # text: next-byte accuracy, and what a language model reports
    if bits:
        lines += ["| controller | runs | test bits/char | test next-byte accuracy % | params | training GFLOPs | "
                  "of which isolated |", "| --- | --- | --- | --- | --- | --- | --- |"]
    else:
        lines += ["| controller | runs | test accuracy % | params | training GFLOPs | of which isolated |",
                  "| --- | --- | --- | --- | --- | --- |"]
    for r in growth:
        per_char = f" {r['bits_per_char']:.3f} ± {r['bits_sd']:.3f} |" if bits else ""
        lines.append(f"| {r['controller']} | {r['runs']} |{per_char} {r['test_accuracy']:.2f} ± {r['sd']:.2f} | "
                     f"{r['params']:,.0f} | {r['gflops']:.2f} | {r['isolated_gflops']:.2f} |")
    lines += compute_section(compute)
    lines += shorter_scratch_section(shorter)
    if made["task"] == "mnist1d":  # the frontier is measured on mnist1d only
        lines += ["", "Growth against the strongest static models, each at its best learning rate, and Esper's own",
                  "accuracy-per-parameter curve under size caps: [frontier.md](frontier.md) (`benchmarks/frontier.py`)."]
    lines += ["", "## Learned policies against the heuristic", ""]
    if not policies:
        lines.append("No policy file was given (`--policy FILE`, repeatable), so no policy was compared.")
    else:
        lines += [
            f"Each policy played greedily on seeds {seed_range(seeds)} (with the size cap it was trained under), against",
            f"{made['gardener']} on the same seeds: the per-seed difference in test accuracy (points, mean ±",
            "standard error) and the seeds won and lost.",
            "",
            "| policy | runs | test accuracy % | params | vs heuristic per seed | won / lost |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in policies:
            lines.append(f"| `{r['policy']}` | {r['runs']} | {r['test_accuracy']:.2f} | {r['params']:,.0f} | "
                         f"{r['diff']:+.2f} ± {r['se']:.2f} | {r['won']} / {r['lost']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--out", type=output_file, default=None, help="write the markdown here too (docs/results.md)")
    parser.add_argument("--task", default="mnist1d", choices=("mnist1d", "text"), help="the task every run trains")
    parser.add_argument("--workspace", type=Path, default=None, help="record into (and reuse) this workspace")
    parser.add_argument("--full", action="store_true", help=f"seeds {FULL_SEEDS[0]}–{FULL_SEEDS[-1]} instead of {FAST_SEEDS}")
    parser.add_argument("--seeds", type=non_negative_int, nargs="+", default=None, help="these seeds instead")
    parser.add_argument("--policy", action="append", default=[], type=existing_file,
                        help="a policy file to compare (repeatable)")
    parser.add_argument("--epochs", type=non_negative_int, default=0, help="epochs per run (default: the preset's)")
    parser.add_argument("--heuristic", action="append", default=[], metavar="KEY=VALUE",
                        help="a knob of the `heuristic` runs' gardener (repeatable), e.g. warmup_epochs=16; scratch "
                             "then trains their architectures")
    parser.add_argument("--blueprint", action="append", default=[], metavar="NAME",
                        help="a blueprint the `heuristic` and `eager` runs may grow (repeatable; default: the task's), "
                             "e.g. repeat on text")
    parser.add_argument("--lifecycle", action="append", default=[], metavar="KEY=VALUE",
                        help="a knob of the `heuristic` and `eager` runs' seed lifecycle (repeatable), e.g. "
                             "isolated_fraction=0.25")
    parser.add_argument("--commands-per-epoch", type=int, default=1, metavar="N",
                        help="the `heuristic` and `eager` runs' commands after each epoch (default 1)")
    parser.add_argument("--scratch-epochs", type=int, nargs="+", default=[], metavar="E",
                        help="also train each heuristic run's final architecture from initialisation for E epochs "
                             "(a run planned shorter), and compare")
    parser.add_argument("--workers", type=positive_int, default=min(2, os.cpu_count() or 1),
                        help="runs recorded at once")
    args = parser.parse_args()
    seeds = args.seeds or (FULL_SEEDS if args.full else FAST_SEEDS)
    budget = args.epochs or TASKS[args.task].epochs
    if problem := commands_problem(args.commands_per_epoch):
        raise BadInput(problem)
    if not all(1 <= e < budget for e in args.scratch_epochs):
        raise BadInput(f"--scratch-epochs takes fewer epochs than the runs' {budget}, at least 1 each; got "
                       f"{' '.join(map(str, args.scratch_epochs))}")
    args.scratch_epochs = sorted(set(args.scratch_epochs), reverse=True)
    knobs = from_knobs(HeuristicConfig, args.heuristic, flag="--heuristic")
    lifecycle = from_knobs(LifecycleConfig, args.lifecycle, flag="--lifecycle")
    grows = None  # the growing runs' preset (and their scratch runs', which build what they grew): None, the task's
    if args.blueprint:
        grows = msgspec.structs.replace(TASKS[args.task], blueprints=tuple(args.blueprint))
        if problem := blueprints_problem(grows):
            raise BadInput(problem)
    started, made_by = time.perf_counter(), commit()  # the code that records the runs, not whatever is checked out later
    ws = Workspace(args.workspace or Path(tempfile.mkdtemp(prefix="esper-results-")))
    say(f"workspace {ws.root}")
    policies = {f"{i}": path for i, path in enumerate(args.policy)}

    task = args.task
    first = [Job(run_id_of(task, k, s), planned_config(task, k, s, args.epochs, knobs=knobs, lifecycle=lifecycle,
                                                 commands=args.commands_per_epoch),
                 None if k == "static" else grows) for s in seeds for k in ("static", "heuristic", "eager")]
    first += [Job(run_id_of(task, "policy", s, tag), planned_config(task, "policy", s, args.epochs, path))
              for tag, path in policies.items() for s in seeds]
    recorded = record_all(ws, first, args.workers)
    scratch = []
    for s in seeds:  # each heuristic run's final architecture, as `esper run --controller scratch --like` builds it
        grew = final_architecture(ws, run_id_of(task, "heuristic", s), task)
        for tag, epochs in [("", grew.config.epochs)] + [(f"-e{e}", e) for e in args.scratch_epochs]:
            scratch.append(Job(run_id_of(task, "scratch", s, tag), RunConfig(
                task=task, controller="scratch", seed=s, like=grew.run_id, architecture=grew.architecture,
                epochs=epochs), grows))
    recorded += record_all(ws, scratch, args.workers)

    runs = read_back(ws, task)
    growth, compute, versus = growth_table(runs, seeds), compute_table(runs, seeds), policy_table(runs, policies, seeds)
    shorter = shorter_scratch_table(runs, seeds, args.scratch_epochs)
    made = stamp("results.py", ws, started, made_by, recorded, len(first) + len(scratch)) | {
        "task": task, "epochs": f"{args.epochs} epochs" if args.epochs else "the preset's epochs",
        "gardener": ("the heuristic gardener with `" + " ".join(f"--heuristic {k}" for k in args.heuristic) + "`"
                     if args.heuristic else "the default heuristic gardener")
                    + ("".join(f" `--blueprint {b}`" for b in args.blueprint) if args.blueprint else "")
                    + ("".join(f" `--lifecycle {k}`" for k in args.lifecycle) if args.lifecycle else "")
                    + (f" `--commands-per-epoch {args.commands_per_epoch}`" if args.commands_per_epoch > 1 else "")}
    page = render(growth, compute, shorter, versus, seeds, made)
    if args.out is not None:
        write(args.out, page)
    print(page)
    print(json.dumps({"seeds": seeds, "growth": growth, "compute": compute, "policies": versus,
                      "shorter_scratch": shorter, **made}))


if __name__ == "__main__":
    run(main)
