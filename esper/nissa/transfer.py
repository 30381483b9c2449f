"""Export runs to a file and import them into another workspace, keeping every column exactly.

Two formats hold the same rows (the store's columns: position, run_id, seq, event_id, ts, type, epoch,
seed_id, slot, payload, hash) and a trailer with each run's head (last seq and its hash), so that a cut
tail shows (esper.store.chain):

* **jsonl**: one JSON object per event, the payload embedded verbatim as JSON (not re-encoded, not a
  string), `ts` as ISO 8601 UTC with microseconds. Readable, and a diff of two runs is a diff of lines.
  This is the format for `replays/` in git. The trailer is the last line, `{"trailer":{"heads":{run: {"seq":
  .., "hash": ..}}}}`.
* **parquet**: the store's Arrow batch schema, zstd-compressed. Several times smaller; for large logs
  (RL datasets) and for tools that read parquet. The trailer is the file's key-value metadata
  `esper.trailer`.

Import validates every row (a malformed file is one `BadInput` line naming the row; a run id Esper would
never write is refused too), checks each run's hash chain against the trailer (`LogAltered`, exit 1, names
the first altered event) and the workspace's own copy of each run it holds (an altered copy is `LogAltered` too,
not a file already imported), skips events whose
`event_id` the workspace already holds (importing a file twice stores nothing twice), checks that each
run's new events continue the workspace's copy of it, and writes the rest into a new store file
`imported-<name>.duckdb` (`-2`, `-3` ... when taken), in one transaction, under a temporary name linked into place
at the end: the workspace sees the whole file or nothing of it, and no file there is ever replaced. The check and
the write hold the workspace's lock (`Workspace.locked`): two imports of one file at once store it once. Event
ids, seqs, timestamps and payloads are kept, and positions too: rows exported from one store go into one file
with their positions; runs exported from several stores (whose positions collide) go into one file per run. Only a
run that was itself spread over several stores gets new positions (1, 2, 3 ... in seq order).
"""

import datetime as dt
import io
import os
import re
import shutil
import tempfile
import sys
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import attrs
import duckdb
import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from esper.errors import BadInput, LogAltered, first_line
from esper.leyline.events import decode
from esper.nissa.files import EXPORT_SUFFIXES, atomic_write
from esper.store import Reader, Recorded, Workspace, chain
from esper.store.schema import COLUMNS, FORMAT_COMMENT, HEADS_DDL, TABLE_DDL, run_id_problem

FORMATS = ("jsonl", "parquet")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_PARQUET_MAGIC = b"PAR1"

# Every column of the store, as Arrow (UUID and JSON travel as strings, ts as UTC microseconds).
EXPORT_SCHEMA = pa.schema([
    ("position", pa.int64()),
    ("run_id", pa.string()),
    ("seq", pa.int64()),
    ("event_id", pa.string()),
    ("ts", pa.timestamp("us", tz="UTC")),
    ("type", pa.string()),
    ("epoch", pa.int32()),
    ("seed_id", pa.string()),
    ("slot", pa.string()),
    ("payload", pa.string()),
    ("hash", pa.string()),
])
assert tuple(EXPORT_SCHEMA.names) == COLUMNS, "the export format holds exactly the store's columns"

_INSERT = """
INSERT INTO events
SELECT position, run_id, seq, event_id::UUID, ts, type, epoch, seed_id, slot, payload::JSON, unhex(hash) FROM import_batch
"""
_FORMAT_KEY = b"esper.format"
_FORMAT_VALUE = b"events/1"


class _Line(msgspec.Struct, forbid_unknown_fields=True):
    """One JSONL row. `payload` is kept as raw bytes: what was stored is what is written back."""

    position: int
    run_id: str
    seq: int
    event_id: str
    ts: str
    type: str
    epoch: int | None
    seed_id: str | None
    slot: str | None
    payload: msgspec.Raw
    hash: str | None = None  # absent in exports written before the hash chain


class _Head(msgspec.Struct, forbid_unknown_fields=True):
    seq: int
    hash: str | None


class _Trailer(msgspec.Struct, forbid_unknown_fields=True):
    heads: dict[str, _Head]


class _TrailerLine(msgspec.Struct, forbid_unknown_fields=True):
    trailer: _Trailer


_trailer_decoder = msgspec.json.Decoder(_TrailerLine)
_trailer_meta_decoder = msgspec.json.Decoder(_Trailer)
_TRAILER_START = b'{"trailer"'


