"""Many seeds of one configuration at once (`esper run --seeds 0-19`): one run per seed, on Ray.

Every seed's run is planned here first (`plan_run`: any bad setting is one line before anything is written),
then trained as a Ray task of one CPU thread, as many at a time as Ray has CPUs, each writing a store file of
its own in the workspace. A run trains on Ray exactly as it would alone (the same events: its seed decides
everything), and one run that fails leaves the others training. One seed trains here, without Ray.
"""

import statistics
from pathlib import Path
from typing import Any, Callable

import attrs
import msgspec

from esper.app.runs import PlannedRun, RunRequest, plan_run, start
from esper.errors import BadInput
from esper.store import Workspace
from esper.tolaria import cluster
from esper.tolaria.loop import MAX_SEED, RunResult, failure_of

MAX_SEEDS = 10_000
"""The most runs one `--seeds` may ask for (a typo such as 0-100000 is refused rather than queued)."""


def parse_seeds(text: str) -> list[int]:
    """`0-19`, `0,3,5` or both (`0-3,7`) as the list of seeds, in order, each once."""
    seeds: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise BadInput(f"--seeds {text!r}: expected seeds such as 0-19 or 0,3,5") from None
        if 0 <= high < low:
            raise BadInput(f"--seeds {text!r}: {part.strip()} runs backwards: write {high}-{low}")
        if not 0 <= low <= high < MAX_SEED:
            raise BadInput(f"--seeds {text!r}: {part.strip()} is not a range of seeds from 0 to {MAX_SEED - 1:,}")
        if len(seeds) + high - low + 1 > MAX_SEEDS:
            raise BadInput(f"--seeds {text!r}: at most {MAX_SEEDS:,} runs at once")
        seeds += [s for s in range(low, high + 1) if s not in seeds]
    return seeds


@attrs.frozen
class SeedRun:
    """How one seed's run ended: its result, or the error it ended with (`RunFailed` in its log)."""

    seed: int
    run_id: str
    result: RunResult | None
    error: str | None = None


def plan_seeds(request: RunRequest, seeds: list[int], ws: Workspace) -> list[PlannedRun]:
    """Every seed's run checked and resolved (the request with its seed); nothing is written. Only the first keeps
    its data: the runs share it (the seed changes neither the task nor the data seed)."""
    if not seeds:
        raise BadInput("--seeds names no seed")
    if len(seeds) > 1:
        cluster.need_ray(f"--seeds with {len(seeds)} seeds")  # before anything is written
    if request.tensorboard is not None:  # written by Ray workers, whose folder is not necessarily this one
        request = msgspec.structs.replace(request, tensorboard=str(Path(request.tensorboard).absolute()))
    planned = [plan_run(msgspec.structs.replace(request, seed=seeds[0]), ws)]
    for seed in seeds[1:]:
        planned.append(attrs.evolve(plan_run(msgspec.structs.replace(request, seed=seed), ws), data=None))
    return planned


def train_seeds(planned: list[PlannedRun], ws: Workspace, on_done: Callable[[SeedRun], None] = lambda run: None,
                address: str | None = None) -> list[SeedRun]:
    """Train every planned run, on Ray when there is more than one (joined at `address`, else started here);
    `on_done` as each ends. Ctrl-C or SIGTERM stops them all: each ends with `RunFailed`, and the interruption
    is raised once they have."""
    if len(planned) == 1:
        run = _train(planned[0], None, str(ws.root))
        on_done(run)
        return [run]
    with cluster.connected(f"--seeds with {len(planned)} seeds", address) as ray:
        root = ws.root.absolute()
        cluster.check_shared(ray, root)
        data = ray.put(planned[0].data)  # once: every task reads the same copy
        task = cluster.remote(ray, _train, planned[0].config.device)
        # all submitted at once: Ray runs as many as the cluster has CPUs (or GPU shares) for
        return cluster.gather(ray, len(planned), lambda i, place: task.remote(attrs.evolve(planned[i], data=None),
                                                                              data, str(root)),
                              on_done=lambda i, run: on_done(run))


def _train(planned: PlannedRun, data: Any, root: str) -> SeedRun:
    """Train one planned run into its own store file; a run that fails is reported, not raised (the others go on)."""
    planned = attrs.evolve(planned, data=data if data is not None else planned.data)
    seed = planned.config.seed
    try:
        return SeedRun(seed, planned.run_id, start(planned, Workspace.at(root)))
    except Exception as exc:  # its log ends with RunFailed, as a single run's would
        return SeedRun(seed, planned.run_id, None, failure_of(exc))


def summary(runs: list[SeedRun]) -> dict[str, Any]:
    """Counts, and mean and sample standard deviation (None below two runs) of the finished runs' numbers."""
    finished = [r.result for r in runs if r.result is not None]
    out: dict[str, Any] = {"runs": len(runs), "finished": len(finished), "failed": len(runs) - len(finished),
                           "seeds": [r.seed for r in runs]}
    for name in ("test_accuracy", "val_accuracy", "params"):
        values = [float(getattr(result, name)) for result in finished]
        out[name] = {"mean": statistics.fmean(values) if values else None,
                     "sd": statistics.stdev(values) if len(values) > 1 else None}
    return out
