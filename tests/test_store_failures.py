"""When the store itself fails under a running command: one line naming the cause and the file, exit 1, and every
acknowledged batch still readable (a full disk, a read-only filesystem, the file removed, moved or replaced)."""

import errno
import os
import re
import shutil
import subprocess
from pathlib import Path

import duckdb
import pytest
from cli_runner import esper, invoke

from esper.errors import StoreFailed
from esper.leyline import CommandIssued, EpochEnded, RunConfig, RunStarted, Wait
from esper.leyline.events import RunFailed, RunFinished
from esper.store import Recorder, Workspace
from esper.store.failures import refusal
from esper.store.recorder import remove_if_empty
from esper.tolaria.tasks import TASKS

FULL = 'TransactionContext Error: Failed to commit: Could not write file "{wal}": No space left on device'
"""What DuckDB 1.x/2.x says when the disk fills under a commit (seen on a full tmpfs)."""


def started() -> RunStarted:
    return RunStarted(preset=TASKS["mnist1d"], config=RunConfig(seed=1), slots=["mid"], blueprints=["conv_light"])


def epoch(n: int) -> list:
    return [EpochEnded(epoch=n, train_loss=1.0, val_loss=1.0, val_accuracy=0.5, params=10),
            CommandIssued(epoch=n, command=Wait(), controller="test")]


def stored(workspace: Path, run_id: str) -> list:
    """The run's events as a reader sees them, after its chain and heads are checked."""
    with Workspace.at(workspace).reader() as reader:
        return [r.event for r in reader.read_checked(run_id).recorded]


# ---- the words -------------------------------------------------------------------------------------


@pytest.mark.parametrize("exc, said", [
    (duckdb.TransactionException(FULL.format(wal="/ws/a.duckdb.wal")),
     "no space left on device writing /ws/a.duckdb; free space"),
    (duckdb.IOException('Could not write file "/ws/a.duckdb.wal": Read-only file system'),
     "read-only file system writing /ws/a.duckdb; make /ws writable"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS)), "read-only file system writing /ws/a.duckdb; make /ws writable"),
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES)), "permission denied writing /ws/a.duckdb; make /ws writable"),
    (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)),
     "disk quota exceeded writing /ws/a.duckdb; free space within the quota"),
    (duckdb.IOException('Could not set lock on file "/ws/a.duckdb": Conflicting lock is held in /usr/bin/x (PID 7)'),
     "/ws/a.duckdb is locked by another program; stop that program"),
])
def test_a_refusal_of_the_operating_system_is_said_with_its_cause_and_the_file(exc, said):
    assert str(refusal(exc, Path("/ws/a.duckdb"))) == said


@pytest.mark.parametrize("exc", [duckdb.ConstraintException("Duplicate key"), ValueError("a bug"),
                                 OSError(errno.EBADF, "Bad file descriptor")])
def test_anything_else_stays_what_it_is(exc):
    assert refusal(exc, Path("/ws/a.duckdb")) is None


def test_the_failure_is_said_with_what_the_log_holds_and_how_to_go_on():
    failure = StoreFailed("no space left on device writing /ws/a.duckdb", "free space")
    said = failure.adding(held="the log holds epochs 1–7").adding(then="run esper run --resume a")
    assert str(said) == ("no space left on device writing /ws/a.duckdb: the log holds epochs 1–7; "
                         "free space and run esper run --resume a")
    assert str(StoreFailed("x was removed", then="run it again")) == "x was removed; run it again"


# ---- the writer ------------------------------------------------------------------------------------


class CommitFails:
    """A connection whose commit fails the way a full disk makes DuckDB's fail: the transaction is over."""

    def __init__(self, con, wal: str):
        self.con, self.wal = con, wal

    def commit(self):
        self.con.rollback()
        raise duckdb.TransactionException(FULL.format(wal=self.wal))

    def __getattr__(self, name):
        return getattr(self.con, name)


def test_a_commit_the_disk_refuses_is_store_failed_and_keeps_what_was_stored(tmp_path):
    path = tmp_path / "a.duckdb"
    with Recorder(path) as recorder:
        seq = recorder.append("a", [started(), *epoch(1)], 0)
        real, recorder._con = recorder._con, CommitFails(recorder._con, f"{path}.wal")
        with pytest.raises(StoreFailed) as failed:  # not "cannot rollback - no transaction is active"
            recorder.append("a", epoch(2), seq)
        assert str(failed.value) == f"no space left on device writing {path}; free space"
        recorder._con = real
        assert recorder.append("a", epoch(2), seq) == seq + 2  # space freed: the same batch goes in
    assert [getattr(e, "epoch", None) for e in stored(tmp_path, "a")] == [None, 1, 1, 2, 2]


