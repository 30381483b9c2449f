"""The append-only writer of one store file.

Guarantees, per file:
* one `position` per event, strictly increasing, assigned by the writer inside the transaction;
* `seq` is 1, 2, 3 … per run with no gaps; an append names the last `seq` it expects
  (optimistic concurrency) and a mismatch raises `AppendConflict` and writes nothing;
* an event whose `event_id` is already stored is not stored again (idempotent retries);
* a batch is one transaction: after a crash the file holds a prefix of whole batches;
* each event's `hash` chains it to the one before it in its run (esper.store.chain), and the `heads` table
  holds every run's last `seq` and hash, both written in the append's transaction;
* an append may carry a snapshot of the run's state (opaque JSON), stored in the `snapshots` table at the
  batch's last `seq` and hash, in the same transaction (DESIGN.md, Events).
No code path updates or deletes an event.

Appends go through Arrow (one INSERT per batch); DuckDB's row-at-a-time `executemany` is ~500x slower.
"""

import contextlib
import datetime as dt
import re
import signal
import threading
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import attrs
import duckdb
import msgspec
import numpy as np
import pyarrow as pa

from esper.errors import AppendConflict, BadInput, StoreUnavailable, first_line
from esper.leyline.events import EVENT_TYPES, Event, decode
from esper.store import chain, failures
from esper.store.schema import (
    BATCH_SCHEMA,
    FORMAT_COMMENT,
    HEADS_DDL,
    TEXT_HASH_BATCH_SCHEMA,
    INSERT_FROM_BATCH,
    PAYLOAD_TYPE,
    ADD_HEAD,
    MOVE_HEAD,
    SNAPSHOTS_DDL,
    ADD_SNAPSHOT,
    TABLE_DDL,
    UPGRADE_DDL,
    format_comment,
    format_problem,
    hash_as_text,
    stored_hash_type,
    run_id_problem,
)


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


class StoreHeld(StoreUnavailable):
    """Another process holds the store file open for writing (DuckDB's lock on it, or the live mark a reader sees):
    a second writer would be refused every append, so it is refused at the start. `holder`: the process, as DuckDB
    names it (empty if it does not)."""

    def __init__(self, path: Path, holder: str = ""):
        super().__init__(path, holder)  # all in `args`: it crosses process boundaries by pickle
        self.path, self.holder = Path(path), holder

    def __str__(self) -> str:
        return f"store {self.path.name} is being written by a live process{self.holder}: stop it first"


_HOLDER = re.compile(r"\(PID (\d+)\)")
"""Where DuckDB's lock error names the process holding the lock (`Conflicting lock is held in ... (PID 123)`)."""


