"""The Recorder's guarantees (esper.store.recorder): one position per event, seq 1..n per run without
gaps, idempotent appends, optimistic concurrency, and whole batches only, even after a SIGKILL."""

import datetime as dt
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import duckdb
import msgspec
import pytest
from tiers import examples
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from esper.errors import AppendConflict, StoreUnavailable
from esper.leyline import EpochEnded, SeedTransitioned, encode
from esper.store import Pending, Recorder

from strategies import events, pendings

RUNS = ("run-a", "run-b", "run-c")


class RecorderMachine(RuleBasedStateMachine):
    """Random appends against a model of what the store acknowledged.

    The model is, per run, the list of (event_id or None, event) the store said it took, in order, and
    the commit order across runs. Every append either is acknowledged (and then everything fresh in it
    is stored, once) or raises `AppendConflict` (and then nothing is stored).
    """

    def __init__(self):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="esper-store-"))
        self.path = self.dir / "store.duckdb"
        self.recorder = Recorder(self.path)
        self.acked: dict[str, list[tuple[uuid.UUID | None, object]]] = {run: [] for run in RUNS}
        self.commit_order: list[tuple[str, int]] = []
        self.sent: list[Pending] = []
        self.acked_batches: list[tuple[str, list[Pending], int]] = []

    def last(self, run: str) -> int:
        return len(self.acked[run])

    def stored_ids(self) -> set[uuid.UUID]:
        return {eid for log in self.acked.values() for eid, _ in log if eid is not None}

    def acknowledge(self, run: str, fresh: list[tuple[uuid.UUID | None, object]]) -> None:
        for item in fresh:
            self.acked[run].append(item)
            self.commit_order.append((run, len(self.acked[run])))

    @rule(run=st.sampled_from(RUNS), new=st.lists(pendings, max_size=4), data=st.data())
    def append(self, run, new, data):
        """New events, maybe repeated inside the batch, mixed with events sent before (stored or not)."""
        old = data.draw(st.lists(st.sampled_from(self.sent), max_size=3)) if self.sent else []
        repeats = data.draw(st.lists(st.sampled_from(new), max_size=2)) if new else []
        batch = data.draw(st.permutations(new + old + repeats))
        stored = self.stored_ids()
        fresh, seen = [], set(stored)
        for p in batch:
            if p.event_id not in seen:
                seen.add(p.event_id)
                fresh.append((p.event_id, p.event))
        self.sent.extend(new)
        assert self.recorder.append(run, batch, self.last(run)) == self.last(run) + len(fresh)
        self.acknowledge(run, fresh)
        self.acked_batches.append((run, batch, self.last(run) - len(fresh)))

    @rule(run=st.sampled_from(RUNS), batch=st.lists(events, min_size=1, max_size=3))
    def append_bare(self, run, batch):
        """Events without an idempotency key: each gets a fresh one and is stored."""
        assert self.recorder.append(run, batch, self.last(run)) == self.last(run) + len(batch)
        self.acknowledge(run, [(None, e) for e in batch])

    @precondition(lambda self: self.acked_batches)
    @rule(data=st.data())
    def retry(self, data):
        """Re-sending a batch that was acknowledged (as a writer does after losing the reply) is a no-op."""
        run, batch, expected = data.draw(st.sampled_from(self.acked_batches))
        assert self.recorder.append(run, batch, expected) == self.last(run)

    @rule(run=st.sampled_from(RUNS), new=st.lists(pendings, min_size=1, max_size=3), off=st.integers(1, 3), data=st.data())
    def conflict(self, run, new, off, data):
        """A writer that expects another last seq is refused, and nothing of its batch is written."""
        old = data.draw(st.lists(st.sampled_from(self.sent), max_size=2)) if self.sent else []
        wrong = self.last(run) + off if data.draw(st.booleans()) or self.last(run) < off else self.last(run) - off
        with pytest.raises(AppendConflict, match=f"expected last seq {wrong}, store has {self.last(run)}"):
            self.recorder.append(run, new + old, wrong)
        self.sent.extend(new)  # sent, refused: a later batch may carry them again, and then they are new

    @invariant()
    def store_matches_model(self):
        check_store(self.recorder, self.acked, self.commit_order)

    def teardown(self):
        try:
            self.recorder.close()
            with Recorder(self.path) as reopened:  # everything acknowledged survives a reopen
                check_store(reopened, self.acked, self.commit_order)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def sql(recorder: Recorder, query: str) -> list[tuple]:
    """Plain SQL on the recorder's file (a second connection of this process reaches the same database)."""
    with duckdb.connect(str(recorder.path)) as con:
        return con.execute(query).fetchall()