_encoder = msgspec.json.Encoder()
_line_decoder = msgspec.json.Decoder(_Line)


OTHER_FORMATS = {".csv": "a CSV", ".tsv": "a TSV", ".xlsx": "an Excel", ".html": "an HTML", ".duckdb": "a DuckDB",
                 ".db": "a database"}
"""Suffixes of formats an export is not: a file so named would hold jsonl, under a name that says otherwise."""


def file_kind(path: Path) -> str | None:
    """What kind of file `path`'s suffix says it is ("a jsonl", "a CSV", ...); None when it names none."""
    suffix = path.suffix.lower()
    return f"a {EXPORT_SUFFIXES[suffix]}" if suffix in EXPORT_SUFFIXES else OTHER_FORMATS.get(suffix)


def format_for(path: Path, fmt: str | None) -> str:
    """The format asked for, else the one the file name says, else jsonl (the line `esper export` prints names it).
    A format the file name contradicts (`-f jsonl -o runs.parquet`, `-o runs.csv`) is refused: the file would read
    back, but its name would mislead."""
    named = EXPORT_SUFFIXES.get(path.suffix.lower())
    if other := OTHER_FORMATS.get(path.suffix.lower()):
        raise BadInput(f"--out {path} names {other} file, and export writes jsonl or parquet: name it .jsonl or "
                       ".parquet (`esper query \"SQL\" --format csv` writes a table as CSV)")
    if fmt is None:
        return named or "jsonl"
    if fmt not in FORMATS:
        raise BadInput(f"unknown format {fmt!r} (formats: {', '.join(FORMATS)}, and tensorboard for export)")
    if named is not None and named != fmt:
        raise BadInput(f"--format {fmt} but --out {path} names a {named} file: drop --format (the name decides) or "
                       "give a name that agrees")
    return fmt


# ---- export -------------------------------------------------------------------------------------


def _rows(reader: Reader, run_ids: Sequence[str]) -> list[tuple]:
    rows: list[tuple] = []
    for run_id in run_ids:
        rows += reader.con.execute(
            "SELECT position, run_id, seq, event_id::VARCHAR, epoch_us(ts), type, epoch, seed_id, slot,"
            " payload::VARCHAR, hash FROM events WHERE run_id = ? ORDER BY seq",
            [run_id],
        ).fetchall()
    return rows


STDOUT = Path("-")
"""The `path` that sends a jsonl export to standard output (`esper export RUN --out -`)."""


def export_runs(reader: Reader, run_ids: Sequence[str], path: Path, fmt: str) -> int:
    """Write the events of `run_ids` (each in `seq` order) to `path` (`STDOUT`: to standard output, as jsonl, the
    only format `fmt` may then be); returns how many were written. Snapshots of
    run state (the `snapshots` table) are not exported: they are derived from the events, and an imported run
    is folded from zero. A run whose chain or head does not hold is refused (`LogAltered`): the trailer is taken
    from the rows, so an export of a cut log would otherwise look whole."""
    for run_id in run_ids:
        reader.check_run(run_id)
    rows = _rows(reader, run_ids)
    if path == STDOUT:  # as text: the command holds stdout and writes it when it ends (esper.cli)
        lines = io.BytesIO()
        _jsonl(rows, lines)
        sys.stdout.write(lines.getvalue().decode())
    else:
        atomic_write(path, lambda tmp: _write_parquet(rows, tmp) if fmt == "parquet" else _write_jsonl(rows, tmp))
    return len(rows)


def _heads(rows: list[tuple]) -> dict[str, dict]:
    """Each run's last seq and its hash (rows are in seq order per run): the export's trailer."""
    return {row[1]: {"seq": row[2], "hash": row[10]} for row in rows}


def _write_jsonl(rows: list[tuple], path: Path) -> None:
    with open(path, "wb") as f:
        _jsonl(rows, f)


def _jsonl(rows: list[tuple], f: BinaryIO) -> None:
    for position, run_id, seq, event_id, ts_us, type_, epoch, seed_id, slot, payload, hash_ in rows:
        line = _Line(position, run_id, seq, event_id, _iso(ts_us), type_, epoch, seed_id, slot,
                     msgspec.Raw(payload.encode()), hash_)
        f.write(_encoder.encode(line))
        f.write(b"\n")
    f.write(chain.trailer_line(_heads(rows)))
    f.write(b"\n")


