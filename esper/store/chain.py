"""The hash chain of a run: tamper evidence for its log (DESIGN.md, Events).

    genesis(run)     = sha256(b"esper run " + run_id as UTF-8)
    link(prev, e)    = sha256(prev (32 bytes) + e.seq (8 bytes, big-endian) + e.payload (its JSON bytes, as stored))

Each event's `hash` column holds the hex of its link; the first event links to the run's genesis, so a
chain is bound to its run id and to the position of every event in it (seq). Changing, removing or
inserting an event breaks the link of the first event touched; a cut tail leaves a shorter valid chain,
which is why every store keeps each run's head (`heads` table) and every export a trailer with the same.
The columns the store derives from the payload for SQL (`type`, `epoch`, `seed_id`, `slot`) are not hashed
but checked against it: an edited one is an alteration too. `ts` and `event_id` lie outside the chain.

The chain proves integrity against edits, not authorship: it has no key, and anyone can recompute it
(`reseal`, `reseal_export` do exactly that, for tests that forge logs).

Logs written before the chain have NULL hashes. A run whose hashes are all NULL is *unsealed* (replayed
with a note) only if its first event is a `RunStarted` whose stored `schema_version` is below
`SEALED_SINCE` (a learner's stream: a `PolicyUpdated` below `LEARNER_SEALED_SINCE`); otherwise missing
hashes are tampering. A `RunStarted` claiming a version from before the chain must also have that version's
shape: one that carries what only sealed versions record (`preset`, `versions`) had its version edited down.
`position` (where the event lies in its store file) lies outside the chain too.
"""

import hashlib
import json
import re
from pathlib import Path
from typing import Iterable

import msgspec

from esper.errors import LogAltered

SEALED_SINCE = 3
"""The first `RunStarted.schema_version` written with hash chains: from it on, a run without hashes was altered."""
LEARNER_SEALED_SINCE = 2
"""The same for a learner's stream of `PolicyUpdated` (v2 has v1's shape: the version only marks the seal)."""

_sha256 = hashlib.sha256


def genesis(run_id: str) -> bytes:
    """The "previous hash" of a run's first event."""
    return _sha256(b"esper run " + run_id.encode()).digest()


def link(prev: bytes, seq: int, payload: bytes | str) -> bytes:
    """The hash of the event at `seq` with this payload, after the event whose hash is `prev`."""
    if isinstance(payload, str):
        payload = payload.encode()
    return _sha256(prev + seq.to_bytes(8, "big") + payload).digest()


def link_buffer(prev: bytes, first_seq: int, buffer: bytes, starts, ends) -> list[bytes]:
    """The links of consecutive events whose payloads lie in `buffer` at [starts[i], ends[i]): the writer's
    fast path, one hashlib call per event over a memoryview slice of the batch's one encoded buffer."""
    view = memoryview(buffer)
    out = []
    seq = first_seq
    for start, end in zip(starts.tolist(), ends.tolist()):
        prev = _sha256(prev + seq.to_bytes(8, "big") + view[start:end]).digest()
        out.append(prev)
        seq += 1
    return out


class _Columns(msgspec.Struct):
    """The fields of a payload that the store copies into columns of their own (`esper.store.recorder`)."""

    type: str = ""
    epoch: int | None = None
    seed_id: str | None = None
    slot: str | None = None


_columns_decoder = msgspec.json.Decoder(_Columns)


def column_mismatch(type_: str, epoch: int | None, seed_id: str | None, slot: str | None,
                    payload: bytes | str) -> str | None:
    """What differs between an event's derived columns and its payload (None: nothing)."""
    try:
        said = _columns_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "its payload is not an event"
    for name, column, value in (("type", type_, said.type), ("epoch", epoch, said.epoch),
                                ("seed_id", seed_id, said.seed_id), ("slot", slot, said.slot)):
        if column != value:
            return f"its {name} column says {column!r}, its payload {value!r}"
    return None


class _Version(msgspec.Struct):
    type: str = ""
    schema_version: int = 1
    preset: msgspec.Raw = msgspec.Raw()  # empty: the payload has no such key
    versions: msgspec.Raw = msgspec.Raw()


_version_decoder = msgspec.json.Decoder(_Version)


