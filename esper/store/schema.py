"""The one table of a store file. Users' SQL relies on these column names (DESIGN.md, Events)."""

import re

import duckdb
import pyarrow as pa

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS events (
    position BIGINT NOT NULL,
    run_id   VARCHAR NOT NULL,
    seq      BIGINT NOT NULL,
    event_id UUID NOT NULL,
    ts       TIMESTAMPTZ NOT NULL,
    type     VARCHAR NOT NULL,
    epoch    INTEGER,
    seed_id  VARCHAR,
    slot     VARCHAR,
    payload  JSON USING COMPRESSION zstd NOT NULL,
    hash     BLOB USING COMPRESSION uncompressed
)
"""
# zstd for the payload: DuckDB's default string compression (analysed per checkpoint) made appends of
# distinct payloads ~40% slower and the file ~2.5x larger.

# `hash` links each event to the one before it in its run (esper.store.chain); NULL in logs written before
# the chain. A store written then gets the column (and the `heads` table) when a Recorder next opens it.
# Stored as its 32 bytes, uncompressed (sha256 does not compress). Stores written before kept 64 hex characters,
# which each checkpoint spent longer compressing than any other column but the payload (appends of 10,000-event
# batches ran ~20% slower); they keep them, and readers see hex either way (`hash_as_text`).
UPGRADE_DDL = "ALTER TABLE events ADD COLUMN IF NOT EXISTS hash BLOB"

HEADS_DDL = "CREATE TABLE IF NOT EXISTS heads (run_id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL, hash VARCHAR)"
"""Every run's last `seq` and its hash, moved on in the transaction of each append: the anchor that shows a
cut tail, which a forward chain alone cannot."""

MOVE_HEAD = "UPDATE heads SET seq = ?, hash = ? WHERE run_id = ?"
ADD_HEAD = "INSERT INTO heads VALUES (?, ?, ?)"
# Moving a head is an UPDATE, adding one (a run's first append, or a run of a store written before heads) an INSERT:
# INSERT OR REPLACE, one statement for both, costs ~2.5x as much (~0.9 ms against ~0.35 ms), on every append.

SNAPSHOTS_DDL = """
CREATE TABLE IF NOT EXISTS snapshots (
    run_id VARCHAR NOT NULL,
    seq    BIGINT NOT NULL,
    hash   VARCHAR,
    state  JSON USING COMPRESSION zstd NOT NULL,
    PRIMARY KEY (run_id, seq)
)
"""
"""A run's state as of `seq` (whose event's hash is `hash`), written in the transaction of the append that ends
at `seq`. Beside the events, not among them: seq, event counts, exports and the RL datasets never see it. The
store keeps `state` as opaque JSON; `esper.nissa.snapshot` knows what is inside. A store written before snapshots
has no such table until a Recorder next opens it, and readers do without."""

ADD_SNAPSHOT = "INSERT INTO snapshots VALUES (?, ?, ?, ?)"

STORE_FORMAT = 2
"""The layout of the store files this Esper writes, and the newest it reads: 2 keeps hashes as bytes. Recorded as the
`events` table's comment (`FORMAT_COMMENT`); a store without one is older (hashes as hex text, or none)."""
FORMAT_COMMENT = f"esper store format {STORE_FORMAT}"


def format_problem(comment: str | None) -> str | None:
    """Why a store whose `events` table bears `comment` cannot be read here (None if it can): a newer Esper wrote it,
    in a layout this one would misread (an older Esper took the hashes of format 2 for tampering)."""
    match = re.fullmatch(r"esper store format (\d+)", comment or "")
    if match and int(match[1]) > STORE_FORMAT:
        return (f"written by a newer Esper (store format {match[1]}; this one reads formats up to {STORE_FORMAT}): "
                "upgrade Esper to read it")
    return None