@pytest.mark.parametrize("name", ["a", 'say "a"'])  # a run id may hold a quote, and names its store
def test_a_store_removed_under_its_writer_is_written_back_before_it_stops(tmp_path, name):
    path = tmp_path / f"{name}.duckdb"
    with Recorder(path) as recorder:
        seq = recorder.append("a", [started(), *epoch(1)], 0)
        os.remove(path)
        with pytest.raises(StoreFailed, match=re.escape(f"{path} was removed while being written; what it held "
                                                        "is written back")):
            recorder.append("a", epoch(2), seq)
    assert [type(e) for e in stored(tmp_path, "a")] == [RunStarted, EpochEnded, CommandIssued]


def test_a_store_removed_with_its_log_and_replaced_by_another_file_is_written_back_beside_it(tmp_path):
    path = tmp_path / "a.duckdb"
    with Recorder(path) as recorder:
        seq = recorder.append("a", [started(), *epoch(1)], 0)
        os.remove(path)
        os.remove(f"{path}.wal")
        path.write_text("someone else's")
        with pytest.raises(StoreFailed, match="another file has taken its place"):
            recorder.append("a", epoch(2), seq)
    assert path.read_text() == "someone else's"
    path.unlink()
    assert [type(e) for e in stored(tmp_path, "a")] == [RunStarted, EpochEnded, CommandIssued]
    assert [p.name for p in tmp_path.iterdir()] == ["a-written-back.duckdb"]


def test_a_store_moved_under_its_writer_is_not_written_twice(tmp_path):
    path, moved = tmp_path / "a.duckdb", tmp_path / "elsewhere" / "b.duckdb"
    moved.parent.mkdir()
    with Recorder(path) as recorder:
        seq = recorder.append("a", [started(), *epoch(1)], 0)
        os.rename(path, moved)
        with pytest.raises(StoreFailed, match=re.escape(f"{path} was moved or renamed while being written; "
                                                        f"move it back to {path}")):
            recorder.append("a", epoch(2), seq)
    assert not path.exists()
    assert [type(e) for e in stored(moved.parent, "a")] == [RunStarted, EpochEnded, CommandIssued]


def test_only_a_store_without_events_is_removed(tmp_path):
    empty, kept, foreign = tmp_path / "empty.duckdb", tmp_path / "kept.duckdb", tmp_path / "foreign.duckdb"
    Recorder(empty).close()
    with Recorder(kept) as recorder:
        recorder.append("a", [started()], 0)
    duckdb.connect(str(foreign)).execute("CREATE TABLE mine (x INT)").close()
    (tmp_path / "unmade.duckdb").write_bytes(b"")  # its creation failed (a full disk)
    for path in (empty, kept, foreign, tmp_path / "missing.duckdb", tmp_path / "unmade.duckdb"):
        remove_if_empty(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.duckdb", "kept.duckdb"]


# ---- esper run -------------------------------------------------------------------------------------


def fail_append(monkeypatch, at: int, exc: BaseException) -> None:
    """The recorder's `at`-th append (1: RunStarted's, 2: epoch 1's ...) meets `exc` inside its transaction."""
    calls = []
    original = Recorder._append_locked

    def append_locked(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise exc
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Recorder, "_append_locked", append_locked)


def store_error(result) -> str:
    """The one `esper: ...` line a command that trained ended with, after its exit code 1."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    said = [line for line in result.stderr.splitlines() if line.startswith("esper")]
    assert len(said) == 1 and said[0] == result.stderr.splitlines()[-1] and "internal error" not in said[0]
    return said[0]


def the_run(workspace: Path) -> tuple[str, Path]:
    [path] = workspace.glob("*.duckdb")
    return path.stem, path


def held_epochs(workspace: Path, run_id: str) -> list[int]:
    events = stored(workspace, run_id)
    assert not [e for e in events if isinstance(e, (RunFailed, RunFinished))]  # the store could not take an ending
    return [e.epoch for e in events if isinstance(e, EpochEnded)]


@pytest.mark.slow
def test_a_full_disk_under_esper_run_is_one_line_and_the_epochs_stay_readable(tmp_path, monkeypatch):
    fail_append(monkeypatch, 4, duckdb.TransactionException(FULL.format(wal="x.wal")))
    error = store_error(invoke("run", "--epochs", "5", "--controller", "static", workspace=tmp_path))
    run_id, path = the_run(tmp_path)
    assert error == (f"esper: no space left on device writing {path}: the log holds epochs 1–2; "
                     f"free space and run esper run --resume {run_id}")
    assert held_epochs(tmp_path, run_id) == [1, 2]
    assert invoke("replay", run_id, workspace=tmp_path).exit_code == 0
    assert '"status": "incomplete"' in invoke("runs", "--json", workspace=tmp_path).stdout


@pytest.mark.slow
def test_a_read_only_filesystem_under_esper_run_is_one_line(tmp_path, monkeypatch):
    fail_append(monkeypatch, 3, OSError(errno.EROFS, os.strerror(errno.EROFS)))
    error = store_error(invoke("run", "--epochs", "4", "--controller", "static", workspace=tmp_path))
    run_id, path = the_run(tmp_path)
    assert error == (f"esper: read-only file system writing {path}: the log holds epoch 1; "
                     f"make {tmp_path} writable and run esper run --resume {run_id}")
    assert held_epochs(tmp_path, run_id) == [1]


@pytest.mark.slow
def test_a_store_failure_under_a_run_without_checkpoints_advises_no_resume(tmp_path, monkeypatch):
    """`--resume` would refuse it (nothing to go on from): it is run again."""
    fail_append(monkeypatch, 3, OSError(errno.EROFS, os.strerror(errno.EROFS)))
    error = store_error(invoke("run", "--epochs", "4", "--controller", "static", "--checkpoint-every", "0",
                               workspace=tmp_path))
    run_id, path = the_run(tmp_path)
    assert error == (f"esper: read-only file system writing {path}: the log holds epoch 1; "
                     f"make {tmp_path} writable and run it again")


@pytest.mark.slow
def test_a_store_removed_under_esper_run_is_written_back_and_said(tmp_path, monkeypatch):
    from esper.cli import run as run_module

    report = run_module.epoch_lines

    def removing(total):
        shown = report(total)

        def progress(epoch, *args):
            shown(epoch, *args)
            if epoch == 2:
                os.remove(the_run(tmp_path)[1])

        return progress

    monkeypatch.setattr(run_module, "epoch_lines", removing)
    error = store_error(invoke("run", "--epochs", "5", "--controller", "static", workspace=tmp_path))
    run_id, path = the_run(tmp_path)
    held = held_epochs(tmp_path, run_id)
    said = "epoch 1" if held == [1] else f"epochs 1–{len(held)}"
    assert held == list(range(1, len(held) + 1)) and len(held) in (1, 2)  # epoch 2 may be written before the removal
    assert error == (f"esper: {path} was removed while being written; what it held is written back: the log holds "
                     f"{said}; run esper run --resume {run_id}")
    assert invoke("replay", run_id, workspace=tmp_path).exit_code == 0


# ---- a real small filesystem ----------------------------------------------------------------------------


@pytest.fixture
def small_filesystem(tmp_path):
    """A 400 KiB tmpfs with 40 KiB left: a run's log fills it within a few epochs. Needs the right to mount."""
    root = tmp_path / "small"
    root.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small filesystem needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(root)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (root / "filler").write_bytes(b"\0" * 360 * 1024)
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=True)


