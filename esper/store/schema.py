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
    payload  JSON NOT NULL
)
"""

COLUMNS = ("position", "run_id", "seq", "event_id", "ts", "type", "epoch", "seed_id", "slot", "payload")

# The Arrow shape of a batch before it is inserted; UUID and JSON are cast inside DuckDB.
BATCH_SCHEMA = pa.schema(
    [
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
    ]
)

INSERT_FROM_BATCH = """
INSERT INTO events
SELECT position, run_id, seq, event_id::UUID, ts, type, epoch, seed_id, slot, payload::JSON FROM batch
"""