def sealed_by_version(first_payload: bytes | str) -> bool:
    """Whether a run starting with this payload must carry hashes. Only a stream begun by an Esper from before
    the chain may lack them, and the first event's stored (raw, not upcast) version tells: a training run's
    `RunStarted` below `SEALED_SINCE`, a learner's `PolicyUpdated` below `LEARNER_SEALED_SINCE`."""
    try:
        head = _version_decoder.decode(first_payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return True  # not even readable: nothing excuses missing hashes
    since = {"RunStarted": SEALED_SINCE, "PolicyUpdated": LEARNER_SEALED_SINCE}.get(head.type)
    if head.type == "RunStarted" and (len(head.preset) or len(head.versions)):
        return True  # recorded since v3, with the chain: a version below it was written in by hand
    return since is None or head.schema_version >= since


def unsealed_note(run_id: str) -> str:
    return f"run {run_id} is unsealed (written before hash chains); its integrity cannot be checked"


class Verifier:
    """Checks a run's events one at a time, in the order read (by seq), and raises `LogAltered` naming the
    first event that was changed, removed or inserted.

    `after_seq`/`prev_hash` continue a check that already passed up to `after_seq` (whose stored hash was
    `prev_hash`, hex, or None for an unsealed run); from zero, the first event decides whether the run is
    sealed. `head` is then the (seq, hash) of the last event checked.
    """

    def __init__(self, run_id: str, after_seq: int = 0, prev_hash: str | None = None, where: str = ""):
        self.run_id = run_id
        self.where = where
        self.seq = after_seq
        self.hash = prev_hash
        self.sealed: bool | None = None if after_seq == 0 else prev_hash is not None
        self._prev = genesis(run_id) if after_seq == 0 else (bytes.fromhex(prev_hash) if prev_hash else None)

    def altered(self, seq: int, what: str) -> LogAltered:
        return LogAltered(f"log altered at seq {seq} ({what}) in run {self.run_id}{self.where}")

    def feed(self, seq: int, type_: str, payload: bytes | str, hash_: str | None,
             columns: tuple[int | None, str | None, str | None]) -> None:
        """Check the next event: its seq, type, payload and hash, and its `columns` (epoch, seed_id, slot) as
        the store holds them."""
        expected = self.seq + 1
        if seq < expected:
            raise self.altered(seq, f"{type_}: a second event at this seq")
        if seq > expected:
            raise self.altered(expected, f"missing: the log goes from seq {self.seq} to seq {seq}")
        if self.sealed is None:
            self.sealed = hash_ is not None or sealed_by_version(payload)
            if not self.sealed:
                self._prev = None
        if not self.sealed:
            if hash_ is not None:
                raise self.altered(seq, f"{type_}: a hash in an unsealed run")
        elif hash_ is None:
            raise self.altered(seq, f"{type_}: its hash is missing")
        else:
            mine = link(self._prev, seq, payload)
            if mine.hex() != hash_:
                raise self.altered(seq, type_)
            self._prev = mine
        if mismatch := column_mismatch(type_, *columns, payload):
            raise self.altered(seq, f"{type_}: {mismatch}")
        self.seq, self.hash = seq, hash_

    def end(self, head: tuple[int, str | None] | None, holder: str = "the store") -> None:
        """Compare the last event checked with the head its store (or export trailer) recorded."""
        if head is None:
            if self.sealed:
                raise LogAltered(f"log altered: {holder} has no head for run {self.run_id}, the log ends at seq "
                                 f"{self.seq}{self.where}")
            return
        seq, hash_ = head
        if seq != self.seq:
            raise LogAltered(f"log altered: {holder}'s head says seq {seq}, the log ends at seq {self.seq} "
                             f"(run {self.run_id}{self.where})")
        if hash_ != self.hash:
            raise LogAltered(f"log altered: {holder}'s head at seq {seq} holds another hash than the log "
                             f"(run {self.run_id}{self.where})")


def verify(run_id: str, rows: Iterable[tuple[int, str, bytes | str, str | None, tuple]],
           head: tuple[int, str | None] | None = None, holder: str = "the store") -> bool:
    """Check a whole run: rows (seq, type, payload, hash, (epoch, seed_id, slot)) in seq order, then its recorded
    head. Raises `LogAltered`; returns whether the run is sealed (False: no hashes, written before the chain)."""
    verifier = Verifier(run_id)
    for seq, type_, payload, hash_, columns in rows:
        verifier.feed(seq, type_, payload, hash_, columns)
    verifier.end(head, holder)
    return bool(verifier.sealed)


# ---- forging, for tests ------------------------------------------------------------------------


def reseal(rows: Iterable[dict]) -> list[dict]:
    """Recompute the hash of every row (dicts with run_id, seq, payload; in seq order per run) as the writer
    would have: what a forger does to make an edited log chain again. Returns the rows, updated in place."""
    rows = list(rows)
    prev: dict[str, bytes] = {}
    for row in sorted(rows, key=lambda r: (r["run_id"], r["seq"])):
        payload = row["payload"]
        if not isinstance(payload, (bytes, str)):
            payload = json.dumps(payload, separators=(",", ":"))
        h = link(prev.get(row["run_id"]) or genesis(row["run_id"]), row["seq"], payload)
        prev[row["run_id"]] = h
        row["hash"] = h.hex()
    return rows


def heads_of(rows: Iterable[dict]) -> dict[str, dict]:
    """Each run's head (last seq and its hash) of resealed rows: what a trailer or `heads` table holds."""
    heads: dict[str, dict] = {}
    for row in rows:
        if row["run_id"] not in heads or row["seq"] > heads[row["run_id"]]["seq"]:
            heads[row["run_id"]] = {"seq": row["seq"], "hash": row.get("hash")}
    return heads


def reseal_export(path: str | Path) -> None:
    """Rewrite an exported file (jsonl or parquet) with a recomputed chain and trailer, keeping every
    other byte of each jsonl line: one call turns a hand-edited export into one whose chain holds, so
    that a test sees what the re-judging (not the chain) says of the forgery."""
    path = Path(path)
    if path.read_bytes()[:4] == b"PAR1":
        _reseal_parquet(path)
        return
    rows, lines = [], []
    for raw in path.read_bytes().splitlines():
        if not raw.strip() or raw.lstrip().startswith(b'{"trailer"'):
            continue
        # The payload is spliced back as it was: only the hash (the line's last field) is rewritten.
        obj = json.loads(raw)
        payload = _payload_text(raw)
        rows.append({"run_id": obj["run_id"], "seq": obj["seq"], "payload": payload})
        lines.append(raw)
    reseal(rows)
    out = []
    for raw, row in zip(lines, rows):
        out.append(_with_hash(raw, row["hash"]))
    out.append(trailer_line(heads_of(rows)))
    path.write_bytes(b"\n".join(out) + b"\n")


def trailer_line(heads: dict[str, dict]) -> bytes:
    return msgspec.json.encode({"trailer": {"heads": heads}})


class _RawLine(msgspec.Struct):
    payload: msgspec.Raw


_raw_line = msgspec.json.Decoder(_RawLine)


def _payload_text(raw: bytes) -> bytes:
    return bytes(_raw_line.decode(raw).payload)


_HASH_FIELD = re.compile(rb',"hash":(?:null|"[0-9a-fA-F]*")\}\s*$')


def _with_hash(raw: bytes, hash_: str) -> bytes:
    """The line with its hash field (the last one, as the export writes it) set to `hash_`."""
    body = _HASH_FIELD.sub(b"}", raw.rstrip())
    return body[:-1] + b',"hash":"' + hash_.encode() + b'"}'


def _reseal_parquet(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    rows = [{"run_id": r, "seq": s, "payload": p} for r, s, p in zip(
        table.column("run_id").to_pylist(), table.column("seq").to_pylist(), table.column("payload").to_pylist())]
    reseal(rows)
    hashes = pa.array([r["hash"] for r in rows], pa.string())
    if "hash" in table.column_names:
        table = table.set_column(table.column_names.index("hash"), "hash", hashes)
    else:
        table = table.append_column("hash", hashes)
    metadata = dict(table.schema.metadata or {})
    metadata[TRAILER_KEY] = json.dumps({"heads": heads_of(rows)}).encode()
    pq.write_table(table.replace_schema_metadata(metadata), path, compression="zstd")


TRAILER_KEY = b"esper.trailer"
"""The parquet key-value metadata entry holding the export's trailer (the heads of its runs)."""
