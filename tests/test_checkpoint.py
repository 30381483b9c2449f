"""Checkpoint files and a resumed run's log, without training: what a checkpoint holds and refuses, how the
lifecycle fold and every reader take `RunResumed`, what `esper gc` deletes. (`test_resume` kills real runs.)"""

import hashlib
import io
import os
from collections import deque
from pathlib import Path

import msgspec
import pytest
import torch
from cli_runner import invoke, one_line_error
from fake_runs import as_recorded, checkpointed, interrupted, iter_events, plan_run, sha, write_batches

from esper.errors import IllegalEvent, StoreFailed
from esper.leyline import CheckpointSaved, EpochEnded, RunConfig, RunFailed, RunResumed
from esper.nissa import narrate
from esper.nissa.projector import Projector
from esper.nissa.runstate import RunState, as_one_run
from esper.store import Recorded, Recorder, Workspace
from esper.tolaria import checkpoint
from esper.tolaria.checkpoint import Checkpoints, UnusableCheckpoint
from esper.tolaria.gc import collect
from esper.tolaria.loop import ListSink, Session
from esper.tolaria.resume import ResumingSink
from esper.tolaria.verify import VerificationFailed

RUN = "heuristic-s0-resumed"


def recorded(batches: list[list]) -> list[Recorded]:
    return as_recorded(iter_events(batches), RUN)


@pytest.fixture(scope="module")
def plan() -> list[list]:
    return checkpointed(plan_run(epochs=12))


# ---- the lifecycle's fold ----------------------------------------------------------------------------------


def test_a_resumed_run_folds_as_the_run_it_continues(plan):
    whole = RunState.fold(recorded(plan))
    resumed = RunState.fold(recorded(interrupted(plan, after=5)))
    assert resumed.status == "finished" and resumed.failed is None
    assert {**resumed.summary(), "events": 0} == {**whole.summary(), "events": 0}


@pytest.mark.parametrize("error", ["interrupted", "terminated"])
def test_an_interruption_from_outside_may_be_resumed_and_a_cut_log_too(plan, error):
    RunState.fold(recorded(interrupted(plan, after=3, error=error)))
    cut = [*plan[:4], [RunResumed(epoch=3, sha256=sha(3), checkpoint_epoch=3), *plan[4]], *plan[5:]]
    assert RunState.fold(recorded(cut)).status == "finished"


def test_a_run_that_failed_by_itself_or_finished_is_never_resumed(plan):
    with pytest.raises(IllegalEvent, match=r"RunResumed after the run failed \(training diverged"):
        RunState.fold(recorded(interrupted(plan, after=4, error="training diverged at epoch 5: train loss nan")))
    with pytest.raises(IllegalEvent, match="RunResumed after the run finished"):
        RunState.fold(recorded([*plan, [RunResumed(epoch=12, sha256=sha(12), checkpoint_epoch=12)]]))


def test_a_resumption_continues_after_the_logs_last_epoch(plan):
    wrong = [*plan[:4], [RunResumed(epoch=2, sha256=sha(2), checkpoint_epoch=2), *plan[4]]]
    with pytest.raises(IllegalEvent, match="RunResumed at epoch 2 .* the log's last epoch is 3"):
        RunState.fold(recorded(wrong))


def test_as_one_run_is_the_uninterrupted_log_without_its_bookkeeping(plan):
    one = [r.event for r in as_one_run(recorded(interrupted(plan, after=5)))]
    assert one == [e for batch in plan for e in batch if not isinstance(e, CheckpointSaved)]
    still_stopped = [r.event for r in as_one_run(recorded(plan[:4] + [[RunFailed(epoch=4, error="interrupted")]]))]
    assert isinstance(still_stopped[-1], RunFailed)  # no RunResumed after it: it ends the log


# ---- readers -----------------------------------------------------------------------------------------------


def test_the_runs_view_and_esper_runs_end_a_resumed_run_with_what_closes_it_last(tmp_path, plan):
    ws = write_batches(tmp_path, interrupted(plan, after=5), RUN)
    write_batches(tmp_path, interrupted(plan, after=5)[:8], "still-running")  # resumed, cut off again
    with ws.reader() as reader:
        rows = {r[0]: r[1:] for r in reader.con.execute("SELECT run_id, ended, finished, epochs FROM runs").fetchall()}
    assert rows == {RUN: ("RunFinished", True, 12), "still-running": (None, False, 6)}
    listed = msgspec.json.decode(invoke("runs", "--json", workspace=tmp_path).stdout)
    assert {r["run_id"]: r["status"] for r in listed} == {RUN: "finished", "still-running": "incomplete"}