def _write_parquet(rows: list[tuple], path: Path) -> None:
    cols = list(zip(*rows)) if rows else [[] for _ in COLUMNS]
    arrays = []
    for name, values in zip(COLUMNS, cols):
        field = EXPORT_SCHEMA.field(name)
        if name == "ts":
            arrays.append(pa.array(values, pa.int64()).cast(field.type))
        else:
            arrays.append(pa.array(values, field.type))
    trailer = msgspec.json.encode({"heads": _heads(rows)})
    metadata = {_FORMAT_KEY: _FORMAT_VALUE, chain.TRAILER_KEY: trailer}
    table = pa.Table.from_arrays(arrays, schema=EXPORT_SCHEMA.with_metadata(metadata))
    pq.write_table(table, path, compression="zstd")


def _iso(ts_us: int) -> str:
    return (_EPOCH + dt.timedelta(microseconds=ts_us)).isoformat(timespec="microseconds")


# ---- reading a file -----------------------------------------------------------------------------


@attrs.frozen
class Row:
    position: int
    run_id: str
    seq: int
    event_id: str
    ts: dt.datetime
    type: str
    epoch: int | None
    seed_id: str | None
    slot: str | None
    payload: str
    hash: str | None = None


Heads = dict[str, tuple[int, str | None]]


def begins_as_export(head: bytes) -> bool:
    """Whether a file's first bytes are those of an export: parquet's magic, or a jsonl line's opening brace."""
    return head.startswith(_PARQUET_MAGIC) or head.lstrip()[:1] == b"{"


