"""Reading a workspace (esper.store.workspace): every store behind one `events` view, read-only and
locked down, unreadable or busy files reported and skipped, never waited on."""

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import duckdb
import pytest
from cli_runner import invoke, one_line_error

from esper.errors import BadInput, UnknownRun
from esper.leyline import EpochEnded, PolicyUpdated, RunConfig, RunStarted
from esper.store import Reader, Recorder, Workspace
from esper.tolaria.tasks import TASKS

MNIST1D = TASKS["mnist1d"]


def started(seed: int = 0) -> RunStarted:
    return RunStarted(preset=MNIST1D, config=RunConfig(seed=seed), slots=["l1"], blueprints=["conv"])


def epochs(n: int) -> list[EpochEnded]:
    return [EpochEnded(epoch=i, train_loss=1.0, val_loss=1.0, val_accuracy=i / n, params=10) for i in range(n)]


def write_run(ws: Workspace, store: str, run_id: str, n_epochs: int) -> None:
    with Recorder(ws.store_path(store)) as rec:
        rec.append(run_id, [started(), *epochs(n_epochs)], rec.last_seq(run_id))


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """Three store files: one run each in two of them, two runs in the third."""
    ws = Workspace(tmp_path_factory.mktemp("written") / "runs")
    write_run(ws, "alpha", "20250101-alpha-1", 3)
    write_run(ws, "beta", "20250101-beta-1", 4)
    write_run(ws, "gamma", "20250102-gamma-1", 1)
    write_run(ws, "gamma", "20250102-gamma-2", 2)
    return ws.root


@pytest.fixture
def ws(written, tmp_path) -> Workspace:
    """A copy of the written stores of its own for each test (some tests try to change them)."""
    shutil.copytree(written, tmp_path / "runs")
    return Workspace(tmp_path / "runs")


def query(reader: Reader, sql: str) -> list[tuple]:
    return reader.con.execute(sql).fetchall()


def test_every_store_is_behind_one_events_view(ws: Workspace):
    with ws.reader() as reader:
        assert reader.notes == []
        assert query(reader, "SELECT run_id, count(*) FROM events GROUP BY 1 ORDER BY 1") == [
            ("20250101-alpha-1", 4), ("20250101-beta-1", 5), ("20250102-gamma-1", 2), ("20250102-gamma-2", 3),
        ]
        assert query(reader, "SELECT type, count(*) FROM events GROUP BY 1 ORDER BY 1") == [
            ("EpochEnded", 10), ("RunStarted", 4),
        ]
        columns = [r[0] for r in query(reader, "DESCRIBE events")]
        assert columns == ["position", "run_id", "seq", "event_id", "ts", "type", "epoch", "seed_id", "slot", "payload",
                           "hash"]
        read = reader.read_run("20250101-beta-1")
        assert [r.seq for r in read] == [1, 2, 3, 4, 5]
        assert read[0].event == started()
        assert not reader.is_live("20250101-beta-1")


def test_an_empty_workspace_has_an_empty_events_view(tmp_path):
    with Workspace(tmp_path / "nothing-here").reader() as reader:
        assert query(reader, "SELECT count(*) FROM events") == [(0,)]
        with pytest.raises(UnknownRun):
            reader.resolve_run("x")