def check_store(recorder: Recorder, acked: dict, commit_order: list[tuple[str, int]]) -> None:
    rows = sql(recorder, "SELECT position, run_id, seq, event_id FROM events ORDER BY position")
    positions = [r[0] for r in rows]
    assert positions == sorted(set(positions)), "position is strictly increasing"
    assert [(r[1], r[2]) for r in rows] == commit_order, "position order is commit order"
    assert len({r[3] for r in rows}) == len(rows), "every event_id is stored once"
    for run, log in acked.items():
        assert recorder.last_seq(run) == len(log)
        read = recorder.read(run)
        assert [r.seq for r in read] == list(range(1, len(log) + 1)), "seq is 1..n without gaps"
        assert [r.event for r in read] == [event for _, event in log], "read-back equals what was appended"
        for r, (eid, _) in zip(read, log):
            assert r.run_id == run
            if eid is not None:
                assert r.event_id == eid


TestRecorder = RecorderMachine.TestCase
TestRecorder.settings = settings(max_examples=examples(30), stateful_step_count=12, deadline=None)


# ---- smaller promises -------------------------------------------------------------------------


def epoch(i: int) -> EpochEnded:
    return EpochEnded(epoch=i, train_loss=1.0 / (i + 1), val_loss=1.0, val_accuracy=0.5, params=100)


def test_a_conflict_names_the_run_and_both_seqs(tmp_path):
    with Recorder(tmp_path / "s.duckdb") as rec:
        rec.append("r1", [epoch(0), epoch(1)], 0)
        with pytest.raises(AppendConflict, match=r"run r1: expected last seq 0, store has 2; nothing was written"):
            rec.append("r1", [epoch(2)], 0)
        assert rec.last_seq("r1") == 2


def test_runs_have_their_own_seq_and_share_position(tmp_path):
    with Recorder(tmp_path / "s.duckdb") as rec:
        assert rec.append("a", [epoch(0)], 0) == 1
        assert rec.append("b", [epoch(0), epoch(1)], 0) == 2
        assert rec.append("a", [epoch(1)], 1) == 2
        assert [(r.position, r.seq) for r in rec.read("a")] == [(1, 1), (4, 2)]
        assert [r.seq for r in rec.read("a", after_seq=1)] == [2]
        assert rec.run_ids() == ["a", "b"]
        assert rec.append("a", [], 0) == 2  # nothing to write is not a conflict


def test_columns_come_from_the_event(tmp_path):
    moved = SeedTransitioned(epoch=3, seed_id="s1-l1", slot="l1", from_stage="TRAINING", to_stage="BLENDING",
                             trigger="advance", evidence={"gradient_health": 0.9})
    with Recorder(tmp_path / "s.duckdb") as rec:
        rec.append("r", [Pending(moved)], 0)
        row = sql(rec, "SELECT type, epoch, seed_id, slot, payload->>'$.to_stage', payload::VARCHAR FROM events")[0]
    assert row == ("SeedTransitioned", 3, "s1-l1", "l1", "BLENDING", encode(moved).decode())


def test_ts_is_the_wall_clock_of_the_append_in_utc(tmp_path):
    before = dt.datetime.now(dt.timezone.utc)
    with Recorder(tmp_path / "s.duckdb") as rec:
        rec.append("r", [epoch(0), epoch(1)], 0)
        stamps = [r.ts for r in rec.read("r")]
    after = dt.datetime.now(dt.timezone.utc)
    assert stamps[0] == stamps[1], "one batch, one ts"
    assert before <= stamps[0] <= after and stamps[0].utcoffset() == dt.timedelta(0)