def read_file(path: Path, notes: list[str] | None = None) -> list[Row]:
    """Every row of an exported file, validated; `BadInput` (one line, naming the row) if anything is off,
    `LogAltered` if a run's hash chain or the trailer's head of it does not hold. A run written before the
    chain (no hashes) passes with a note added to `notes`."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
    if head != _PARQUET_MAGIC and EXPORT_SUFFIXES.get(path.suffix.lower()) == "parquet":
        raise BadInput(f"{path} is named as parquet but is not a parquet file")
    rows, trailer = _read_parquet(path) if head == _PARQUET_MAGIC else _read_jsonl(path)
    if not rows:
        raise BadInput(f"{path}: no events in this file")
    _check_ids(path, rows)
    _check_chains(path, rows, trailer, notes if notes is not None else [])  # a sealed run's gap is an alteration
    _check_seqs(path, rows)
    return rows


def _check_chains(path: Path, rows: list[Row], trailer: Heads | None, notes: list[str]) -> None:
    by_run: dict[str, list[Row]] = {}
    for r in rows:
        by_run.setdefault(r.run_id, []).append(r)
    for run, mine in by_run.items():
        mine.sort(key=lambda r: r.seq)
        # the chain covers each payload's bytes as exported: a line rewritten to the same values is altered too
        verifier = chain.Verifier(run, where=f", {path.name} (its lines are checked as exported, byte for byte)")
        for r in mine:
            verifier.feed(r.seq, r.type, r.payload, r.hash, (r.epoch, r.seed_id, r.slot))
        sealed = bool(verifier.sealed)
        if trailer is None and sealed:
            raise LogAltered(f"log altered: {path.name} has no trailer with the head of run {run}; the log ends at "
                             f"seq {mine[-1].seq} (a file cut short, or its tail removed: export the run again)")
        if trailer is not None:
            verifier.end(trailer.get(run), holder="the export's trailer")
        if not sealed:
            notes.append(chain.unsealed_note(run))
    for run, (seq, _) in sorted((trailer or {}).items()):
        if run not in by_run:
            raise LogAltered(f"log altered: the export's trailer says run {run} ends at seq {seq}, the file holds "
                             f"none of its events ({path.name})")


def _read_jsonl(path: Path) -> tuple[list[Row], Heads | None]:
    rows = []
    trailer: Heads | None = None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            if raw.lstrip().startswith(_TRAILER_START):
                if trailer is not None:
                    raise BadInput(f"{where}: a second trailer")
                try:
                    heads = _trailer_decoder.decode(raw).trailer.heads
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise BadInput(f"{where}: not an export's trailer ({exc})") from None
                trailer = {run: (h.seq, h.hash) for run, h in heads.items()}
                continue
            try:
                line = _line_decoder.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                first = not rows and trailer is None  # most likely some other file altogether
                raise BadInput(f"{where}: not an exported event ({exc})"
                               + ("; is it a file esper export wrote?" if first else "")) from None
            ts = _parse_ts(line.ts, where)
            if trailer is not None:
                raise BadInput(f"{where}: an event after the trailer")
            rows.append(_checked(where, line.position, line.run_id, line.seq, line.event_id, ts, line.type,
                                 line.epoch, line.seed_id, line.slot, bytes(line.payload).decode("utf-8"), line.hash))
    return rows, trailer


def _read_parquet(path: Path) -> tuple[list[Row], Heads | None]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise BadInput(f"{path}: unreadable parquet ({first_line(exc)})") from None
    trailer = None
    text = (table.schema.metadata or {}).get(chain.TRAILER_KEY)
    if text is not None:
        try:
            trailer = {run: (h.seq, h.hash) for run, h in _trailer_meta_decoder.decode(text).heads.items()}
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BadInput(f"{path}: not an export's trailer ({exc})") from None
    if "hash" not in table.column_names:  # written before the hash chain
        table = table.append_column("hash", pa.nulls(table.num_rows, pa.string()))
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise BadInput(f"{path}: not an event export (missing columns: {', '.join(missing)})")
    try:
        table = table.select(list(COLUMNS)).cast(EXPORT_SCHEMA)
    except (pa.ArrowException, ValueError) as exc:
        raise BadInput(f"{path}: columns of the wrong type ({first_line(exc)})") from None
    rows = []
    for i, r in enumerate(table.to_pylist(), start=1):
        rows.append(_checked(f"{path}: row {i}", r["position"], r["run_id"], r["seq"], r["event_id"], r["ts"],
                             r["type"], r["epoch"], r["seed_id"], r["slot"], r["payload"], r["hash"]))
    return rows, trailer


def _checked(where: str, position: Any, run_id: Any, seq: Any, event_id: Any, ts: Any, type_: Any, epoch: Any,
             seed_id: Any, slot: Any, payload: Any, hash_: Any = None) -> Row:
    for name, value in (("position", position), ("seq", seq), ("run_id", run_id), ("event_id", event_id),
                        ("ts", ts), ("type", type_), ("payload", payload)):
        if value is None:
            raise BadInput(f"{where}: {name} is missing")
    if why := run_id_problem(run_id):
        raise BadInput(f"{where}: run id {run_id[:60]!r}{'...' if len(run_id) > 60 else ''} is not one Esper "
                       f"writes: {why}")
    if seq < 1 or position < 1:
        raise BadInput(f"{where}: seq and position start at 1 (seq {seq}, position {position})")
    try:
        canonical = str(uuid.UUID(event_id))
    except ValueError:
        raise BadInput(f"{where}: event_id {event_id!r} is not a UUID") from None
    if canonical != event_id:
        raise BadInput(f"{where}: event_id {event_id!r} is not in canonical form ({canonical})")
    if ts.tzinfo is None:
        raise BadInput(f"{where}: ts has no time zone")
    try:
        decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadInput(f"{where}: payload is not an Esper event ({exc})") from None
    # Columns that disagree with the payload are an alteration, which the run's chain check names (`_check_chains`).
    return Row(position, run_id, seq, event_id, ts, type_, epoch, seed_id, slot, payload, hash_)


def _parse_ts(text: str, where: str) -> dt.datetime:
    try:
        ts = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(f"{where}: ts {text!r} is not an ISO 8601 time") from None
    if ts.tzinfo is None:
        raise BadInput(f"{where}: ts {text!r} has no time zone")
    return ts


def _check_ids(path: Path, rows: list[Row]) -> None:
    """Inside the file: no event twice."""
    ids: set[str] = set()
    for r in rows:
        if r.event_id in ids:
            raise BadInput(f"{path}: event {r.event_id} appears twice")
        ids.add(r.event_id)


def _check_seqs(path: Path, rows: list[Row]) -> None:
    """Each run's seqs without duplicates or gaps (what the chain already proved of a sealed run; an unsealed one
    is held to it here)."""
    seqs: dict[str, list[int]] = {}
    for r in rows:
        seqs.setdefault(r.run_id, []).append(r.seq)
    for run, values in seqs.items():
        values = sorted(values)
        expected = list(range(values[0], values[0] + len(values)))
        if values != expected:
            raise BadInput(f"{path}: run {run} has gaps or repeats in its seqs ({values[0]}..{values[-1]}, {len(values)} events)")


# ---- import -------------------------------------------------------------------------------------


@attrs.frozen
class ImportResult:
    stores: list[Path]
    """The new store files (none when everything was already stored)."""
    imported: int
    skipped: int
    runs: list[str]
    notes: list[str] = attrs.field(factory=list)
    """Runs written before the chain, imported unsealed."""


def import_file(workspace: Workspace, path: Path) -> ImportResult:
    """Import an exported file into `workspace` (created if missing). Idempotent by `event_id`."""
    if path.is_dir():
        raise BadInput(f"{path} is a folder: import takes one file written by `esper export` (jsonl or parquet)")
    if not path.is_file():
        raise BadInput(f"no file {path}")
    notes: list[str] = []
    rows = read_file(path, notes)
    if workspace.root.exists() and not workspace.root.is_dir():
        raise BadInput(f"workspace {workspace.root} is not a folder")
    runs = list(dict.fromkeys(r.run_id for r in rows))
    with workspace.locked():  # another import between the check and the write would store the same events again
        with workspace.reader() as reader:
            _check_stored(reader, runs)
            fresh = _fresh_rows(reader, rows, path)
        if not fresh:
            return ImportResult([], 0, len(rows), runs, notes)
        stores = _write_stores(workspace, path, store_groups(fresh))
    return ImportResult(stores, len(fresh), len(rows) - len(fresh), runs, notes)


def _check_stored(reader: Reader, runs: list[str]) -> None:
    """Check the workspace's own copy of each of `runs` it holds (their chains, in one pass). Events are matched by
    id and hash, which an edit of a stored payload leaves as they were: without this an altered copy would read as
    the whole file already imported, and a tail would be added to it."""
    if altered := reader.altered_runs(runs):
        run = min(altered)  # the first by name, whichever the pass met first
        held_in = ", ".join(reader.files_of(run))
        raise LogAltered(f"the workspace's copy of run {run} ({held_in}) is altered, nothing imported: {altered[run]}")


def _fresh_rows(reader: Reader, rows: list[Row], path: Path) -> list[Row]:
    """The rows the workspace does not hold yet; each run must continue where the workspace's copy ends."""
    stored = {
        event_id: (run_id, seq, hash_)
        for event_id, run_id, seq, hash_ in reader.con.execute(
            "SELECT event_id::VARCHAR, run_id, seq, hash FROM events"
            " WHERE event_id::VARCHAR IN (SELECT unnest(?::VARCHAR[]))",
            [[r.event_id for r in rows]],
        ).fetchall()
    }
    fresh = []
    for r in rows:
        if r.event_id in stored:
            run, seq, hash_ = stored[r.event_id]
            if (run, seq) != (r.run_id, r.seq):
                raise BadInput(f"{path}: event {r.event_id} is stored as run {run} seq {seq}, the file says "
                               f"run {r.run_id} seq {r.seq}")
            if hash_ != r.hash:
                raise LogAltered(f"log altered: {path} run {run} seq {seq} is not the workspace's copy of that "
                                 "event (another hash); one of the two logs was altered")
            continue
        fresh.append(r)
    runs = sorted({r.run_id for r in fresh})
    heads = dict(reader.con.execute(
        "SELECT run_id, max(seq) FROM events WHERE run_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY run_id", [runs]
    ).fetchall()) if runs else {}
    for run in runs:
        first = min(r.seq for r in fresh if r.run_id == run)
        head = int(heads.get(run, 0))
        if first != head + 1:
            held = f"holds run {run} up to seq {head}" if head else f"has no events of run {run}"
            raise BadInput(f"{path}: the workspace {held}, the file's new events of it start at seq {first}; "
                           "they would not continue the run (a different run with the same id?)")
    return fresh