@pytest.mark.parametrize(
    "sql",
    [
        "COPY (SELECT * FROM events) TO '{dir}/leak.csv'",
        "COPY events TO '{dir}/leak.parquet' (FORMAT parquet)",
        "SELECT * FROM read_csv('{dir}/secret.csv')",
        "SELECT * FROM read_text('{dir}/secret.csv')",
        "ATTACH '{dir}/other.duckdb' AS other",
        "INSERT INTO store0.events SELECT * FROM store0.events",
        "DELETE FROM store0.events",
        "CREATE TABLE store0.sneaky AS SELECT 1",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "SET threads = 1",
        "RESET lock_configuration",
        "INSTALL httpfs",
        "LOAD httpfs",
    ],
)
def test_lock_down_refuses_what_could_touch_files_or_settings(ws: Workspace, tmp_path: Path, sql: str):
    (tmp_path / "secret.csv").write_text("a,b\n1,2\n")
    before = sorted(p.name for p in ws.root.iterdir())
    with ws.reader() as reader:
        reader.lock_down()
        with pytest.raises(duckdb.Error, match="disabled|locked|read-only"):  # refused, not merely failing
            query(reader, sql.format(dir=tmp_path))
        assert query(reader, "SELECT count(*) FROM events") == [(14,)]  # and it still answers
    assert not (tmp_path / "leak.csv").exists() and not (tmp_path / "leak.parquet").exists()
    assert sorted(p.name for p in ws.root.iterdir()) == before
    with ws.reader() as reader:
        assert query(reader, "SELECT count(*) FROM events") == [(14,)]


def test_a_file_of_another_engine_is_skipped_without_loading_an_extension(ws: Workspace, tmp_path, monkeypatch):
    """DuckDB reads a SQLite file through an extension it would download and load: Esper never lets it."""
    import sqlite3

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # where DuckDB keeps the extensions it installs
    with contextlib.closing(sqlite3.connect(ws.store_path("lite"))) as con:
        con.execute("CREATE TABLE t (x)")
        con.commit()
    with ws.reader() as reader:
        assert len(reader.notes) == 1 and "skipped lite.duckdb: unreadable store" in reader.notes[0]
        assert "download" not in reader.notes[0]
        assert query(reader, "SELECT count(*) FROM events") == [(14,)]
    assert list(home.iterdir()) == []


DAMAGE_COMMANDS = [("runs",), ("query", "select count(*) from events"), ("report", "heur"), ("replay", "heur"),
                   ("replay", "static")]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory) -> Path:
    from fake_runs import write_comparison

    root = tmp_path_factory.mktemp("comparison")
    write_comparison(root)
    return root


def test_a_damaged_block_in_a_store_is_named_in_one_line(comparison, tmp_path):
    """A store whose header reads but one of its blocks does not (a checksum that does not match): not a bug of
    Esper's, nor bad SQL, but damage on disk. Whichever block of the file is damaged, a command that meets it names
    the file in one line, whether it read the block for a table or for an index (a primary key's, which no scan of
    the table reads); with the file moved out, every command works."""
    block_size = 262_144
    failed = set()
    for block in range(1, 4):  # past the file's header (block 0 and the metadata before it)
        ws = tmp_path / f"block{block}"
        shutil.copytree(comparison, ws)
        damaged = next(ws.glob("static-*.duckdb"))
        data = bytearray(damaged.read_bytes())
        assert len(data) >= 12_288 + 4 * block_size  # the three blocks exist
        data[12_288 + block * block_size + 5_000] ^= 0xFF
        damaged.write_bytes(bytes(data))
        for command in DAMAGE_COMMANDS:
            result = invoke(*command, "--workspace", str(ws))
            if result.exit_code == 0:
                continue
            failed.add((block, command))
            line = one_line_error(result, 1)
            assert line.startswith(f"esper: store {damaged.name} is damaged (Corrupt database file: "), (block, line)
            assert line.endswith(f"move it out of workspace {ws} to read the rest"), line
        damaged.rename(ws / "aside.bak")
        for command in DAMAGE_COMMANDS[:-1]:
            assert invoke(*command, "--workspace", str(ws)).exit_code == 0
    assert {block for block, _ in failed} == {1, 2, 3}, failed  # every block's damage is met by some command