class Recorder:
    """Appends events to one DuckDB file, which it holds open (and locked) until `close()`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._con = duckdb.connect(str(self.path))
        except (duckdb.Error, OSError) as exc:
            if isinstance(exc, duckdb.Error) and "could not set lock" in str(exc).lower():
                pid = _HOLDER.search(str(exc))
                raise StoreHeld(self.path, f" (PID {pid.group(1)})" if pid else "") from None
            raise StoreUnavailable(f"cannot open store {self.path}: {first_line(exc)}") from None
        try:
            with failures.refusals(self.path):
                self._con.execute(TABLE_DDL)
                self._con.execute(UPGRADE_DDL)  # a store written before the hash chain
                self._con.execute(HEADS_DDL)
                self._con.execute(SNAPSHOTS_DDL)
                database = self._con.execute("SELECT current_database()").fetchone()[0]
                self._hash_type = stored_hash_type(self._con, database)
                """`BLOB`, or `VARCHAR` in a store written when hashes were kept as hex: appends keep its way."""
                self._mark_format(format_comment(self._con, database))
        except BaseException:
            self._con.close()
            raise
        self._opened = None if str(path) == ":memory:" else (self.path.absolute(), failures.identity(self.path))
        """Where the file was opened and which file it was: a removed one is seen before the next append."""
        # Checkpoint less often than DuckDB's 16MB default: each checkpoint recompresses the table's last,
        # partly filled row group, and at 10,000-event batches 64MB appends ~25% faster overall.
        self._con.execute("SET checkpoint_threshold = '64MB'")
        self._state = _file_state(self.path)
        self._lock = self._state.lock
        self._pending_heads: tuple[str, int, int, bytes | None] | None = None
        self._seal = True  # benchmarks/store.py turns it off to measure what the chain costs; nothing else does

    def _mark_format(self, comment: str | None) -> None:
        """Refuse a store a newer Esper wrote; mark one that keeps hashes as bytes with this Esper's format."""
        if problem := format_problem(comment):
            raise BadInput(f"store {self.path.name} was {problem}")
        if self._hash_type == "BLOB" and comment != FORMAT_COMMENT:
            self._con.execute(f"COMMENT ON TABLE events IS '{FORMAT_COMMENT}'")

    def close(self) -> None:
        with self._lock:
            self._state.heads = _Heads()  # another process may write the file once we let it go
        self._con.close()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def last_seq(self, run_id: str) -> int:
        with self._lock:
            row = self._con.execute("SELECT coalesce(max(seq), 0) FROM events WHERE run_id = ?", [run_id]).fetchall()
        return int(row[0][0])

    def append(self, run_id: str, batch: Sequence[Pending | Event], expected_seq: int,
               snapshot: str | None = None) -> int:
        """Append `batch` to `run_id` in one transaction; returns the run's new last `seq`.

        `expected_seq` is the last `seq` the caller has seen for the run (0 for a new run). A `Pending`
        whose `event_id` is already stored is skipped; if that leaves nothing, the append is a no-op
        (a retry of a batch that did commit) and `snapshot` is not stored either. A bare event gets a fresh
        `event_id` from the store. `snapshot`: the run's state after the batch, as JSON text the store does not
        read, stored with the batch's last `seq` and hash.

        A write the operating system refuses (full disk, read-only filesystem, the file removed under us)
        raises `StoreFailed` and writes nothing (`esper.store.failures`).
        """
        with failures.refusals(self.path):
            return self._append(run_id, batch, expected_seq, snapshot)

    def _append(self, run_id: str, batch: Sequence[Pending | Event], expected_seq: int, snapshot: str | None) -> int:
        with self._lock:
            if self._opened is not None:
                failures.check_in_place(self._con, *self._opened)
            self._pending_heads = None
            self._con.begin()
            try:
                last = self._append_locked(run_id, list(batch), expected_seq, snapshot)
                self._con.commit()
            except BaseException:
                with contextlib.suppress(duckdb.TransactionException):  # a failed commit has ended it already
                    self._con.rollback()
                raise
            if self._pending_heads is not None:  # committed: move the cached heads on
                run, seq, position, last_hash = self._pending_heads
                self._state.heads.seq[run] = seq
                self._state.heads.hash[run] = last_hash
                self._state.heads.position = position
        return last

    def _append_locked(self, run_id: str, batch: list[Pending | Event], expected_seq: int,
                       snapshot: str | None = None) -> int:
        fresh = self._drop_stored(batch)
        last_seq, last_position, last_hash = self._heads(run_id)
        if not fresh:
            return int(last_seq)
        if last_seq != expected_seq:
            raise AppendConflict(
                f"run {run_id}: expected last seq {expected_seq}, store has {last_seq}; nothing was written"
            )
        if last_seq == 0 and (why := run_id_problem(run_id)):
            raise BadInput(f"run id {run_id!r} cannot be stored: {why}")
        table, new_hash = _to_arrow(fresh, first_seq=last_seq + 1, first_position=last_position + 1,
                                    prev_hash=last_hash if self._seal else None, as_bytes=self._hash_type == "BLOB")
        self._con.register("batch", table)
        try:
            self._con.execute(INSERT_FROM_BATCH, {"run_id": run_id, "ts": dt.datetime.now(dt.timezone.utc)}).fetchall()
        finally:
            self._con.unregister("batch")
        new_seq = int(last_seq) + len(fresh)
        head_hash = None if new_hash is None else new_hash.hex()
        if not self._con.execute(MOVE_HEAD, [new_seq, head_hash, run_id]).fetchone()[0]:
            self._con.execute(ADD_HEAD, [run_id, new_seq, head_hash])
        if snapshot is not None:
            self._con.execute(ADD_SNAPSHOT, [run_id, new_seq, head_hash, snapshot])
        self._pending_heads = (run_id, new_seq, int(last_position) + len(fresh), new_hash)
        return new_seq

    def _heads(self, run_id: str) -> tuple[int, int, bytes | None]:
        """The run's last `seq` and hash (raw; None for a run written before the chain, which stays
        unsealed) and the file's last `position`. Only this process can write the file (DuckDB locks it)
        and its writers take turns under the file lock, so after one query the values are kept in memory
        and moved on by each commit."""
        heads = self._state.heads
        if run_id not in heads.seq:
            row = self._con.execute(f"SELECT seq, {hash_as_text(self._hash_type)} FROM events WHERE run_id = ?"
                                    " ORDER BY seq DESC LIMIT 1", [run_id]).fetchall()
            if not row:
                heads.seq[run_id], heads.hash[run_id] = 0, chain.genesis(run_id)
            else:
                heads.seq[run_id] = row[0][0]
                heads.hash[run_id] = None if row[0][1] is None else bytes.fromhex(row[0][1])
        if heads.position is None:
            heads.position = self._con.execute("SELECT coalesce(max(position), 0) FROM events").fetchall()[0][0]
        return heads.seq[run_id], heads.position, heads.hash[run_id]

    def _drop_stored(self, batch: list[Pending | Event]) -> list[Pending | Event]:
        """Keep what is not stored yet: bare events, and each `Pending` whose id is new (its first copy)."""
        keys = [item.event_id for item in batch if isinstance(item, Pending)]
        if not keys:
            return batch
        self._con.register("incoming", pa.table({"event_id": pa.array([k.hex for k in keys], pa.string())}))
        try:
            stored = self._con.execute(
                "SELECT e.event_id FROM events e SEMI JOIN incoming i ON e.event_id = i.event_id::UUID"
            ).fetchall()
        finally:
            self._con.unregister("incoming")
        seen = {row[0] for row in stored}
        fresh = []
        for item in batch:
            if isinstance(item, Pending):
                if item.event_id in seen:
                    continue
                seen.add(item.event_id)
            fresh.append(item)
        return fresh

    def read(self, run_id: str, after_seq: int = 0) -> list[Recorded]:
        with self._lock:  # one connection, one statement at a time: not in the middle of another thread's append
            return list(read_events(self._con, run_id, after_seq))

    def run_ids(self) -> list[str]:
        with self._lock:
            rows = self._con.execute("SELECT run_id FROM events GROUP BY run_id ORDER BY min(position)").fetchall()
        return [r[0] for r in rows]