def test_projections_and_reports_hold_a_resumed_run_as_the_uninterrupted_one(tmp_path, plan):
    tables = []
    for name, batches in (("whole", plan), ("resumed", interrupted(plan, after=5))):
        ws = write_batches(tmp_path / name, batches, RUN)
        with ws.reader() as reader, Projector.memory() as projector:
            projector.rebuild(reader)
            tables.append({t: projector.fetch(t, RUN) for t in ("run_summary", "epoch_metrics", "seed_lifecycle",
                                                                "seed_stages", "controller_decisions")})
    whole, resumed = tables
    assert resumed["run_summary"][0]["status"] == "finished" and resumed["run_summary"][0]["error"] is None
    for table in (*whole.values(), *resumed.values()):  # where in the log, not what happened
        for row in table:
            row.pop("events", None), row.pop("seq", None)
    assert resumed == whole


def test_the_story_tells_the_interruption_and_the_resumption(plan):
    lines = narrate(recorded(interrupted(plan, after=5)), RUN)
    assert "epoch 6: run interrupted" in lines and "epoch 5: resumed from its checkpoint of epoch 5" in lines
    assert lines[-1].startswith("epoch 12: finished")


# ---- checkpoint files --------------------------------------------------------------------------------------


@pytest.fixture
def started(tmp_path):
    """A session (no epoch trained) that wrote its epoch-0 checkpoint; its sink and folder."""
    sink, folder = ListSink(), tmp_path / "checkpoints"
    session = Session(RunConfig(epochs=3, seed=5), sink, checkpoints=Checkpoints(folder, every=1))
    yield session, sink, folder
    session.close()


def test_a_session_saves_its_state_before_it_logs_the_checkpoint(started):
    session, sink, folder = started
    session.close()
    saved = sink.events[-1]
    assert isinstance(saved, CheckpointSaved) and saved.epoch == 0
    data = (folder / f"{saved.sha256}.pt").read_bytes()
    assert hashlib.sha256(data).hexdigest() == saved.sha256 and len(data) == saved.size
    assert not list(folder.glob(".*.tmp"))


def test_a_checkpoint_restores_weights_optimizers_and_every_rng(tmp_path):
    sink = ListSink()
    session = Session(RunConfig(epochs=3, seed=5), sink)
    try:
        session.begin_epoch()
        trainer = session.trainer
        trainer.train_step(*next(trainer.data.batches("train", 64, trainer.generator)))  # moves weights, Adam, RNGs
        saved = checkpoint.write(tmp_path, checkpoint.capture(1, trainer, None, session.projection.garden))
        rng = torch.get_rng_state()
    finally:
        session.close()
    torch.manual_seed(123)
    other = Session.resumed(sink.events[0], [sink.events[0]], checkpoint.read(tmp_path, saved), ListSink())
    try:
        assert other.epoch == 1 and torch.equal(torch.get_rng_state(), rng)
        assert torch.equal(other.trainer.generator.get_state(), trainer.generator.get_state())
        for mine, theirs in ((other.trainer.model.state_dict(), trainer.model.state_dict()),
                             (other.trainer.host_optimizer.state_dict()["state"][0],
                              trainer.host_optimizer.state_dict()["state"][0])):
            assert mine.keys() == theirs.keys()
            assert all(torch.equal(mine[k], theirs[k]) for k in mine if isinstance(mine[k], torch.Tensor))
    finally:
        other.close()


def test_a_missing_damaged_or_misnamed_checkpoint_is_unusable(started):
    session, sink, folder = started
    session.close()
    saved = sink.events[-1]
    with pytest.raises(UnusableCheckpoint, match="holds epoch 0, not 4"):
        checkpoint.read(folder, msgspec.structs.replace(saved, epoch=4))
    path = folder / f"{saved.sha256}.pt"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(UnusableCheckpoint, match="damaged"):
        checkpoint.read(folder, saved)
    path.unlink()
    with pytest.raises(UnusableCheckpoint, match="missing"):
        checkpoint.read(folder, saved)