def test_a_corrupt_file_is_skipped_with_a_note(ws: Workspace):
    ws.store_path("broken").write_bytes(os.urandom(20_000))
    ws.store_path("empty").write_bytes(b"")
    with duckdb.connect(str(ws.store_path("foreign"))) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
    with duckdb.connect(str(ws.store_path("notes"))) as con:  # another program's log, named as ours is
        con.execute("CREATE TABLE events AS SELECT 1 AS seq, 'x' AS run_id")
    whole = ws.store_files()[0].read_bytes()
    assert len(whole) > 300_000
    ws.store_path("cut").write_bytes(whole[:300_000])  # a copy stopped part-way: DuckDB opens it, reads fail later
    with ws.reader() as reader:
        notes = "\n".join(reader.notes)
        assert "skipped broken.duckdb: unreadable store" in notes
        assert "skipped empty.duckdb: unreadable store" in notes
        assert "skipped foreign.duckdb: not an Esper store (no events table)" in notes
        assert "skipped notes.duckdb: not an Esper store (its events table has no position column)" in notes
        assert "skipped cut.duckdb: damaged store (cut short: 300,000 bytes where its blocks in use take" in notes
        assert len(reader.notes) == 5
        assert query(reader, "SELECT count(*), count(DISTINCT payload::VARCHAR) FROM events")[0][0] == 14
        assert query(reader, "SELECT count(DISTINCT run_id) FROM events") == [(4,)]