def store_groups(rows: list[Row]) -> list[tuple[str, list[Row]]]:
    """Which rows go into which new store file, in store order, keeping positions wherever they can be kept.

    All rows go into one file when their positions can be one store's order (unique, and increasing with
    `seq` within each run), as they are when the export came from one store. Otherwise each run gets its
    own file (runs exported from several stores), and a run whose own positions cannot be an order (it was
    spread over several stores) is renumbered 1, 2, 3 ... in `seq` order.
    """
    if _orderable(rows):
        return [("", sorted(rows, key=lambda r: r.position))]
    groups = []
    for run in dict.fromkeys(r.run_id for r in rows):
        mine = sorted((r for r in rows if r.run_id == run), key=lambda r: r.seq)
        if not _orderable(mine):
            mine = [attrs.evolve(r, position=i) for i, r in enumerate(mine, start=1)]
        groups.append((run, mine))
    return groups


def _orderable(rows: list[Row]) -> bool:
    if len({r.position for r in rows}) != len(rows):
        return False
    last_seq: dict[str, int] = {}
    for r in sorted(rows, key=lambda r: r.position):
        if r.seq <= last_seq.get(r.run_id, 0):
            return False
        last_seq[r.run_id] = r.seq
    return True


def _write_stores(workspace: Workspace, source: Path, groups: list[tuple[str, list[Row]]]) -> list[Path]:
    """Each group into a new store file: written under a temporary name, then linked into place (`_place`)."""
    root = workspace.root
    stem = _safe(source.name.split(".")[0])[:NAME_PART_CHARS] or "events"
    written: list[tuple[Path, str]] = []
    try:
        for suffix, rows in groups:
            run = f"-{_safe(suffix)[:NAME_PART_CHARS]}" if suffix else ""
            tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=root)) / "store.tmp"
            written.append((tmp, f"imported-{stem}{run}"))
            _write_store_file(tmp, rows)
        return [_place(workspace, tmp, name) for tmp, name in written]
    except (OSError, duckdb.Error) as exc:
        raise BadInput(f"cannot write a store into {root}: {first_line(exc)}") from None
    finally:
        for tmp, _ in written:
            shutil.rmtree(tmp.parent, ignore_errors=True)