@attrs.define
class _Heads:
    seq: dict[str, int] = attrs.Factory(dict)
    hash: dict[str, bytes | None] = attrs.Factory(dict)
    position: int | None = None


@attrs.define
class _FileState:
    lock: threading.Lock = attrs.Factory(threading.Lock)
    heads: _Heads = attrs.Factory(_Heads)


_FILE_STATES: dict[Path, _FileState] = {}
_FILE_STATES_GUARD = threading.Lock()


def _file_state(path: Path) -> _FileState:
    """One lock (and one cache of last seq/position) per file in this process. DuckDB shares one database
    between every connection of a process to the same file, and two concurrent transactions that both
    append do not conflict there, so two `Recorder`s of one file must take turns or they could hand out
    the same `seq` and `position`."""
    if str(path) == ":memory:":  # every in-memory connection is a database of its own
        return _FileState()
    with _FILE_STATES_GUARD:
        return _FILE_STATES.setdefault(path.resolve(), _FileState())


def read_events(con: duckdb.DuckDBPyConnection, run_id: str, after_seq: int = 0, table: str = "events") -> Iterator[Recorded]:
    """Events of one run in `seq` order, decoded (with upcasting)."""
    rows = con.execute(
        f"SELECT position, seq, event_id, epoch_us(ts), payload FROM {table} WHERE run_id = ? AND seq > ? ORDER BY seq",
        [run_id, after_seq],
    ).fetchall()
    return decode_rows(run_id, rows)


def decode_rows(run_id: str, rows: Iterable[tuple]) -> Iterator[Recorded]:
    """`Recorded` events of one run from rows that begin (position, seq, event_id, epoch_us(ts), payload)."""
    stamps: dict[int, dt.datetime] = {}  # a batch shares one ts: build each datetime once, not once per row
    for position, seq, event_id, ts_us, payload, *_ in rows:
        ts = stamps.get(ts_us)
        if ts is None:
            ts = stamps[ts_us] = _EPOCH + dt.timedelta(microseconds=ts_us)
        yield Recorded(position, run_id, seq, event_id, ts, decode(payload))


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _to_arrow(batch: list[Pending | Event], first_seq: int, first_position: int,
              prev_hash: bytes | None, as_bytes: bool = True) -> tuple[pa.Table, bytes | None]:
    """The batch as Arrow columns, built with one pass per column and no per-row Arrow calls, and the hash of
    its last event. `prev_hash` is the run's last hash (its genesis for a new run); None leaves the hashes
    NULL (a run written before the chain stays unsealed). The hashes are bytes, or hex text (`as_bytes`
    False) for a store that keeps them so."""
    n = len(batch)
    events = [item.event if isinstance(item, Pending) else item for item in batch]
    tags = [_TAGS.get(type(e)) for e in events]
    if None in tags:
        stranger = events[tags.index(None)]
        raise TypeError(f"{type(stranger).__name__} is not an esper.leyline event: it could not be read back")
    columns = {
        "position": pa.array(np.arange(first_position, first_position + n, dtype=np.int64)),
        "seq": pa.array(np.arange(first_seq, first_seq + n, dtype=np.int64)),
        "event_id": pa.array([item.event_id.hex if isinstance(item, Pending) else None for item in batch], pa.string()),
        "type": pa.array(tags, pa.string()),
        "epoch": pa.array([e.epoch for e in events], pa.int32()),
        "seed_id": pa.array([getattr(e, "seed_id", None) for e in events], pa.string()),
        "slot": pa.array([getattr(e, "slot", None) for e in events], pa.string()),
    }
    payloads, buffer, offsets = _payloads(events)
    columns["payload"] = payloads
    schema = BATCH_SCHEMA if as_bytes else TEXT_HASH_BATCH_SCHEMA
    if prev_hash is None:
        columns["hash"], last_hash = pa.nulls(n, schema.field("hash").type), None
    else:
        links = chain.link_buffer(prev_hash, first_seq, buffer, offsets[:-1], offsets[1:])
        last_hash = links[-1]
        joined = b"".join(links)
        if as_bytes:
            columns["hash"] = pa.BinaryArray.from_buffers(
                pa.binary(), n, [None, pa.py_buffer(np.arange(0, 32 * (n + 1), 32, dtype=np.int32)), pa.py_buffer(joined)])
        else:
            columns["hash"] = pa.StringArray.from_buffers(
                n, pa.py_buffer(np.arange(0, 64 * (n + 1), 64, dtype=np.int32)), pa.py_buffer(joined.hex().encode()))
    return pa.table(columns, schema=schema), last_hash


