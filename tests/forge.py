"""Forged exports: a clean `esper export --format jsonl` file, edited, written back in the same format.

Every forged file in the tests goes through `forge`, so whatever makes an export consistent besides its
events (derived columns, the hash chain and its trailer) is redone in this one place: a forged file
must be refused by the re-judging of its events, not by a broken format.
"""

import copy
import json
import uuid
from pathlib import Path
from typing import Callable

from esper.store.chain import reseal_export

Rows = list[dict]


def read_rows(path: Path) -> Rows:
    """The event rows of an export (its closing trailer of run heads left out)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [row for row in rows if "trailer" not in row]


def forge(clean: Path, out: Path, edit: Callable[[Rows], Rows | None]) -> Path:
    """Write `out`: the rows of `clean` passed through `edit` (which may change payloads, drop or insert rows;
    an inserted row may be a bare `{"payload": {...}}`). Columns derived from the payload (type, epoch,
    seed_id, slot) follow it, seq and position are renumbered without gaps, new rows get ids and times."""
    rows = read_rows(clean)
    edited = edit(rows)
    rows = rows if edited is None else edited
    first = rows[0]
    lines = []
    for i, row in enumerate(rows):
        row = {**{k: v for k, v in first.items() if k != "payload"}, "event_id": str(uuid.uuid4()), **row}
        payload = row["payload"]
        row.update(position=first["position"] + i, seq=i + 1, type=payload["type"], epoch=payload.get("epoch"),
                   seed_id=payload.get("seed_id"), slot=payload.get("slot"))
        lines.append(json.dumps({k: row[k] for k in ("position", "run_id", "seq", "event_id", "ts", "type", "epoch",
                                                       "seed_id", "slot", "payload")}, separators=(",", ":")))
    Path(out).write_text("\n".join(lines) + "\n")
    reseal_export(out)  # the chain and trailer recomputed: what refuses the forgery is the re-judging
    return Path(out)


def payloads(rows: Rows, type_: str, **match) -> list[dict]:
    """The payloads of `type_` whose fields equal `match` (e.g. `seed_id="s1-early", trigger="advance"`)."""
    return [r["payload"] for r in rows if r["payload"]["type"] == type_
            and all(r["payload"].get(k) == v for k, v in match.items())]


def one(rows: Rows, type_: str, **match) -> dict:
    [found] = payloads(rows, type_, **match)
    return found


def index_of(rows: Rows, payload: dict) -> int:
    return next(i for i, r in enumerate(rows) if r["payload"] is payload)


def clone(payload: dict, **changes) -> dict:
    return {"payload": {**copy.deepcopy(payload), **changes}}
