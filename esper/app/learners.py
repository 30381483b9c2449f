"""Training a policy: a PPO job over vectorized runs, an IQL job over the workspace's logs.

Each takes its learner's config struct (`esper.simic.config`), the policy file to write and the workspace,
checks them before any training, and returns the job's summary as plain data; the CLI only prints it.
"""

import os
import secrets
from pathlib import Path
from typing import Any, Callable

from esper.errors import BadInput
from esper.nissa.files import check_writable
from esper.nissa.fmt import plural
from esper.simic.config import IQLConfig, PPOConfig
from esper.store import Workspace

Progress = Callable[[str], None]


def policy_path(out: Path) -> Path:
    """The policy file's path, checked before any training: a file we may write, not a folder."""
    if os.path.isdir(out):
        raise BadInput(f"policy file {out} is a folder; give the file's path, e.g. {Path(out) / 'policy.pt'}")
    return check_writable(Path(out))


def ppo_job(cfg: PPOConfig, out: Path, workspace: Workspace, init: Path | None = None, resume: bool = False,
            progress: Progress = lambda line: None, deadline: float | None = None,
            ray_address: str | None = None) -> dict[str, Any]:
    """Train with PPO into `out` (also the checkpoint); with `resume`, go on from the checkpoint at `out`;
    with `deadline` (a `time.perf_counter()` value), stop before an update that would end after it; with several
    workers, on the Ray at `ray_address` (default: a local one)."""
    from esper.simic.ppo import train

    out = policy_path(out)
    if resume and not out.is_file():
        raise BadInput(f"no checkpoint to resume at {out}")
    return train(cfg, out, workspace, init=init, resume=resume, progress=progress, deadline=deadline,
                 ray_address=ray_address)


def iql_job(cfg: IQLConfig, out: Path, workspace: Workspace, runs: str | None = None,
            progress: Progress = lambda line: None) -> dict[str, Any]:
    """Train with IQL from the workspace's runs of `cfg.task` (where `runs`, an SQL condition over the `runs`
    view, holds), logging the learner's stream into a store of its own, and write the policy to `out`."""
    from esper.simic.iql import check

    out = policy_path(out)
    check(cfg)
    spec, episodes = _dataset(cfg, workspace, runs, progress)
    learner_id = f"iql-{secrets.token_hex(3)}"
    result = _train_logged(cfg, out, workspace, learner_id, spec, episodes, progress)
    return {"out": str(out), "learner": learner_id, "runs": result["runs"], "transitions": result["transitions"],
            "seconds": result["seconds"], "last": result["stats"]}


def _dataset(cfg: IQLConfig, workspace: Workspace, runs: str | None, progress: Progress) -> tuple[Any, list]:
    """The feature spec of the task's policies and the selected runs' episodes (notes on the skipped ones)."""
    from esper.simic.dataset import select_runs, workspace_episodes
    from esper.simic.features import spec_for_run, spec_for_task
    from esper.tolaria.tasks import TASKS

    spec = spec_for_task(cfg.task) if cfg.task in TASKS else None
    with workspace.reader() as reader:
        for note in reader.notes:
            progress(f"note: {note}")
        run_ids = select_runs(reader, runs, cfg.task)
        tasks = [] if run_ids else [row[0] for row in reader.con.execute(
            "SELECT DISTINCT task FROM runs ORDER BY task").fetchall()]
        if spec is None and run_ids:  # a task of user code (`esper.fit`): its first run says what grew
            spec = spec_for_run(reader.read_run(run_ids[0])[0].event)
        episodes, notes = workspace_episodes(reader, run_ids, spec, cfg.reward)
    for note in notes:
        progress(f"note: {note}")
    where = f" where {runs}" if runs else ""
    if not run_ids and cfg.task not in tasks:  # a misspelt task: say which ones the workspace holds runs of
        holds = f"its runs are of {', '.join(tasks)}" if tasks else "it holds no runs"
        raise BadInput(f"no runs of task {cfg.task} in {workspace.root}: {holds} (--task)")
    if not episodes:
        raise BadInput(f"no usable runs of {cfg.task} in {workspace.root}{where}: the dataset is empty "
                       "(check the runs filter and the task)")
    progress(f"iql: dataset of {plural(len(episodes), 'run')} from {workspace.root}{where}")
    return spec, episodes


def _train_logged(cfg: IQLConfig, out: Path, workspace: Workspace, learner_id: str, spec: Any, episodes: list,
                  progress: Progress) -> dict[str, Any]:
    from esper.simic.iql import train
    from esper.simic.policy import save_policy, saved
    from esper.store.recorder import new_store
    from esper.tolaria.loop import StoreSink

    store = workspace.store_path(learner_id)
    with new_store(store) as recorder:  # stopped before its first update was logged: no empty store is left
        sink = StoreSink(recorder, learner_id)
        net, result = train(cfg, spec, episodes, sink=sink, progress=progress)
        save_policy(out, net, "iql", cfg.reward, cfg.hidden)
        sink.append([saved(out, cfg.steps, sources=[e.run_id for e in episodes])])  # which file, which runs
    return result
