"""`esper run` stopped at its edges: as it makes its store (Ctrl-C pressed once, or twice), once the run's end is
stored, and beside a second `--resume` of the same run. Whatever the moment, the workspace keeps no store a reader
must skip, and the last lines say only what is true: how to resume a run whose log can go on, nothing for one with
no event, the result of one that had finished."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runner import invoke, one_line_error
from fake_runs import checkpointed, plan_run, write_batches
from msgspec.structs import replace

import esper.cli.run
import esper.store.recorder
import esper.tolaria.resume
from esper.app import runs
from esper.leyline import RunFinished
from esper.store import Recorder, Workspace


@pytest.fixture
def ctrl_c():
    """`ctrl_c()` presses Ctrl-C in this process, as a terminal would (SIGINT raises KeyboardInterrupt, whatever a
    suite started in the background gave it): the signal is acted on where it lands, or held where it is held."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield lambda: signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, before)


def pressed_once_in(monkeypatch, owner, name: str, ctrl_c) -> None:
    """Ctrl-C pressed as `owner.name` is first called, just before it runs."""
    original, pressed = getattr(owner, name), []

    def pressing(*args, **kwargs):
        if not pressed:
            pressed.append(1)
            ctrl_c()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, pressing)


def stored(workspace: Path) -> list[str]:
    return sorted(p.name for p in workspace.glob("*.duckdb*"))