def stored_hash_type(con: duckdb.DuckDBPyConnection, database: str) -> str | None:
    """The DuckDB type of the `hash` column of `database`'s events (`BLOB`; `VARCHAR` in a store written when
    hashes were hex text); None in a store written before the chain, which has no such column."""
    row = con.execute("SELECT data_type FROM duckdb_columns() WHERE database_name = ? AND table_name = 'events'"
                      " AND column_name = 'hash'", [database]).fetchone()
    return None if row is None else row[0]


def events_problem(con: duckdb.DuckDBPyConnection, database: str) -> str | None:
    """Why `database` is not an Esper store (None if it is): no `events` table, or one without the columns every
    Esper store has had (`hash` came with the chain). Another program's DuckDB file may well have an `events` table."""
    rows = con.execute("SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND table_name = 'events'",
                       [database]).fetchall()
    if not rows:
        return "no events table"
    missing = [c for c in COLUMNS if c != "hash" and c not in {name for (name,) in rows}]
    return f"its events table has no {missing[0]} column" if missing else None


def format_comment(con: duckdb.DuckDBPyConnection, database: str) -> str | None:
    """The comment of `database`'s events table: its format (`FORMAT_COMMENT`), None in a store older than that."""
    (comment,) = con.execute("SELECT comment FROM duckdb_tables() WHERE database_name = ? AND table_name = 'events'",
                             [database]).fetchone()
    return comment


def hash_as_text(stored_type: str | None) -> str:
    """The SQL that reads a store's `hash` column as users and the chain check see it, lowercase hex (NULL
    before the chain), whichever way the store keeps it: `stored_type` is the column's DuckDB type, None when
    the store has no such column."""
    if stored_type is None:
        return "NULL::VARCHAR AS hash"
    return "lower(hex(hash)) AS hash" if stored_type == "BLOB" else "hash"


COLUMNS = ("position", "run_id", "seq", "event_id", "ts", "type", "epoch", "seed_id", "slot", "payload", "hash")

MAX_RUN_ID = 200


def run_id_problem(run_id: str) -> str | None:
    """Why Esper would never write `run_id` (None if it would): run ids name files and appear in paths."""
    if not run_id:
        return "it is empty"
    if len(run_id) > MAX_RUN_ID:
        return f"it is {len(run_id)} characters long (at most {MAX_RUN_ID})"
    if "/" in run_id or "\\" in run_id:
        return "it holds a path separator"
    if ".." in run_id:
        return "it holds '..'"
    if any(ord(c) < 32 or ord(c) == 127 for c in run_id):
        return "it holds a control character"
    return None

# msgspec only writes valid JSON. Typed as Arrow's JSON extension (pyarrow >= 19), a payload goes into the
# JSON column as it is; as a plain string (older pyarrow) DuckDB parses every one to check it (~20% of an insert).
PAYLOAD_TYPE = pa.json_() if hasattr(pa, "json_") else pa.string()

# The Arrow shape of a batch before it is inserted. `run_id` and `ts` are the same for the whole batch and
# come as parameters; `event_id` is NULL for an event appended without one, and DuckDB draws a fresh UUID.
BATCH_SCHEMA = pa.schema(
    [
        ("position", pa.int64()),
        ("seq", pa.int64()),
        ("event_id", pa.string()),
        ("type", pa.string()),
        ("epoch", pa.int32()),
        ("seed_id", pa.string()),
        ("slot", pa.string()),
        ("payload", PAYLOAD_TYPE),
        ("hash", pa.binary()),
    ]
)
TEXT_HASH_BATCH_SCHEMA = BATCH_SCHEMA.set(BATCH_SCHEMA.get_field_index("hash"), pa.field("hash", pa.string()))
"""The same for a store that keeps its hashes as hex text (written before they were bytes)."""

INSERT_FROM_BATCH = """
INSERT INTO events
SELECT position, $run_id, seq, coalesce(event_id::UUID, uuid()), $ts, type, epoch, seed_id, slot, payload::JSON, hash
FROM batch
"""