LIVE_WRITER = textwrap.dedent(
    """
    import sys, time
    from esper.leyline import EpochEnded, RunConfig, RunStarted
    from esper.store import Recorder
    from esper.tolaria.tasks import TASKS

    rec = Recorder(sys.argv[1])
    last = rec.append("live-run", [RunStarted(preset=TASKS["mnist1d"], config=RunConfig())], 0)
    rec.append("live-run", [EpochEnded(epoch=0, train_loss=1.0, val_loss=1.0, val_accuracy=0.5, params=10)], last)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def in_thread(fn, timeout: float):
    """Run `fn` in a thread; fail (instead of hanging the suite) if it has not returned within `timeout`."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed back to the test below
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still waiting after {timeout}s"
    if "error" in out:
        raise out["error"]
    return out["value"]


@contextlib.contextmanager
def holding(path: Path, script: str):
    """Another process running `script` on `path`, from the moment it prints `ready` to the end of the block."""
    writer = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        yield writer
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()


def test_a_store_held_by_a_live_writer_is_read_from_a_snapshot_or_skipped(ws: Workspace):
    path = ws.store_path("live")
    with holding(path, LIVE_WRITER) as writer:
        with pytest.raises(duckdb.Error, match="lock"):  # the premise: DuckDB lets no one else open it
            duckdb.connect(str(path), read_only=True)

        reader = in_thread(ws.reader, timeout=20)
        with reader:
            notes = "\n".join(reader.notes)
            assert "live.duckdb" in notes
            runs = [r[0] for r in query(reader, "SELECT DISTINCT run_id FROM events ORDER BY 1")]
            assert runs[:4] == ["20250101-alpha-1", "20250101-beta-1", "20250102-gamma-1", "20250102-gamma-2"]
            if "skipped live.duckdb" in notes:
                assert "live-run" not in runs
            else:  # read from a snapshot: exactly what the writer had committed
                assert "snapshot" in notes
                assert [type(r.event).__name__ for r in reader.read_run("live-run")] == ["RunStarted", "EpochEnded"]
                assert reader.is_live("live-run") and not reader.is_live("20250101-alpha-1")
                reader.lock_down()
                with pytest.raises(duckdb.Error):
                    query(reader, "INSERT INTO store3.events SELECT * FROM store3.events")
        assert writer.poll() is None, "the writer was not disturbed"
    with ws.reader() as reader:  # once the writer is gone its file opens normally
        assert reader.notes == []
        assert query(reader, "SELECT count(*) FROM events WHERE run_id = 'live-run'") == [(2,)]


def test_a_store_its_writer_has_opened_but_not_yet_written_is_skipped_as_new(ws: Workspace):
    """The moment between a writer's connect and its tables: the store is not "another program's file"."""
    path = ws.store_path("new")
    hold = "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('ready', flush=True); time.sleep(60)"
    with holding(path, hold), in_thread(ws.reader, timeout=20) as reader:
        assert "skipped new.duckdb: held by a live writer, snapshot has no events yet" in reader.notes
        assert query(reader, "SELECT count(DISTINCT run_id) FROM events") == [(4,)]


def test_a_store_this_process_is_writing_is_read_from_a_snapshot(ws: Workspace):
    with Recorder(ws.store_path("mine")) as rec:
        rec.append("my-run", [started()], 0)
        with ws.reader() as reader:
            assert reader.notes == ["mine.duckdb is held by a live writer: read from a snapshot taken now"]
            assert [r.seq for r in reader.read_run("my-run")] == [1]
            assert reader.is_live("my-run")
        rec.append("my-run", epochs(2), 1)  # the writer goes on undisturbed
        assert rec.last_seq("my-run") == 3


def test_resolve_run_by_unique_prefix(ws: Workspace):
    with ws.reader() as reader:
        reader.lock_down()
        assert reader.resolve_run("20250101-alpha-1") == "20250101-alpha-1"
        assert reader.resolve_run("20250101-b") == "20250101-beta-1"
        assert reader.resolve_run("20250102-gamma-2") == "20250102-gamma-2"
        with pytest.raises(BadInput, match="matches 2 runs") as ambiguous:
            reader.resolve_run("20250102-gamma")
        assert not isinstance(ambiguous.value, UnknownRun)
        with pytest.raises(UnknownRun, match="no run 'nope'"):
            reader.resolve_run("nope")
        with pytest.raises(UnknownRun):
            reader.resolve_run("2025%")  # a prefix, not a pattern


def test_resolve_run_refuses_an_empty_id_and_a_learner_stream_and_says_when_it_lists_only_some(tmp_path):
    ws = Workspace(tmp_path)
    for i in range(7):
        write_run(ws, "s", f"run-{i}", 1)
    with Recorder(ws.store_path("learner")) as rec:
        rec.append("ppo-abc123", [PolicyUpdated(update=1, stats={"return": 1.0, "explained_variance": float("nan")})], 0)
    with ws.reader() as reader:
        for empty in ("", "  "):
            with pytest.raises(BadInput, match="an empty run id"):
                reader.resolve_run(empty)
        with pytest.raises(BadInput, match=r"matches 7 runs \(run-0, run-1, run-2, run-3, run-4, \.\.\.\)"):
            reader.resolve_run("run-")
        with pytest.raises(BadInput, match=r"ppo-abc123 is a learner's stream of updates, not a training run"):
            reader.resolve_run("ppo-abc")
        assert reader.resolve_run("ppo-abc", training=False) == "ppo-abc123"
        stats = reader.read_run("ppo-abc123")[0].event.stats  # JSON has no NaN: an undefined number reads as None
        assert stats == {"return": 1.0, "explained_variance": None}
    exported = tmp_path / "learner.jsonl"  # an export of the stream: replay refuses it alike
    assert invoke("export", "ppo-abc123", "--out", str(exported), workspace=tmp_path).exit_code == 0
    error = one_line_error(invoke("replay", str(exported), workspace=tmp_path))
    assert "ppo-abc123 is a learner's stream of updates, not a training run" in error


def test_an_exact_id_wins_over_longer_ids_it_prefixes(tmp_path):
    ws = Workspace(tmp_path)
    write_run(ws, "s", "run1", 1)
    write_run(ws, "s", "run10", 1)
    with ws.reader() as reader:
        assert reader.resolve_run("run1") == "run1"
        with pytest.raises(BadInput, match="matches 2 runs"):
            reader.resolve_run("run")


def test_a_workspace_that_is_a_file_is_bad_input(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(BadInput, match="is not a folder"):
        Workspace(tmp_path / "runs").reader()
