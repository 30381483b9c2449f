"""A run killed anywhere and resumed ends with exactly the events of the same run left alone (CPU): the guarantee of
`esper run --resume`, with the real command killed by SIGKILL at named points (`esper.tolaria.crashpoints`) and at a
random moment; what it refuses; and that every reader takes the resumed run as one finished run."""

import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_runner import esper, invoke, one_line_error, start

from esper.errors import RunFailed as RunFailedError
from esper.leyline import CheckpointSaved, RunFailed, RunResumed, Wait, encode
from esper.simic.dataset import select_runs, workspace_episodes
from esper.simic.features import spec_for_task
from esper.simic.rewards import RewardConfig
from esper.store import Workspace
from esper.tamiyo.controllers import HeuristicController
from esper.tolaria import checkpoint
from esper.tolaria.trainer import Trainer

pytestmark = pytest.mark.slow  # real training runs or subprocesses of the CLI

EPOCHS = 5
GROWING = ["--seed", "3", "--epochs", str(EPOCHS), "--heuristic", "min_gain=1.0", "--heuristic", "warmup_epochs=1",
           "--heuristic", "finish_epochs=0"]
"""A short run that germinates at once: its seeds train, blend and fossilize within the five epochs."""
RANDOM = ["--controller", "random", "--seed", "4", "--epochs", str(EPOCHS)]
"""A controller with an RNG of its own, which the checkpoint must carry."""
AT_ONCE = [*GROWING, "--heuristic", "max_live_seeds=3", "--commands-per-epoch", "3"]
"""Several commands an epoch: the checkpoint must follow the epoch's last."""


def killed(workspace: Path, config: list[str], crash_at: str, *extra: str) -> str:
    """Run `esper run` until SIGKILL at `crash_at`; the run's id."""
    result = esper("run", *config, *extra, workspace=workspace, **({"ESPER_CRASH_AT": crash_at} if crash_at else {}))
    assert result.returncode == -signal.SIGKILL, result.stderr
    return only_run(workspace)


def only_run(workspace: Path) -> str:
    with Workspace.at(workspace).reader() as reader:
        ((run_id,),) = reader.con.execute("SELECT DISTINCT run_id FROM events").fetchall()
    return run_id


def logged(workspace: Path) -> list:
    with Workspace.at(workspace).reader() as reader:
        return [r.event for r in reader.read_run(only_run(workspace))]


def as_uninterrupted(events: list) -> list[bytes]:
    """Every event as stored, but timestamps, checkpoints, resumption markers and the `RunFailed` of an
    interruption that was resumed: what a run left alone writes."""
    kept = [e for i, e in enumerate(events) if not isinstance(e, (CheckpointSaved, RunResumed)) and not (
        isinstance(e, RunFailed) and i + 1 < len(events) and isinstance(events[i + 1], RunResumed))]
    return [encode(e) for e in kept]


def resume(workspace: Path, run_id: str, *extra: str):
    result = invoke("run", "--resume", run_id, *extra, workspace=workspace)
    assert result.exit_code == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, list[bytes]]:
    """The events of each config's run left alone."""
    out = {}
    for name, config in (("growing", GROWING), ("random", RANDOM), ("at once", AT_ONCE)):
        workspace = tmp_path_factory.mktemp(f"alone-{name}")
        assert esper("run", *config, workspace=workspace).returncode == 0
        out[name] = as_uninterrupted(logged(workspace))
    return out


@pytest.fixture(scope="module")
def cut_every_2(tmp_path_factory) -> Path:
    """A run checkpointed every 2 epochs, killed with 3 epochs logged: its checkpoint is older than its log."""
    workspace = tmp_path_factory.mktemp("cut-every-2")
    killed(workspace, GROWING, "appended@3", "--checkpoint-every", "2")
    return workspace


