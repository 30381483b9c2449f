"""Snapshots of a run's state: they round-trip through cattrs, the writer stores them every N epochs beside the
events, readers start from one whose head matches the log, and replay checks every one of them."""

import functools
import json
import shutil

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli_runner import invoke, one_line_error
from fake_runs import iter_events, plan_run
from esper.leyline import RunConfig
from esper.nissa import snapshot
from esper.nissa.runstate import RunState
from esper.store import Pending, Recorder, Workspace
from esper.tamiyo.controllers import make_controller
from esper.tolaria.loop import StoreSink, execute

RUN = "snap-run"


@functools.lru_cache(maxsize=None)
def planned(controller: str, seed: int, epochs: int) -> tuple:
    return tuple(tuple(batch) for batch in plan_run(controller, seed, epochs))


def fold_events(events) -> RunState:
    state = RunState(run_id=RUN)
    for seq, event in enumerate(events, 1):
        state.apply(event)
        state.last_seq = seq
    return state


@settings(max_examples=80, deadline=None)
@given(controller=st.sampled_from(["heuristic", "policy", "static"]), seed=st.integers(0, 2),
       epochs=st.integers(1, 30), data=st.data())
def test_a_snapshot_folded_on_with_its_tail_is_the_full_fold(controller, seed, epochs, data):
    events = list(iter_events(planned(controller, seed, epochs)))
    cut = data.draw(st.integers(0, len(events)), label="cut")
    restored = snapshot.decode(snapshot.encode(fold_events(events[:cut])))
    for seq, event in enumerate(events[cut:], cut + 1):
        restored.apply(event)
        restored.last_seq = seq
    full = fold_events(events)
    assert restored == full
    assert restored.summary() == full.summary()
    assert snapshot.unstructure(restored) == snapshot.unstructure(full)


def write_with_sink(ws: Workspace, every: int, epochs: int = 24, run_id: str = RUN) -> None:
    with Recorder(ws.store_path(run_id)) as recorder:
        sink = StoreSink(recorder, run_id, snapshot_every=every)
        for batch in plan_run("heuristic", 0, epochs):
            sink.append(list(batch))