_encoder = msgspec.json.Encoder()
_TAGS = {cls: cls.__struct_config__.tag for cls in EVENT_TYPES}


def _payloads(events: list[Event]) -> tuple[pa.Array, bytes, np.ndarray]:
    """Every event's JSON (exactly what `encode` gives) as one Arrow column of `PAYLOAD_TYPE`, with the one
    buffer holding them back to back and where each starts (offsets[i]) and ends (offsets[i + 1]).

    One `encode_lines` call writes them all newline-separated (a newline inside JSON is always
    escaped, so each newline ends one event); dropping the newlines leaves the events back to back,
    and the newline positions give where each one ends. Twice as fast as one `encode` per event.
    """
    lines = _encoder.encode_lines(events)
    newlines = np.flatnonzero(np.frombuffer(lines, np.uint8) == ord("\n"))
    offsets = np.zeros(len(events) + 1, np.int32)
    offsets[1:] = newlines - np.arange(len(events))
    buffer = lines.replace(b"\n", b"")
    strings = pa.StringArray.from_buffers(len(events), pa.py_buffer(offsets), pa.py_buffer(buffer))
    array = strings if PAYLOAD_TYPE == pa.string() else pa.ExtensionArray.from_storage(PAYLOAD_TYPE, strings)
    return array, buffer, offsets


@contextlib.contextmanager
def new_store(path: Path) -> Iterator["Recorder"]:
    """A Recorder of the store file at `path` for the block; if the block fails before the first append (a job
    stopped, or refused, while it prepared), the file is removed again: no empty store is left in the workspace.

    The file is made, and removed, with Ctrl-C and SIGTERM held (`signals_held`), the stop acted on once the step is
    whole: a stop landing while DuckDB writes the file's header and tables, or a second stop (Ctrl-C pressed twice)
    landing while the first one's cleanup closes and removes it, would otherwise leave a file with no events, or no
    tables at all, that every reader skips and `--resume` cannot read."""
    recorder = None
    try:
        with signals_held():
            recorder = Recorder(path)
        yield recorder
    except BaseException:
        with signals_held():
            if recorder is not None:
                recorder.close()
            remove_if_empty(path)
        raise
    recorder.close()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back while the block runs and acted on after it, as they would have been: for a step
    that must happen whole. Off the main thread, where no signal handler runs, the block just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held and callable(handler := previous[held[0]]):  # one ignored (SIG_IGN) stays ignored
            handler(held[0], None)
        elif held and handler == signal.SIG_DFL:  # no handler of Python's (ppo_job called from a script): the default
            signal.raise_signal(held[0])


def remove_if_empty(path: Path) -> None:
    """Remove the store file at `path`, and its write-ahead log, if it holds no event: what a writer stopped before
    its first append leaves behind (a job interrupted while it prepared). Call it once the file's Recorder is
    closed; a file that cannot be opened (missing, or held by a writer) is left alone, except one of no bytes at all
    (its creation failed, on a full disk say)."""
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0 and not path.with_name(path.name + ".wal").exists():
            path.unlink()
            return
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return
    try:
        tables = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        # No table at all: stopped while the file was being created. Tables of its own: not ours to remove.
        empty = not tables or ("events" in tables and not con.execute("SELECT count(*) FROM events").fetchall()[0][0])
    finally:
        con.close()
    if empty:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".wal").unlink(missing_ok=True)