@pytest.mark.parametrize("where", [
    "making",  # the store file half made: DuckDB's header written, the Recorder not whole
    "again",  # Ctrl-C as the run prepares, pressed again as the first one's cleanup closes the empty store
])
def test_ctrl_c_as_a_run_makes_its_store_leaves_no_store_and_no_advice(tmp_path, monkeypatch, ctrl_c, where):
    if where == "making":
        pressed_once_in(monkeypatch, esper.store.recorder, "_file_state", ctrl_c)
    else:
        def preparing(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(runs, "execute", preparing)
        pressed_once_in(monkeypatch, Recorder, "close", ctrl_c)
    result = invoke("run", "--epochs", "1", workspace=tmp_path)
    assert result.exit_code == 130 and result.stderr.strip().splitlines()[-1] == "esper: interrupted", result.stderr
    assert "--resume" not in result.stderr  # nothing was logged: nothing to continue
    assert stored(tmp_path) == []  # no empty store, nor one with no tables, for every reader to skip


def stopped_run(workspace: Path, monkeypatch, *flags: str):
    """A run of 2 epochs stopped by Ctrl-C once its first epoch is with the writer: its id, and the command's result."""
    def stopping(total):
        def report(*args):
            raise KeyboardInterrupt
        return report

    with monkeypatch.context() as patched:
        patched.setattr(esper.cli.run, "epoch_lines", stopping)
        result = invoke("run", "--epochs", "2", *flags, workspace=workspace)
    [path] = workspace.glob("*.duckdb")
    assert result.exit_code == 130, result.stderr
    return path.stem, result


def interrupted_run(workspace: Path, monkeypatch) -> str:
    """A run stopped as `stopped_run` stops it, which `--resume` can continue (and the stop says so); its id."""
    run_id, result = stopped_run(workspace, monkeypatch)
    assert result.stderr.strip().splitlines()[-2:] == [f"note: esper run --resume {run_id} continues the run",
                                                       "esper: interrupted"]
    return run_id


def test_a_stopped_run_without_checkpoints_gets_no_resume_advice_and_resume_refuses_it(tmp_path, monkeypatch):
    run_id, result = stopped_run(tmp_path, monkeypatch, "--checkpoint-every", "0")
    assert result.stderr.strip().splitlines()[-1] == "esper: interrupted" and "--resume" not in result.stderr
    assert one_line_error(invoke("run", "--resume", run_id, workspace=tmp_path)) == (
        f"esper: run {run_id} has no checkpoint to resume from (it ran with checkpoint_every 0)")


def finished(workspace: Path, run_id: str) -> RunFinished:
    with Recorder(Workspace(workspace).store_path(run_id)) as recorder:
        last = recorder.read(run_id)[-1].event
    assert isinstance(last, RunFinished)
    return last


def test_ctrl_c_once_run_finished_is_stored_ends_the_command_with_the_result(tmp_path, monkeypatch):
    """The run closing its writer when the stop comes: it is over and whole, so nothing is advised that `--resume`
    would refuse ("finished: there is nothing to resume"); the result is said as ever, exit 0."""
    def then_stopped(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    original = runs.execute
    monkeypatch.setattr(runs, "execute", then_stopped)
    result = invoke("run", "--epochs", "1", "--json", workspace=tmp_path)
    assert result.exit_code == 0, result.stderr
    said = json.loads(result.stdout)
    end = finished(tmp_path, said["run_id"])
    assert (said["val_accuracy"], said["test_accuracy"], said["params"]) == (end.val_accuracy, end.test_accuracy,
                                                                             end.params)
    assert f"note: run {said['run_id']} had finished when the stop came: its result stands" in result.stderr
    assert "--resume" not in result.stderr and "interrupted" not in result.stderr


def test_ctrl_c_once_a_resumed_run_finished_ends_the_command_with_the_result(tmp_path, monkeypatch):
    run_id = interrupted_run(tmp_path, monkeypatch)

    def then_stopped(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt

    original = esper.tolaria.resume.Resumption.train
    monkeypatch.setattr(esper.tolaria.resume.Resumption, "train", then_stopped)
    result = invoke("run", "--resume", run_id, workspace=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[:2] == [f"run {run_id}",
                                              f"  val accuracy   {finished(tmp_path, run_id).val_accuracy * 100:.2f}%"]
    assert "--resume" not in result.stderr


HOLDER = "import duckdb, sys; con = duckdb.connect(sys.argv[1]); print('held', flush=True); sys.stdin.read()"
"""Another process opening a store for writing, as a second `esper run --resume` does, until its stdin closes."""


def test_a_resume_racing_another_is_refused_as_a_run_still_being_written(tmp_path, monkeypatch):
    """Both found the run not written by anyone; the other opened its store first, between this one's look and its
    own opening: the line a store held by a live writer gets (not DuckDB's lock error), naming the process."""
    run_id = interrupted_run(tmp_path, monkeypatch)
    store = Workspace(tmp_path).store_path(run_id)
    holders = []

    def looked_then_raced(*args, **kwargs):
        found = original(*args, **kwargs)
        holders.append(subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True))
        assert holders[0].stdout.readline() == "held\n"
        return found

    original = esper.tolaria.resume._read
    monkeypatch.setattr(esper.tolaria.resume, "_read", looked_then_raced)
    try:
        result = invoke("run", "--resume", run_id, workspace=tmp_path)
    finally:
        for holder in holders:
            holder.communicate("")
    assert one_line_error(result) == (f"esper: store {store.name} is being written by a live process "
                                      f"(PID {holders[0].pid}): stop it first")


def test_a_resume_of_a_run_another_process_writes_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """The other writer is seen as the log is read (its store is live): the same line, without the process."""
    run_id = interrupted_run(tmp_path, monkeypatch)
    store = Workspace(tmp_path).store_path(run_id)
    before = store.read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        result = invoke("run", "--resume", run_id, workspace=tmp_path)
    finally:
        holder.communicate("")
    assert one_line_error(result) == f"esper: store {store.name} is being written by a live process: stop it first"
    assert result.exit_code == 2 and store.read_bytes() == before


def test_a_store_holding_no_event_of_the_run_has_nothing_to_resume(tmp_path):
    """Whatever a stop left behind, a file with no event of the run is no log: `--resume` would answer "no run"."""
    ws = Workspace(tmp_path)
    Recorder(ws.store_path("empty")).close()
    assert runs.stopped(ws, "empty") == runs.Stopped(None, False)
    assert runs.stopped(ws, "missing") == runs.Stopped(None, False)


def test_resuming_an_episode_of_a_ppo_job_points_to_the_job(tmp_path):
    """An episode lives in its PPO job's store file, without checkpoints of its own: the job resumes, not the run
    (it is no imported run, as a run outside a store of its own otherwise is)."""
    plan = plan_run(epochs=3)
    started = plan[0][0]
    episode = [[replace(started, config=replace(started.config, controller="ppo")), *plan[0][1:]], *plan[1:2]]
    write_batches(tmp_path, episode, "mnist1d-ppo-abc123-u0001-e0", store="ppo-abc123")
    assert one_line_error(invoke("run", "--resume", "mnist1d-ppo-abc123-u0001-e0", workspace=tmp_path)) == (
        "esper: run mnist1d-ppo-abc123-u0001-e0 is an episode of a PPO job (ppo-abc123.duckdb): `esper ppo --resume "
        "--out POLICY` continues the job, which plays its interrupted update again")


@pytest.mark.parametrize("command", [["run", "--resume"], ["replay", "--verify"]])
def test_a_run_trained_on_cuda_is_not_told_to_use_cpu_where_there_is_none(tmp_path, monkeypatch, command):
    """`--resume` and `--verify` take no device: the run goes on, or is re-executed, on the one it trained on."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA, whatever this one has
    plan = checkpointed(plan_run(epochs=3))
    started = plan[0][0]
    write_batches(tmp_path, [[replace(started, config=replace(started.config, device="cuda")), *plan[0][1:]], *plan[1:2]],
                  "on-cuda")
    *verb, flag = command
    said = one_line_error(invoke(*verb, flag, "on-cuda", workspace=tmp_path) if flag == "--resume"
                          else invoke(*verb, "on-cuda", flag, workspace=tmp_path))
    assert said == ("esper: run on-cuda trained on cuda, which this machine does not have: it re-executes and resumes "
                    "only on the device it trained on")


def test_a_store_failing_under_a_resumed_run_says_what_the_log_holds_and_how_to_go_on(tmp_path, monkeypatch):
    import errno
    import os

    run_id = interrupted_run(tmp_path, monkeypatch)
    original = Recorder._append_locked

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(Recorder, "_append_locked", read_only)
    result = invoke("run", "--resume", run_id, workspace=tmp_path)
    monkeypatch.setattr(Recorder, "_append_locked", original)
    assert result.exit_code == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"esper: read-only file system writing {Workspace(tmp_path).store_path(run_id)}: the log holds epoch 1; "
        f"make {tmp_path} writable and run esper run --resume {run_id}")


def test_esper_runs_names_the_runs_resume_continues_and_only_those(tmp_path, monkeypatch):
    resumable_run = interrupted_run(tmp_path / "one", monkeypatch)
    said = invoke("runs", workspace=tmp_path / "one")
    assert said.exit_code == 0 and said.stderr.splitlines()[-1] == (
        f"note: run {resumable_run} stopped before its end: esper run --resume {resumable_run} continues it")
    stopped_run(tmp_path / "none", monkeypatch, "--checkpoint-every", "0")  # nothing to go on from
    assert invoke("run", "--epochs", "1", workspace=tmp_path / "none").exit_code == 0
    assert "--resume" not in invoke("runs", workspace=tmp_path / "none").stderr


def test_esper_runs_names_every_run_left_unfinished_in_one_line(tmp_path):
    cut = checkpointed(plan_run(epochs=3))[:2]  # killed after its first epoch: no end in its log
    for run_id in ("cut-a", "cut-b"):
        write_batches(tmp_path, cut, run_id)
    said = invoke("runs", workspace=tmp_path)
    assert said.stderr.splitlines()[-1] == "note: esper run --resume RUN continues each run left unfinished: cut-a, cut-b"