@pytest.fixture
def cut(cut_every_2, tmp_path) -> tuple[Path, str]:
    """A copy of `cut_every_2` to change."""
    workspace = tmp_path / "ws"
    shutil.copytree(cut_every_2, workspace)
    return workspace, only_run(workspace)


# ---- the guarantee -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("crash_at", [
    "mid-epoch@1",  # before any epoch was whole: from the checkpoint of epoch 0
    "trained@3",  # trained and decided, nothing handed to the writer
    "checkpoint-write@2",  # the checkpoint a temporary file, not in place
    "checkpoint-written@3",  # the checkpoint in place, its CheckpointSaved not logged
    "appended@4",  # the epoch committed, the next not begun
    f"finishing@{EPOCHS}",  # every epoch trained, RunFinished not written
])
def test_a_run_killed_anywhere_resumes_to_the_events_of_the_run_left_alone(tmp_path, reference, crash_at):
    run_id = killed(tmp_path, GROWING, crash_at)
    resume(tmp_path, run_id)
    events = logged(tmp_path)
    assert as_uninterrupted(events) == reference["growing"]
    assert sum(isinstance(e, RunResumed) for e in events) == 1
    replayed = invoke("replay", run_id, workspace=tmp_path)  # its marker too is one the judge accepts
    assert replayed.exit_code == 0, replayed.stderr


@pytest.mark.parametrize("crash_at", ["trained@1", "appended@1", "trained@3"])
def test_a_run_of_several_commands_an_epoch_resumes_to_the_run_left_alone(tmp_path, reference, crash_at):
    run_id = killed(tmp_path, AT_ONCE, crash_at)
    resume(tmp_path, run_id)
    assert as_uninterrupted(logged(tmp_path)) == reference["at once"]


def test_epochs_past_the_checkpoint_are_trained_again_compared_and_not_logged_twice(cut, reference):
    workspace, run_id = cut
    result = resume(workspace, run_id)
    assert "from its checkpoint of epoch 2 of 5; epoch 3 trained again and compared with the log" in result.stderr
    events = logged(workspace)
    assert as_uninterrupted(events) == reference["growing"]
    (marker,) = [e for e in events if isinstance(e, RunResumed)]
    assert (marker.epoch, marker.checkpoint_epoch) == (3, 2)
    # the run's own interval goes on, as its checkpoints recorded it: every 2 epochs, not the flag's default
    assert [(e.epoch, e.every) for e in events if isinstance(e, CheckpointSaved)] == [(0, 2), (2, 2), (4, 2)]


def test_a_checkpoint_interval_given_with_resume_replaces_the_runs(cut):
    workspace, run_id = cut
    resume(workspace, run_id, "--checkpoint-every", "1")
    events = logged(workspace)
    after = events[next(i for i, e in enumerate(events) if isinstance(e, RunResumed)):]
    assert [(e.epoch, e.every) for e in after if isinstance(e, CheckpointSaved)] == [(4, 1), (5, 1)]


def test_a_controllers_own_randomness_goes_on_where_it_stopped(tmp_path, reference):
    run_id = killed(tmp_path, RANDOM, "trained@3")
    resume(tmp_path, run_id)
    assert as_uninterrupted(logged(tmp_path)) == reference["random"]


def run_past_epoch_2(workspace: Path) -> subprocess.Popen:
    """The growing run started by the real command, once it has printed its second epoch."""
    process = start("run", *GROWING, workspace=workspace, stdout=subprocess.DEVNULL)
    for line in process.stderr:
        if line.startswith("[  2/"):
            break
    return process


def test_a_run_killed_at_a_random_moment_resumes_through_the_real_command(tmp_path, reference):
    process = run_past_epoch_2(tmp_path)
    time.sleep(random.uniform(0.0, 0.4))
    process.kill()
    process.wait()
    result = esper("run", "--resume", only_run(tmp_path), "--json", workspace=tmp_path)
    assert result.returncode == 0, result.stderr
    assert as_uninterrupted(logged(tmp_path)) == reference["growing"]