@pytest.mark.parametrize("content, why", [
    (torch.zeros(3), "not a checkpoint of format 1"),
    ({"format": 2, "model": {"w": torch.zeros(2)}}, "not a checkpoint of format 1"),  # another format, another layout
    ({"skeleton": {"format": 1, "epoch": 0, "w": ("__tensor__", 0)}, "dtypes": ["torch.float32"], "shapes": [[3]],
      "flat": {"torch.float32": torch.zeros(2)}}, "unreadable"),  # ours, its tensors cut short
], ids=["tensor", "format-2", "cut-short"])
def test_a_file_under_a_checkpoints_name_that_is_not_one_is_unusable(tmp_path, content, why):
    """Resume passes over an unusable checkpoint to an earlier one: a file it cannot lay out must say so, not crash."""
    buffer = io.BytesIO()
    torch.save(content, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / f"{digest}.pt").write_bytes(data)
    with pytest.raises(UnusableCheckpoint, match=why):
        checkpoint.read(tmp_path, CheckpointSaved(epoch=0, sha256=digest, size=len(data)))


def test_a_folder_where_a_checkpoint_goes_fails_the_store_in_words(tmp_path):
    """`esper gc` leaves a folder named as a checkpoint file (not Esper's); a run that comes to write that file says
    what is in the way (it was an internal IsADirectoryError)."""
    captured = checkpoint.Captured(0, {"format": checkpoint.FORMAT, "epoch": 0})
    digest = checkpoint.write(tmp_path / "elsewhere", captured).sha256
    folder = tmp_path / "checkpoints"
    (folder / f"{digest}.pt").mkdir(parents=True)
    with pytest.raises(StoreFailed) as failed:
        checkpoint.write(folder, captured)
    assert str(failed.value) == f"{folder / digest}.pt is a folder, where a checkpoint file goes; move it away"
    assert sorted(p.name for p in folder.iterdir()) == [f"{digest}.pt"]  # no temporary file left


# ---- resuming: compare, then append --------------------------------------------------------------------------


def test_epochs_trained_again_are_compared_and_dropped_then_the_rest_follows_the_marker(plan):
    log = recorded(plan)
    sink, resumed = ListSink(), RunResumed(epoch=2, sha256=sha(1), checkpoint_epoch=1)
    epoch_2 = deque(r for r in log if r.event.epoch == 2 and not isinstance(r.event, CheckpointSaved))
    resuming = ResumingSink(RUN, epoch_2, resumed, sink)
    resuming.append(plan[2])  # epoch 2 again, with its checkpoint: as logged
    resuming.append(plan[3])
    assert sink.events == [resumed, *plan[3]]


def test_a_re_trained_epoch_that_differs_from_the_log_fails_the_resumption(plan):
    log = recorded(plan)
    sink = ListSink()
    resuming = ResumingSink(RUN, deque(r for r in log if r.event.epoch == 2), None, sink)
    ended = next(e for e in plan[2] if isinstance(e, EpochEnded))
    changed = [msgspec.structs.replace(ended, val_loss=ended.val_loss + 1) if e is ended else e for e in plan[2]]
    with pytest.raises(VerificationFailed, match=f"run {RUN} does not resume as it was logged: .*val_loss"):
        resuming.append(changed)
    assert sink.events == []


def test_a_run_stopped_while_it_trains_logged_epochs_again_leaves_the_log_as_it_was(plan):
    sink = ListSink()
    resumed = RunResumed(epoch=2, sha256=sha(1), checkpoint_epoch=1)
    resuming = ResumingSink(RUN, deque(recorded(plan[2:3])), resumed, sink)
    resuming.append([RunFailed(epoch=2, error="interrupted")])
    assert sink.events == []


# ---- esper gc ------------------------------------------------------------------------------------------------


def test_gc_keeps_every_checkpoint_a_run_may_resume_from_and_the_last_of_an_ended_run(tmp_path, plan):
    write_batches(tmp_path, plan, "finished")
    write_batches(tmp_path, plan[:5] + [[RunFailed(epoch=5, error="interrupted")]], "interrupted")
    write_batches(tmp_path, plan[:4] + [[RunFailed(epoch=4, error="training diverged at epoch 4")]], "diverged")
    folder = checkpoint.folder_of(tmp_path)
    folder.mkdir()
    for epoch in range(1, 13):
        (folder / f"{sha(epoch)}.pt").write_bytes(b"x" * 10)
    (folder / f"{'ab' * 32}.pt").write_bytes(b"x" * 10)  # named by no log
    (folder / f".{'cafe' * 16}.123.tmp").write_bytes(b"x" * 10)  # a write cut by a kill
    result = invoke("gc", workspace=tmp_path)
    assert result.exit_code == 0
    # Epochs 1-4 are the interrupted run's (and 1-3 the diverged run's too): all stay; 12 is the finished run's last.
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{sha(e)}.pt" for e in (1, 2, 3, 4, 12))
    assert result.stdout.strip() == "deleted 9 checkpoint files, 90 bytes freed; kept 5"


