"""Snapshots of a run's state, so that a long log need not be folded from zero every time (DESIGN.md, Events).

A snapshot is `RunState` (with its `Garden` and `SeedState`s, attrs classes) unstructured to plain data by one
cattrs `Converter` and written as JSON. The writer (`esper.tolaria.loop.StoreSink`) keeps a fold of what it
appends and, every N epochs, hands the JSON to `Recorder.append`, which stores it in the `snapshots` table with
the head (last seq and hash) of the batch, in the batch's transaction. The store keeps the JSON opaque: it
cannot import nissa (dependencies point leyline ← store ← everything), and this module is the only one that
knows what is inside.

Readers (`load_run_state`) start from the latest snapshot whose head matches the log (an event at its seq
with its hash) and fold the tail; any other snapshot is ignored. A snapshot whose state was changed while its
head was left alone passes that check: only `esper replay`, which folds from zero and compares every snapshot
with the fold of its prefix (`fold_checking`), catches it.

Snapshots are derived data: exports do not carry them, and a store without any (written before snapshots, or
by a writer that took none) reads the same, only folded from zero.

What needs a hook: msgspec Structs (`RunConfig`, `LifecycleConfig`, `EpochEnded`, `SeedTelemetry`,
`RunFinished`, `RunFailed`) go through `msgspec.to_builtins` / `msgspec.convert`; `Garden.built` (a set) is
written sorted, so the same state always gives the same JSON. `SeedStage` is written as its value and tuples
(`SeedState.history`, `Garden.architecture`) as lists: cattrs' own handling, structured back to the annotated
types.
"""

from typing import Any, Iterable

import cattrs
import msgspec

from esper.errors import IllegalEvent, LogAltered
from esper.nissa.runstate import RunState
from esper.store.recorder import Recorded

FORMAT = 2
"""The shape of the state inside a snapshot. A snapshot of another format is ignored by readers and by replay,
so changing `RunState` (or anything in it) means raising this. 2: `RunState.status` is a field."""


def _is_struct(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, msgspec.Struct)


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_unstructure_hook_func(_is_struct, msgspec.to_builtins)
    converter.register_structure_hook_func(_is_struct, lambda data, cls: msgspec.convert(data, cls))
    converter.register_unstructure_hook_func(lambda cls: cls == set[int], sorted)
    return converter


CONVERTER = make_converter()


class UnreadableSnapshot(ValueError):
    """A snapshot that does not structure into a `RunState` of this format."""


def unstructure(state: RunState) -> dict[str, Any]:
    """The state as JSON-ready data: what a snapshot holds, and what replay compares."""
    return _plain(CONVERTER.unstructure(state))


def encode(state: RunState) -> str:
    return msgspec.json.encode({"format": FORMAT, "state": CONVERTER.unstructure(state)}).decode()


def stored_state(text: str | bytes) -> dict[str, Any]:
    """The plain state inside a snapshot's JSON; `UnreadableSnapshot` when it is not of this format."""
    try:
        data = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise UnreadableSnapshot(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("state"), dict):
        raise UnreadableSnapshot(f"not a snapshot of format {FORMAT}")
    return data["state"]


def decode(text: str | bytes) -> RunState:
    try:
        return CONVERTER.structure(stored_state(text), RunState)
    except (cattrs.BaseValidationError, msgspec.ValidationError, TypeError, ValueError, KeyError) as exc:
        raise UnreadableSnapshot(f"not a RunState: {exc}") from None


def load_run_state(reader: Any, run_id: str) -> RunState:
    """The run's state: the latest snapshot whose head matches the log (`Reader.snapshots(matching=True)`), with
    the events after it folded on; from zero when there is none. A snapshot that does not read back, or from
    which the tail does not fold, is passed over for an earlier one. The hash chain is not checked here
    (`Reader.check_run` does that)."""
    for stored in reader.snapshots(run_id, matching=True):
        seq = stored.seq
        try:
            state = decode(stored.state)
        except UnreadableSnapshot:
            continue
        if state.run_id != run_id or state.last_seq != seq:
            continue
        try:
            for recorded in reader.read_run(run_id, after_seq=seq):
                state.apply_recorded(recorded)
        except IllegalEvent:
            continue
        return state
    return RunState.fold(reader.read_run(run_id))


def fold_checking(run_id: str, recorded: Iterable[Recorded], snapshots: Iterable[Any] = ()) -> RunState:
    """Fold the run from zero and compare every snapshot of it (`StoredSnapshot`s) with the fold of its prefix:
    `LogAltered` names the first that records a head the log does not have, lies past the log's end, or differs
    from the fold. Snapshots of another format are not compared (readers ignore them too)."""
    due: dict[int, list[Any]] = {}
    for stored in snapshots:
        due.setdefault(stored.seq, []).append(stored)
    state = RunState()
    for r in recorded:
        state.apply_recorded(r)
        for stored in due.pop(r.seq, []):
            if not stored.matches:
                raise LogAltered(f"log altered: the snapshot at seq {r.seq} records another hash than the log's "
                                 f"event there (run {run_id})")
            _compare(run_id, r.seq, state, stored.state)
    if due:
        raise LogAltered(f"log altered: the snapshot at seq {min(due)} lies past the log's end at seq "
                         f"{state.last_seq} (run {run_id})")
    return state


def _compare(run_id: str, seq: int, state: RunState, text: str) -> None:
    try:
        data = msgspec.json.decode(text)
    except msgspec.DecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("format"), int) and data["format"] != FORMAT:
        return  # another format's snapshot: readers ignore it too
    if not isinstance(data, dict) or not isinstance(data.get("state"), dict):
        raise LogAltered(f"log altered: the snapshot at seq {seq} is no snapshot of format {FORMAT} (run {run_id})")
    where = _first_difference(data["state"], unstructure(state))
    if where is not None:
        raise LogAltered(f"log altered: the snapshot at seq {seq} differs from the fold of its prefix ({where}) "
                         f"(run {run_id})")


def _plain(data: Any) -> Any:
    """Data as JSON gives it back (tuples as lists, NaN as null): what the two sides of a comparison share."""
    return msgspec.json.decode(msgspec.json.encode(data))


def _first_difference(a: Any, b: Any, path: tuple[str, ...] = ()) -> str | None:
    """The dotted path of the first place where two plain values differ (None when they are equal)."""
    here = ".".join(path) or "the whole state"
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            if key not in a or key not in b:
                return ".".join((*path, str(key)))
            if (found := _first_difference(a[key], b[key], (*path, str(key)))) is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            if (found := _first_difference(x, y, (*path, str(i)))) is not None:
                return found
        return None if len(a) == len(b) else f"{here} (length)"
    if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                       and not isinstance(a, bool) and not isinstance(b, bool)):
        return here
    return None if a == b else here