def test_an_interrupted_run_keeps_its_run_failed_and_resumes(tmp_path, reference):
    process = run_past_epoch_2(tmp_path)
    process.terminate()
    assert process.wait() == 143
    resume(tmp_path, only_run(tmp_path))
    events = logged(tmp_path)
    assert as_uninterrupted(events) == reference["growing"]
    (stop,) = [i for i, e in enumerate(events) if isinstance(e, RunFailed)]
    assert events[stop].error == "terminated" and isinstance(events[stop + 1], RunResumed)


# ---- what it refuses --------------------------------------------------------------------------------------


def refused(workspace: Path, run_id: str, code: int = 2, *extra: str) -> str:
    before = logged(workspace)
    line = one_line_error(invoke("run", "--resume", run_id, *extra, workspace=workspace), code)
    assert logged(workspace) == before  # nothing appended
    return line


def test_a_finished_run_is_not_resumed(cut, tmp_path):
    workspace, run_id = cut
    resume(workspace, run_id)
    assert "finished: there is nothing to resume" in refused(workspace, run_id)
    exported = tmp_path / "run.jsonl"  # imported, it is still a finished run before it is an imported one
    assert invoke("export", run_id, "--out", exported, workspace=workspace).exit_code == 0
    assert invoke("import", exported, workspace=tmp_path / "other").exit_code == 0
    assert "finished: there is nothing to resume" in refused(tmp_path / "other", run_id)


def test_a_run_that_diverged_is_not_resumed(tmp_path, monkeypatch):
    def diverge(self, epoch, earlier_losses=()):
        raise RunFailedError(f"training diverged at epoch {epoch}: train loss nan")

    monkeypatch.setattr(Trainer, "end_epoch", diverge)
    assert invoke("run", "--epochs", "2", workspace=tmp_path).exit_code == 1
    monkeypatch.undo()
    assert "failed by itself (training diverged at epoch 1" in refused(tmp_path, only_run(tmp_path))


def test_an_imported_run_is_not_resumed(cut, tmp_path):
    workspace, run_id = cut
    exported = tmp_path / "run.jsonl"
    assert invoke("export", run_id, "--format", "jsonl", "--out", exported, workspace=workspace).exit_code == 0
    other = tmp_path / "other"
    assert invoke("import", exported, workspace=other).exit_code == 0
    assert "an imported run cannot resume" in refused(other, run_id)


def test_config_options_are_refused_with_resume(cut):
    workspace, run_id = cut
    assert "continues the run with its own config: drop --seed, --epochs" in refused(
        workspace, run_id, 2, "--seed", "3", "--epochs", "9")
    config = workspace / "run.toml"
    config.write_text("epochs = 9\n")
    assert refused(workspace, run_id, 2, "--config", str(config)).endswith("its own config: drop --config")
    assert refused(workspace, run_id, 2, "--tensorboard", str(workspace / "tb")).endswith(
        "drop --tensorboard; its TensorBoard files come from its log: esper export RUN --format tensorboard --out DIR")


def test_a_run_is_not_resumed_with_another_cpu_kernel_set(cut, monkeypatch):
    """Its epochs after the checkpoint would be computed otherwise than those before (esper/_kernels.py)."""
    workspace, run_id = cut
    monkeypatch.setenv("ESPER_CPU_KERNELS", "fast")
    assert "computed with the portable CPU kernels, this process computes with the fast" in refused(workspace, run_id)


def test_without_a_usable_checkpoint_nothing_is_appended_and_the_line_says_why(cut):
    workspace, run_id = cut
    folder = checkpoint.folder_of(workspace)
    files = sorted(folder.glob("*.pt"))
    files[0].write_bytes(b"not a checkpoint")
    for path in files[1:]:
        path.unlink()
    line = refused(workspace, run_id)
    assert "no usable checkpoint" in line and "missing" in line and "damaged" in line