NAME_PART_CHARS = 100
"""How much of the imported file's name, and of a run id, an imported store's name keeps: a file name has at most
255 bytes."""


def _place(workspace: Workspace, tmp: Path, name: str) -> Path:
    """Give the written store `tmp` the first free store name of `name`, `name-2`, `name-3` ... By a hard link, not
    a rename: a rename replaces a file made under that name since it was seen free (a store another process wrote),
    and a link never does. The temporary name goes with its folder."""
    target, n = workspace.store_path(name), 2
    while True:
        try:
            os.link(tmp, target)
            return target
        except FileExistsError:
            target, n = workspace.store_path(f"{name}-{n}"), n + 1


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")


def _write_store_file(path: Path, rows: list[Row]) -> None:
    batch = pa.table({
        "position": pa.array([r.position for r in rows], pa.int64()),
        "run_id": pa.array([r.run_id for r in rows], pa.string()),
        "seq": pa.array([r.seq for r in rows], pa.int64()),
        "event_id": pa.array([r.event_id for r in rows], pa.string()),
        "ts": pa.array([r.ts for r in rows], pa.timestamp("us", tz="UTC")),
        "type": pa.array([r.type for r in rows], pa.string()),
        "epoch": pa.array([r.epoch for r in rows], pa.int32()),
        "seed_id": pa.array([r.seed_id for r in rows], pa.string()),
        "slot": pa.array([r.slot for r in rows], pa.string()),
        "payload": pa.array([r.payload for r in rows], pa.string()),
        "hash": pa.array([r.hash for r in rows], pa.string()),
    }, schema=EXPORT_SCHEMA)
    heads = {r.run_id: r for r in sorted(rows, key=lambda r: r.seq)}  # each run's last event in this file
    con = duckdb.connect(str(path))
    try:
        con.execute(TABLE_DDL)
        con.execute(f"COMMENT ON TABLE events IS '{FORMAT_COMMENT}'")
        con.execute(HEADS_DDL)
        con.begin()
        con.register("import_batch", batch)
        con.execute(_INSERT)
        con.unregister("import_batch")
        for run, r in heads.items():
            con.execute("INSERT INTO heads VALUES (?, ?, ?)", [run, r.seq, r.hash])
        con.commit()
        con.execute("CHECKPOINT")
    finally:
        con.close()


def recorded_runs(path: Path, notes: list[str] | None = None) -> dict[str, list[Recorded]]:
    """The runs of an exported file as the store would hand them out: run id → events in `seq` order.
    Raises `LogAltered` if a run's chain does not hold; notes a run written before the chain."""
    runs: dict[str, list[Recorded]] = {}
    for row in sorted(read_file(path, notes), key=lambda r: (r.run_id, r.seq)):
        runs.setdefault(row.run_id, []).append(
            Recorded(row.position, row.run_id, row.seq, uuid.UUID(row.event_id), row.ts, decode(row.payload))
        )
    return runs
