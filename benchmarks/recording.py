"""Recording benchmark runs into a workspace, reusing the ones already there (results.py, tune.py, frontier.py).

A run is named by the caller (a stable run id) and fixed by its config and task preset. Recording it again
is skipped when the workspace already holds it finished with the same resolved config and preset (what
decides its events), so a long benchmark can be stopped and re-run, or extended, without redoing work;
a run of that name with anything else is in the way and stops the benchmark rather than being mixed in.
"""

import datetime
import functools
import multiprocessing
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import torch

from esper.errors import BadInput
from esper.leyline import RunConfig
from esper.leyline.config import TaskPreset, recipe_problem
from esper.leyline.events import Event, RunStarted, decode
from esper.store import Reader, Recorder, Workspace
from esper.tamiyo.controllers import make_controller
from esper.tolaria.data import load_task_data
from esper.tolaria.flops import EpochCompute, epoch_flops
from esper.tolaria.loop import StoreSink, execute, resolve_config
from esper.tolaria.tasks import get_task
from script import say


class Job(NamedTuple):
    run_id: str
    config: RunConfig
    preset: TaskPreset | None = None
    """None: the task's preset as it is today."""


def record(root: str, job: Job) -> str:
    """Train one run into its own store file of the workspace at `root` (in a worker process)."""
    ws = Workspace.at(root)
    preset = job.preset or get_task(job.config.task)
    cfg = resolve_config(job.config, preset)
    brain = make_controller(cfg.controller, cfg.seed, cfg.policy, cfg.heuristic)
    started = time.perf_counter()
    with Recorder(ws.store_path(job.run_id)) as recorder:
        result = execute(cfg, brain, StoreSink(recorder, job.run_id), preset=preset)
    return (f"  {job.run_id}: val {result.val_accuracy * 100:5.1f}%  test {result.test_accuracy * 100:5.1f}%  "
            f"params {result.params:,}  ({time.perf_counter() - started:.0f} s)")


def _recorded(reader: Reader, run_id: str) -> tuple[bool, RunStarted | None]:
    """(finished, RunStarted) of a run already in the workspace; (False, None) if it is not there."""
    rows = reader.con.execute("SELECT r.finished, e.payload FROM runs r JOIN events e ON e.run_id = r.run_id "
                              "AND e.seq = 1 WHERE r.run_id = ?", [run_id]).fetchall()  # the first event alone
    if not rows:
        return False, None
    started = decode(rows[0][1])
    assert isinstance(started, RunStarted)
    return bool(rows[0][0]), started


def still_to_record(ws: Workspace, jobs: list[Job]) -> list[Job]:
    with ws.reader() as reader:  # once: a reader attaches every store file of the workspace
        recorded = {job.run_id: _recorded(reader, job.run_id) for job in jobs}
    todo = []
    for job in jobs:
        finished, started = recorded[job.run_id]
        if started is None:
            todo.append(job)
            continue
        preset = job.preset or get_task(job.config.task)
        if not finished or started.config != resolve_config(job.config, preset) or started.preset != preset:
            what = "unfinished" if not finished else "another config or preset"
            raise BadInput(f"{job.run_id} in {ws.root} is {what}; use a fresh --workspace (or delete its store file)")
    return todo


def check_recipes(jobs: list[Job]) -> None:
    """`BadInput` for the first grid point no run could train at (a script calls it before it says anything)."""
    for job in jobs:
        p = job.preset
        if p is not None and (problem := recipe_problem(p.lr, p.seed_lr, p.weight_decay, p.batch_size)):
            raise BadInput(problem)


def record_all(ws: Workspace, jobs: list[Job], workers: int) -> int:
    """Record every job not in the workspace yet, `workers` at a time, one process each; returns how many. A grid
    point no run could train at, or a run of the same name in the way, is `BadInput` before anything is recorded."""
    check_recipes(jobs)
    todo = still_to_record(ws, jobs)
    say(f"{len(jobs) - len(todo)} of {len(jobs)} runs already in the workspace; recording {len(todo)}")
    if not todo:
        return 0
    spawn = multiprocessing.get_context("spawn")  # no fork of a process that has started torch's threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
        for line in pool.map(record, [str(ws.root)] * len(todo), todo):
            say(line)
    return len(todo)


# ---- reading the runs back ---------------------------------------------------------------------


def flops_projection(task: str) -> Callable[[Iterable[Event]], dict[int, EpochCompute]]:
    """`esper.tolaria.flops.epoch_flops` for the runs of `task`: a run's events → epoch → the FLOPs of that epoch's
    training (what trained, on as many examples as an epoch of `task` trains on)."""
    data = load_task_data(task, RunConfig().data_seed)
    examples = data.windows if task == "text" else len(data.train)
    return functools.partial(epoch_flops, train_examples=examples)


def check_chains(reader: Reader, run_ids: Iterable[str]) -> None:
    """Check each run's hash chain and head before a number is read from it (`LogAltered` names the first altered
    event): a table generated from a workspace is only as good as its logs."""
    for run_id in run_ids:
        reader.check_run(run_id)


def training_gflops(reader: Reader, task: str, run_ids: list[str]) -> dict[str, float]:
    """Run id → training GFLOPs of the whole run, read from its checked log (`LogAltered` names an altered one)."""
    flops = flops_projection(task)
    return {run_id: sum(c.total for c in flops(r.event for r in reader.read_checked(run_id).recorded).values()) / 1e9
            for run_id in run_ids}


def seed_range(seeds: list[int]) -> str:
    """`0–19` for a run of three or more consecutive seeds, else the list: `0, 3, 5`."""
    return f"{seeds[0]}–{seeds[-1]}" if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)) else \
        ", ".join(map(str, seeds))


# ---- where a page of results came from --------------------------------------------------------


def stamp(script: str, ws: Workspace, started: float, made_by: str, recorded: int, runs: int) -> dict[str, Any]:
    """What made a page: the command as this process was started, the commit `made_by` (read when it started: the
    code that recorded the runs), the date, machine and workspace, the minutes since `started`, and how many of the
    page's `runs` this command `recorded` (the others it read from the workspace, as an earlier command left them)."""
    return {"command": shlex.join(["python", f"benchmarks/{script}", *sys.argv[1:]]), "commit": made_by,
            "date": datetime.date.today().isoformat(), "machine": machine(), "workspace": str(ws.root),
            "minutes": (time.perf_counter() - started) / 60, "recorded": recorded, "runs": runs}


def generated_by(stamp: dict[str, Any]) -> str:
    """The opening sentence of a page: how to make it again, and from what."""
    reused = (f", reading {stamp['runs'] - stamp['recorded']} of its {stamp['runs']} runs from the workspace, where "
              "an earlier command recorded them") if stamp["recorded"] < stamp["runs"] else ""
    return (f"Generated by `{stamp['command']}` on {stamp['date']} from commit {stamp['commit']}, on "
            f"{stamp['machine']}, in {stamp['minutes']:.1f} minutes{reused}. Every number is read back from the runs' "
            f"event logs (the workspace `{stamp['workspace']}`); re-run the command to regenerate this page.")


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return head + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")