def test_a_damaged_latest_checkpoint_is_passed_over_for_an_earlier_one(cut, reference):
    workspace, run_id = cut
    latest = [e for e in logged(workspace) if isinstance(e, CheckpointSaved)][-1]
    path = checkpoint.folder_of(workspace) / f"{latest.sha256}.pt"
    path.write_bytes(path.read_bytes()[::-1])
    result = resume(workspace, run_id)
    assert f"note: passed over the checkpoint of epoch {latest.epoch}: damaged" in result.stderr
    assert "epochs 1-3 trained again" in result.stderr
    assert as_uninterrupted(logged(workspace)) == reference["growing"]


def test_a_resumption_that_trains_otherwise_than_logged_fails_in_one_line_and_appends_nothing(cut, monkeypatch):
    workspace, run_id = cut
    before = logged(workspace)
    monkeypatch.setattr(HeuristicController, "decide", lambda self, obs: Wait())
    result = invoke("run", "--resume", run_id, workspace=workspace)
    assert result.exit_code == 1
    line = result.stderr.splitlines()[-1]  # after the progress of the epochs it trained again
    assert line.startswith(f"esper: run {run_id} does not resume as it was logged")
    assert "decision differs at epoch 3" in line
    assert logged(workspace) == before


# ---- every reader takes it as one finished run --------------------------------------------------------------


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> tuple[Path, str]:
    """A run killed after epoch 2, resumed to its end."""
    workspace = tmp_path_factory.mktemp("resumed")
    run_id = killed(workspace, GROWING, "appended@2")
    resume(workspace, run_id)
    return workspace, run_id


def test_replay_and_verify_take_a_resumed_run_as_one_run(resumed):
    workspace, run_id = resumed
    result = invoke("replay", run_id, "--verify", workspace=workspace)
    assert result.exit_code == 0, result.stderr
    assert f"run {run_id}  finished" in result.stdout and "verified: re-execution gives the same" in result.stderr


def test_the_runs_view_lists_a_resumed_run_as_finished(resumed):
    workspace, run_id = resumed
    result = invoke("query", "select ended, finished, epochs from runs", "--format", "csv", workspace=workspace)
    assert result.stdout.splitlines()[1] == f"RunFinished,true,{EPOCHS}"


def test_iql_reads_the_resumed_run_as_the_episode_of_the_run_left_alone(resumed, tmp_path):
    workspace, run_id = resumed
    alone = tmp_path / "alone"
    assert esper("run", *GROWING, workspace=alone).returncode == 0
    spec = spec_for_task("mnist1d")
    episodes = []
    for ws in (workspace, alone):
        with Workspace.at(ws).reader() as reader:
            (episode,), notes = workspace_episodes(reader, select_runs(reader, "ended = 'RunFinished'", "mnist1d"),
                                                   spec, RewardConfig())
        episodes.append(episode)
    a, b = episodes
    assert len(a) == len(b) == EPOCHS and bool(a.done[-1])
    for field in ("obs", "next_obs", "mask", "action", "reward", "done"):
        assert (getattr(a, field) == getattr(b, field)).all(), field


def test_the_report_tells_a_resumed_run_as_finished(resumed, tmp_path):
    workspace, run_id = resumed
    out = tmp_path / "report.txt"
    assert invoke("report", run_id, "--out", out.with_suffix(".html"), workspace=workspace).exit_code == 0
    html = out.with_suffix(".html").read_text()
    assert "finished" in html and "Run failed" not in html


def test_gc_frees_what_the_resumed_run_no_longer_needs(resumed):
    workspace, run_id = resumed
    result = invoke("gc", workspace=workspace)
    assert result.exit_code == 0 and result.stdout.startswith("deleted ")
    last = [e for e in logged(workspace) if isinstance(e, CheckpointSaved)][-1]
    assert [p.name for p in checkpoint.folder_of(workspace).iterdir()] == [f"{last.sha256}.pt"]
