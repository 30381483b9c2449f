"""The one table of a store file. Users' SQL relies on these column names (DESIGN.md, Events)."""

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
    payload  JSON USING COMPRESSION zstd NOT NULL
)
"""
# zstd for the payload: DuckDB's default string compression (analysed per checkpoint) made appends of
# distinct payloads ~40% slower and the file ~2.5x larger.

COLUMNS = ("position", "run_id", "seq", "event_id", "ts", "type", "epoch", "seed_id", "slot", "payload")

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
    ]
)

INSERT_FROM_BATCH = """
INSERT INTO events
SELECT position, $run_id, seq, coalesce(event_id::UUID, uuid()), $ts, type, epoch, seed_id, slot, payload::JSON
FROM batch
"""