def test_gc_deletes_only_the_files_esper_names_so_and_leaves_what_else_is_in_the_folder(tmp_path, plan):
    write_batches(tmp_path, plan, "finished")
    folder = checkpoint.folder_of(tmp_path)
    folder.mkdir()
    for epoch in range(1, 13):
        (folder / f"{sha(epoch)}.pt").write_bytes(b"x" * 10)
    theirs = [folder / "my_model.pt", folder / f"{sha(1)[:12]}.pt", folder / ".partial.tmp"]  # a user's files
    for path in theirs:
        path.write_bytes(b"mine")
    (folder / "runs.pt").mkdir()
    (folder / f"{'ef' * 32}.pt").mkdir()  # a folder named as a checkpoint is not one
    (folder / "link.pt").symlink_to(folder / f"{sha(12)}.pt")
    result = invoke("gc", workspace=tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "deleted 11 checkpoint files, 110 bytes freed; kept 1"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{sha(12)}.pt", *(p.name for p in theirs), "runs.pt", f"{'ef' * 32}.pt", "link.pt"])


def test_gc_that_may_not_delete_says_so_in_one_line(tmp_path, plan, monkeypatch):
    write_batches(tmp_path, plan, "finished")
    folder = checkpoint.folder_of(tmp_path)
    folder.mkdir()
    for epoch in range(1, 13):
        (folder / f"{sha(epoch)}.pt").write_bytes(b"x")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != folder and real_access(path, mode))
    assert one_line_error(invoke("gc", workspace=tmp_path)) == f"esper: cannot delete checkpoint files in {folder}: " \
                                                                "it is not writable"
    monkeypatch.setattr(os, "access", real_access)  # permissions say yes, the filesystem no (a read-only mount)

    def refuse(self, missing_ok=False):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "unlink", refuse)
    error = one_line_error(invoke("gc", workspace=tmp_path))
    assert error.startswith(f"esper: cannot delete {folder}/") and error.endswith(".pt: Permission denied"), error
    assert len(list(folder.iterdir())) == 12
    real_scandir = os.scandir

    def unreadable(path="."):
        if isinstance(path, (str, os.PathLike)) and Path(path) == folder:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", unreadable)  # a folder we may not list
    assert one_line_error(invoke("gc", workspace=tmp_path)) == \
        f"esper: cannot read the checkpoint folder {folder}: Permission denied"


def test_gc_keeps_files_no_log_names_while_a_store_is_being_written(tmp_path, plan):
    write_batches(tmp_path, plan, "finished")
    folder = checkpoint.folder_of(tmp_path)
    folder.mkdir()
    (folder / f"{'cd' * 32}.pt").write_bytes(b"x")
    with Recorder(Workspace.at(tmp_path).store_path("live")) as recorder:
        recorder.append("live", plan[0], 0)
        collected = collect(Workspace.at(tmp_path))
    assert collected.deleted == 0 and (folder / f"{'cd' * 32}.pt").exists()
    assert any("no log names yet" in note for note in collected.notes)


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_a_restored_optimizer_keeps_the_implementation_chosen_here(kind):
    """A checkpoint's optimizer state written with another implementation (CUDA's before it was fused) must not
    switch this one's: a fused optimizer restored as unfused crashed its first fp16 step under the scaler."""
    from esper.tolaria.trainer import load_optimizer_state, make_optimizer

    weight = torch.nn.Parameter(torch.randn(4))
    written = make_optimizer(kind, [weight], 0.1, 0.0, 0.9)  # on CPU: not fused
    (weight * weight).sum().backward()
    written.step()
    fused = type(written)([weight], lr=0.1, **({"momentum": 0.9, "nesterov": True} if kind == "sgd" else {}), fused=True)
    load_optimizer_state(fused, written.state_dict())
    assert all(group["fused"] for group in fused.param_groups)
    assert fused.state_dict()["state"][0].keys() == written.state_dict()["state"][0].keys()  # the state came along
    scaler = torch.amp.GradScaler("cpu")
    weight.grad = None
    scaler.scale((weight * weight).sum()).backward()
    before = weight.detach().clone()
    scaler.step(fused)
    assert not torch.equal(weight.detach(), before)
