"""`esper replay --verify`: re-execute a run from its recorded config and commands, compare the events."""

import msgspec

from esper.errors import EsperError, IllegalEvent
from esper.leyline.events import CommandIssued, CommandRejected, RunFailed, RunStarted, SeedTransitioned, encode
from esper.store.recorder import Recorded
from esper.tamiyo.controllers import ScriptedController
from esper.tolaria.loop import ListSink, execute


class VerificationFailed(EsperError):
    """Re-executing the run gave different events: not deterministic, or the log was changed."""

    exit_code = 1


def verify_run(recorded: list[Recorded]) -> int:
    """Re-execute and compare event by event (payloads; ids, positions and timestamps are not compared).
    Returns the number of events compared."""
    if not recorded or not isinstance(recorded[0].event, RunStarted):
        raise IllegalEvent("the log does not start with RunStarted", recorded[0].position if recorded else None)
    config = recorded[0].event.config
    issued = [r.event for r in recorded if isinstance(r.event, CommandIssued)]
    controller = ScriptedController(config.controller, issued)
    sink = ListSink()
    # A scratch run recorded before the `build` transition existed has its architecture built without events:
    # re-execute it the same way (the weights are drawn in the same order either way).
    built = any(isinstance(r.event, SeedTransitioned) and r.event.trigger == "build" for r in recorded)
    try:
        execute(config, controller, sink, build_events=built or not config.architecture)
    except EsperError:
        if not isinstance(recorded[-1].event, RunFailed):
            raise
    for i, (old, new) in enumerate(zip(recorded, sink.events)):
        if isinstance(old.event, CommandRejected) and isinstance(new, CommandRejected) and not old.event.evidence:
            new = msgspec.structs.replace(new, evidence={})  # logged before refusals carried their evidence
        if encode(old.event) != encode(new):
            raise VerificationFailed(
                f"re-execution differs at seq {old.seq} (position {old.position}, {type(old.event).__name__}), "
                + _first_difference(msgspec.to_builtins(old.event), msgspec.to_builtins(new))
            )
    if len(sink.events) != len(recorded):
        raise VerificationFailed(f"re-execution wrote {len(sink.events)} events, the log holds {len(recorded)}")
    return len(recorded)


_ABSENT = object()


def _first_difference(old, new, path: str = "") -> str:
    """Where two decoded payloads first differ, as `in PATH: recorded X, now Y` (a whole event is too long
    for one line, and its start is usually the same)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
            if _encoded(a) != _encoded(b):  # as logged: 0.0 == -0.0 and 1 == 1.0 in Python, not in the log
                return _first_difference(a, b, f"{path}.{key}" if path else key)
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            if _encoded(a) != _encoded(b):
                return _first_difference(a, b, f"{path}[{i}]")
    return f"in {path or 'the event'}: recorded {_brief(old)}, now {_brief(new)}"


def _encoded(value) -> bytes:
    return b"" if value is _ABSENT else msgspec.json.encode(value)


def _brief(value) -> str:
    if value is _ABSENT:
        return "nothing"
    text = _encoded(value).decode()
    return text if len(text) <= 120 else text[:117] + "..."