def test_something_that_is_not_an_event_is_refused_whole(tmp_path):
    class Stranger(msgspec.Struct, tag="Stranger"):
        epoch: int = 0

    with Recorder(tmp_path / "s.duckdb") as rec:
        with pytest.raises(TypeError, match="Stranger is not an esper.leyline event"):
            rec.append("r", [epoch(0), Stranger()], 0)
        assert rec.last_seq("r") == 0


def test_two_recorders_of_one_file_in_one_process_take_turns(tmp_path):
    """DuckDB shares one database per file inside a process; appends through two Recorders must not interleave."""
    path = tmp_path / "s.duckdb"
    with Recorder(path) as one, Recorder(path) as two:
        def writer(rec: Recorder, run: str):
            last = 0
            for i in range(20):
                last = rec.append(run, [epoch(i)] * 5, last)

        threads = [threading.Thread(target=writer, args=(rec, run)) for rec, run in ((one, "x"), (two, "y"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        positions = [r[0] for r in sql(one, "SELECT position FROM events ORDER BY position")]
        assert positions == list(range(1, 201))
        assert [r.seq for r in two.read("x")] == list(range(1, 101))


def test_an_unopenable_file_is_store_unavailable(tmp_path):
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(StoreUnavailable, match="bad.duckdb"):
        Recorder(bad)


# ---- crash --------------------------------------------------------------------------------------

BATCH = 50

WRITER = textwrap.dedent(
    """
    import sys, uuid
    import duckdb
    from esper.leyline import EpochEnded, SeedTelemetry, SeedTransitioned
    from esper.store import Pending, Recorder

    path, size = sys.argv[1], int(sys.argv[2])
    rec = Recorder(path)
    duckdb.connect(path).execute("SET checkpoint_threshold = '256KB'")  # checkpoint often: kills land in them too
    last = {run: rec.last_seq(run) for run in ("a", "b")}
    n = sum(last.values()) // size
    while True:
        run = "ab"[n % 2]
        batch = []
        for i in range(size):
            k = n * size + i
            event = (
                SeedTransitioned(epoch=k, seed_id="s1-l1", slot="l1", from_stage="TRAINING", to_stage="BLENDING",
                                 trigger="advance", evidence={"gradient_health": 0.5})
                if i % 10 == 0 else
                EpochEnded(epoch=k, train_loss=0.5, val_loss=0.6, val_accuracy=0.7, params=k,
                           seeds=[SeedTelemetry(seed_id="s1-l1", alpha=0.5, gradient_health=0.9, seed_loss=0.1)])
            )
            batch.append(Pending(event, event_id=uuid.UUID(int=k + 1)))
        last[run] = rec.append(run, batch, last[run])
        print(n, flush=True)
        n += 1
    """
)


def kill_writer_midway(path: Path, rng: random.Random) -> int:
    """Start the writer, SIGKILL it after it acknowledged a random number of batches; the last batch it acknowledged."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(BATCH)], stdout=subprocess.PIPE, text=True)
    try:
        wait_for = rng.randint(1, 12)
        first = None
        for count, line in enumerate(proc.stdout, 1):
            first = int(line) if first is None else first
            if count >= wait_for:
                break
        assert first is not None, "the writer acknowledged nothing"
        time.sleep(rng.uniform(0, 0.02))
    finally:
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait()
        proc.stdout.close()
    acked = [int(x) for x in rest.split()]
    return max([first + count - 1] + acked)


@pytest.mark.slow  # starts and kills writer processes
def test_a_killed_writer_leaves_whole_batches(tmp_path):
    rng = random.Random()  # the moment of the kill is up to the scheduler anyway
    path = tmp_path / "crash.duckdb"
    last_acked = -1
    for _ in range(2):  # crash, recover, write on, crash again
        last_acked = kill_writer_midway(path, rng)
        with Recorder(path) as rec:
            rows = sql(rec, "SELECT position, event_id FROM events ORDER BY position")
            assert len(rows) % BATCH == 0, "only whole batches"
            assert len(rows) >= (last_acked + 1) * BATCH, "every acknowledged batch is there"
            assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
            assert sorted(r[1].int for r in rows) == list(range(1, len(rows) + 1)), "a prefix of the batches"
            for run in ("a", "b"):
                read = rec.read(run)  # decodes every payload
                assert [r.seq for r in read] == list(range(1, len(read) + 1))
                assert len(read) % BATCH == 0