def store_rows(ws: Workspace, sql: str, run_id: str = RUN) -> list[tuple]:
    con = duckdb.connect(str(ws.store_path(run_id)), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def tamper(ws: Workspace, sql: str, params: list, run_id: str = RUN) -> None:
    con = duckdb.connect(str(ws.store_path(run_id)))
    try:
        con.execute(sql, params)
    finally:
        con.close()


def test_the_sink_snapshots_every_n_epochs_at_the_batch_head(tmp_path):
    ws = Workspace(tmp_path)
    write_with_sink(ws, every=5)
    snaps = store_rows(ws, "SELECT s.seq, s.hash = lower(hex(e.hash)), e.type, e.epoch FROM snapshots s JOIN events e USING (run_id, seq)"
                           " ORDER BY s.seq")
    # each at the last event of the batch of epochs 5, 10, 15, 20: that epoch's command or what followed it
    assert [epoch for _, _, _, epoch in snaps] == [5, 10, 15, 20]
    assert all(same for _, same, _, _ in snaps)
    last_of_epoch = store_rows(ws, "SELECT epoch, max(seq) FROM events WHERE epoch IN (5, 10, 15, 20) GROUP BY 1 ORDER BY 1")
    assert [seq for seq, *_ in snaps] == [seq for _, seq in last_of_epoch]
    with ws.reader() as reader:
        full = RunState.fold(reader.read_run(RUN))
        assert snapshot.load_run_state(reader, RUN) == full
        for stored in reader.snapshots(RUN):
            state = snapshot.decode(stored.state)
            assert state == RunState.fold(reader.read_run(RUN)[:stored.seq])


def test_snapshots_change_no_event(tmp_path):
    with_snaps, without = Workspace(tmp_path / "a"), Workspace(tmp_path / "b")
    write_with_sink(with_snaps, every=3)
    write_with_sink(without, every=0)
    assert store_rows(without, "SELECT count(*) FROM snapshots") == [(0,)]
    assert store_rows(with_snaps, "SELECT count(*) FROM snapshots") == [(8,)]
    sql = "SELECT seq, type, payload::VARCHAR, hash FROM events ORDER BY seq"
    assert store_rows(with_snaps, sql) == store_rows(without, sql)


def test_a_retried_append_stores_no_second_snapshot(tmp_path):
    with Recorder(tmp_path / "s.duckdb") as recorder:
        batches = [[Pending(e) for e in batch] for batch in plan_run("static", 0, 2)]
        seq = recorder.append(RUN, batches[0], 0, snapshot='{"format":1}')
        assert recorder.append(RUN, batches[0], 0, snapshot='{"format":1}') == seq  # a retry of a committed batch
        recorder.append(RUN, batches[1], seq)
    rows = store_rows(Workspace(tmp_path), "SELECT seq, hash = (SELECT lower(hex(hash)) FROM events WHERE seq = 1) FROM snapshots", "s")
    assert rows == [(1, True)]


def test_a_learners_stream_gets_no_snapshots(tmp_path):
    with Recorder(tmp_path / "s.duckdb") as recorder:
        sink = StoreSink(recorder, "learner", snapshot_every=1)
        batches = plan_run("static", 0, 3)
        for batch in batches[1:]:  # no RunStarted: nothing to fold
            sink.append(list(batch))
        assert sink.state is None
    assert store_rows(Workspace(tmp_path), "SELECT count(*) FROM snapshots", "s") == [(0,)]


def test_readers_and_replay_work_on_a_store_without_a_snapshots_table(tmp_path):
    ws = Workspace(tmp_path)
    write_with_sink(ws, every=5)
    tamper(ws, "DROP TABLE snapshots", [])  # as a store written before snapshots
    with ws.reader() as reader:
        assert reader.snapshots(RUN) == []
        assert snapshot.load_run_state(reader, RUN) == RunState.fold(reader.read_run(RUN))
    assert invoke("replay", RUN, workspace=ws.root).exit_code == 0


def tampered_state(ws: Workspace, seq: int) -> str:
    (text,) = store_rows(ws, f"SELECT state::VARCHAR FROM snapshots WHERE seq = {seq}")[0]
    data = json.loads(text)
    data["state"]["garden"]["seeds"]["s1-mid"]["stage"] = "CULLED"
    return json.dumps(data)


def test_an_updated_snapshot_state_is_caught_by_replay_only(tmp_path):
    ws = Workspace(tmp_path)
    write_with_sink(ws, every=10)
    (seq,) = store_rows(ws, "SELECT max(seq) FROM snapshots")[0]
    with ws.reader() as reader:
        honest = snapshot.load_run_state(reader, RUN)
    tamper(ws, "UPDATE snapshots SET state = ? WHERE seq = ?", [tampered_state(ws, seq), seq])
    line = one_line_error(invoke("replay", RUN, workspace=ws.root), code=1)
    assert f"log altered: the snapshot at seq {seq} differs from the fold of its prefix (garden.seeds.s1-mid.stage)" in line
    # Its head still matches the log, so a reader starts from it; here the log's tail does not fold onto the
    # changed state (its transitions and the lifecycle's clock disagree with it), so the reader falls back to
    # a fold from zero. A changed state whose tail still folds is caught by replay alone.
    with ws.reader() as reader:
        assert snapshot.load_run_state(reader, RUN) == honest


def test_a_snapshot_whose_hash_does_not_match_is_ignored_by_readers_and_named_by_replay(tmp_path):
    ws = Workspace(tmp_path)
    write_with_sink(ws, every=10)
    (seq,) = store_rows(ws, "SELECT max(seq) FROM snapshots")[0]
    tamper(ws, "UPDATE snapshots SET state = ?, hash = ? WHERE seq = ?", [tampered_state(ws, seq), "00" * 32, seq])
    with ws.reader() as reader:
        matching = [s.seq for s in reader.snapshots(RUN, matching=True)]
        assert seq not in matching and matching  # falls back to the earlier snapshot
        assert snapshot.load_run_state(reader, RUN) == RunState.fold(reader.read_run(RUN))
    line = one_line_error(invoke("replay", RUN, workspace=ws.root), code=1)
    assert f"the snapshot at seq {seq} records another hash" in line


def test_a_snapshot_past_the_end_of_the_log_is_altered(tmp_path):
    ws = Workspace(tmp_path)
    write_with_sink(ws, every=10)
    tamper(ws, "INSERT INTO snapshots SELECT run_id, 9999, hash, state FROM snapshots LIMIT 1", [])
    line = one_line_error(invoke("replay", RUN, workspace=ws.root), code=1)
    assert "the snapshot at seq 9999" in line


def test_an_unreadable_snapshot_is_passed_over_by_readers(tmp_path):
    ws = Workspace(tmp_path)
    write_with_sink(ws, every=10)
    (seq,) = store_rows(ws, "SELECT max(seq) FROM snapshots")[0]
    nonsense = json.dumps({"format": snapshot.FORMAT, "state": {"nonsense": 1}})
    tamper(ws, "UPDATE snapshots SET state = ? WHERE seq = ?", [nonsense, seq])
    with ws.reader() as reader:
        assert snapshot.load_run_state(reader, RUN) == RunState.fold(reader.read_run(RUN))
    assert "the snapshot at seq" in one_line_error(invoke("replay", RUN, workspace=ws.root), code=1)


@pytest.mark.slow  # trains a run
def test_a_real_run_snapshots_every_n_epochs_and_reads_the_same_without_them(tmp_path):
    ws = Workspace(tmp_path / "ws")
    config = RunConfig(controller="heuristic", epochs=5)
    with Recorder(ws.store_path("real")) as recorder:
        execute(config, make_controller("heuristic", 0), StoreSink(recorder, "real", snapshot_every=2))
    assert store_rows(ws, "SELECT count(*) FROM snapshots", run_id="real") == [(2,)]
    assert invoke("replay", "real", workspace=ws.root).exit_code == 0
    bare = Workspace(tmp_path / "bare")
    bare.root.mkdir()
    shutil.copyfile(ws.store_path("real"), bare.store_path("real"))
    tamper(bare, "DELETE FROM snapshots", [], run_id="real")
    answers = []
    for w in (ws, bare):
        with w.reader() as reader:
            answers.append((snapshot.load_run_state(reader, "real").summary(),
                            reader.con.execute("SELECT * EXCLUDE (started) FROM runs").fetchall()))
        answers.append(invoke("runs", "--json", workspace=w.root).stdout)
    assert answers[0] == answers[2] and answers[1] == answers[3]


def test_a_negative_snapshot_interval_is_bad_input_before_anything_is_written(tmp_path):
    line = one_line_error(invoke("run", "--epochs", "1", "--snapshot-every", "-1", workspace=tmp_path / "ws"))
    assert "snapshot_every must be 0" in line
    assert not (tmp_path / "ws").exists()
