"""The append-only writer of one store file.

Guarantees, per file:
* one `position` per event, strictly increasing, assigned by the writer inside the transaction;
* `seq` is 1, 2, 3 … per run with no gaps; an append names the last `seq` it expects
  (optimistic concurrency) and a mismatch raises `AppendConflict` and writes nothing;
* an event whose `event_id` is already stored is not stored again (idempotent retries);
* a batch is one transaction: after a crash the file holds a prefix of whole batches.
No code path updates or deletes an event.
"""

import datetime as dt
import threading
import uuid
from pathlib import Path
from typing import Iterator, Sequence

import attrs
import duckdb
import pyarrow as pa

from esper.errors import AppendConflict, StoreUnavailable
from esper.leyline.events import Event, decode, encode, type_name
from esper.store.schema import BATCH_SCHEMA, INSERT_FROM_BATCH, TABLE_DDL


@attrs.frozen
class Pending:
    """An event about to be appended, with the idempotency key it keeps across retries."""

    event: Event
    event_id: uuid.UUID = attrs.field(factory=uuid.uuid4)


@attrs.frozen
class Recorded:
    """An event as the store holds it."""

    position: int
    run_id: str
    seq: int
    event_id: uuid.UUID
    ts: dt.datetime
    event: Event


class Recorder:
    """Appends events to one DuckDB file, which it holds open (and locked) until `close()`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(self.path))
        except duckdb.Error as exc:
            raise StoreUnavailable(f"cannot open store {self.path}: {_first_line(exc)}") from None
        self._con.execute(TABLE_DDL)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def last_seq(self, run_id: str) -> int:
        row = self._con.execute("SELECT coalesce(max(seq), 0) FROM events WHERE run_id = ?", [run_id]).fetchall()[0]
        return int(row[0])

    def append(self, run_id: str, batch: Sequence[Pending | Event], expected_seq: int) -> int:
        """Append `batch` to `run_id` in one transaction; returns the run's new last `seq`.

        `expected_seq` is the last `seq` the caller has seen for the run (0 for a new run). Events whose
        `event_id` is already stored are skipped; if that leaves nothing, the append is a no-op.
        """
        pending = [p if isinstance(p, Pending) else Pending(p) for p in batch]
        with self._lock:
            self._con.begin()
            try:
                last = self._append_locked(run_id, pending, expected_seq)
                self._con.commit()
            except BaseException:
                self._con.rollback()
                raise
        return last

    def _append_locked(self, run_id: str, pending: list[Pending], expected_seq: int) -> int:
        fresh = self._drop_stored(pending)
        last_seq, last_position = self._con.execute(
            "SELECT (SELECT coalesce(max(seq), 0) FROM events WHERE run_id = $run),"
            " (SELECT coalesce(max(position), 0) FROM events)",
            {"run": run_id},
        ).fetchall()[0]
        if not fresh:
            return int(last_seq)
        if last_seq != expected_seq:
            raise AppendConflict(
                f"run {run_id}: expected last seq {expected_seq}, store has {last_seq}; nothing was written"
            )
        batch = _to_arrow(run_id, fresh, first_seq=last_seq + 1, first_position=last_position + 1)
        self._con.register("batch", batch)
        try:
            self._con.execute(INSERT_FROM_BATCH)
        finally:
            self._con.unregister("batch")
        return int(last_seq) + len(fresh)

    def _drop_stored(self, pending: list[Pending]) -> list[Pending]:
        """Keep the events not stored yet (and the first of any duplicate inside the batch)."""
        ids = pa.table({"event_id": pa.array([str(p.event_id) for p in pending], pa.string())})
        self._con.register("incoming", ids)
        try:
            stored = self._con.execute(
                "SELECT e.event_id::VARCHAR FROM events e SEMI JOIN incoming i ON e.event_id = i.event_id::UUID"
            ).fetchall()
        finally:
            self._con.unregister("incoming")
        seen = {row[0] for row in stored}
        fresh = []
        for p in pending:
            key = str(p.event_id)
            if key not in seen:
                seen.add(key)
                fresh.append(p)
        return fresh

    def read(self, run_id: str, after_seq: int = 0) -> list[Recorded]:
        return list(read_events(self._con, run_id, after_seq))

    def run_ids(self) -> list[str]:
        return [r[0] for r in self._con.execute("SELECT run_id FROM events GROUP BY run_id ORDER BY min(position)").fetchall()]


def read_events(con: duckdb.DuckDBPyConnection, run_id: str, after_seq: int = 0, table: str = "events") -> Iterator[Recorded]:
    """Events of one run in `seq` order, decoded (with upcasting)."""
    rows = con.execute(
        f"SELECT position, run_id, seq, event_id, ts, payload FROM {table} WHERE run_id = ? AND seq > ? ORDER BY seq",
        [run_id, after_seq],
    ).fetchall()
    for position, run, seq, event_id, ts, payload in rows:
        yield Recorded(position, run, seq, event_id, ts, decode(payload))


def _to_arrow(run_id: str, pending: list[Pending], first_seq: int, first_position: int) -> pa.Table:
    n = len(pending)
    events = [p.event for p in pending]
    now = dt.datetime.now(dt.timezone.utc)
    columns = {
        "position": pa.array(range(first_position, first_position + n), pa.int64()),
        "run_id": pa.array([run_id] * n, pa.string()),
        "seq": pa.array(range(first_seq, first_seq + n), pa.int64()),
        "event_id": pa.array([str(p.event_id) for p in pending], pa.string()),
        "ts": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        "type": pa.array([type_name(e) for e in events], pa.string()),
        "epoch": pa.array([getattr(e, "epoch", None) for e in events], pa.int32()),
        "seed_id": pa.array([getattr(e, "seed_id", None) for e in events], pa.string()),
        "slot": pa.array([getattr(e, "slot", None) for e in events], pa.string()),
        "payload": pa.array([encode(e).decode() for e in events], pa.string()),
    }
    return pa.table(columns, schema=BATCH_SCHEMA)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
