"""`esper replay --verify`: re-execute a run from its recorded config and commands, compare the events."""

import msgspec

from esper.errors import EsperError, IllegalEvent
from esper.leyline.events import CommandIssued, RunFailed, RunStarted, encode
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
    try:
        execute(config, controller, sink)
    except EsperError:
        if not isinstance(recorded[-1].event, RunFailed):
            raise
    for i, (old, new) in enumerate(zip(recorded, sink.events)):
        if encode(old.event) != encode(new):
            raise VerificationFailed(
                f"re-execution differs at seq {old.seq} (position {old.position}, {type(old.event).__name__}): "
                f"recorded {_brief(old.event)} vs now {_brief(new)}"
            )
    if len(sink.events) != len(recorded):
        raise VerificationFailed(f"re-execution wrote {len(sink.events)} events, the log holds {len(recorded)}")
    return len(recorded)


def _brief(event) -> str:
    text = msgspec.json.encode(event).decode()
    return text if len(text) <= 160 else text[:157] + "..."