@pytest.mark.slow
def test_a_disk_that_fills_during_esper_run_is_one_line_naming_it_and_the_log_stays_readable(small_filesystem):
    result = esper("run", "--epochs", "40", "--controller", "static", workspace=small_filesystem, timeout=600)
    assert result.returncode == 1, result.stderr
    run_id, path = the_run(small_filesystem)
    last = result.stderr.splitlines()[-1]
    # the disk fills under the store file or under the epoch's checkpoint file, whichever writes first
    written = rf"(?:{re.escape(str(path))}|{re.escape(str(small_filesystem))}/checkpoints/[0-9a-f]{{64}}\.pt)"
    match = re.fullmatch(rf"esper: no space left on device writing {written}: the log holds "
                         rf"(no epoch yet|epoch 1|epochs 1–(\d+)); free space and run esper run --resume {run_id}", last)
    assert match, result.stderr
    held = {"no epoch yet": 0, "epoch 1": 1}.get(match[1]) if match[2] is None else int(match[2])
    assert held_epochs(small_filesystem, run_id) == list(range(1, held + 1))


@pytest.mark.slow
def test_a_full_disk_under_esper_ppo_is_one_line_and_every_other_episode_ends(tmp_path, monkeypatch):
    fail_append(monkeypatch, 4, duckdb.TransactionException(FULL.format(wal="x.wal")))  # an episode's epoch 1
    result = invoke("ppo", "--episodes", "2", "--n-envs", "2", "--epochs", "2", "--out", str(tmp_path / "p.pt"),
                    workspace=tmp_path)
    [path] = tmp_path.glob("*.duckdb")
    assert store_error(result) == f"esper: no space left on device writing {path}; free space and run it again"
    with Workspace.at(tmp_path).reader() as reader:
        episodes = [r[0] for r in reader.con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()]
        endings = {run: [e.event for e in reader.read_run(run) if isinstance(e.event, (RunFailed, RunFinished))]
                   for run in episodes}
    assert len(episodes) == 2
    cut, ended = sorted(endings.values(), key=len)
    assert cut == []  # the episode whose write failed: its log ends at its last stored epoch
    assert [e.error for e in ended] == [f"no space left on device writing {path}"]
