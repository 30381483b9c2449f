"""`esper replay --verify`: re-execute a run from its log alone and compare the events.

The log holds everything re-execution needs: the resolved config and task preset (`RunStarted`) and the
controller's commands (`CommandIssued`). What is compared:

* decisions exactly: every command, germination, rejection and lifecycle transition (types, stages,
  triggers, seeds, slots, every integer and string);
* numbers (losses, accuracies, telemetry, a gate's evidence) within a relative `tolerance`, because
  another machine may round differently in the last bits (a GPU, another torch, a CPU that takes no kernel set
  for lack of AVX2, or the `fast` set on another CPU model: `esper/_kernels.py`); the largest relative deviation
  of each field is reported;
* with `exact`, every event bit for bit as logged.

Ids, positions, timestamps and what computed the run (`RunStarted.versions`, `ranks`, `threads`, `channels_last`)
are not compared (a difference is noted): re-execution runs in one process, computing as the run was computed
(`Computed`): a run that N ranks trained data-parallel shard by shard as they did (`esper.tolaria.ranks`), on CPU on
as many threads as it had, with the CPU kernel set it had (else one line, before anything runs). On CPU its numbers
then come out bit for bit on any x86-64 CPU with AVX2 (the portable set) or on the same CPU model (the fast one).
A run that came from user code (`esper.fit`, `RunStarted.user_code`) cannot be re-executed: its model and
data are not in the log. `verify_run` says so (`BadInput`) rather than train something else.
A resumed run is re-executed as one uninterrupted run: its checkpoints, `RunResumed` markers and the
`RunFailed` of each interruption that was resumed are not compared (`as_one_run`).
"""

import math
from typing import Any, Callable

import attrs
import msgspec

from esper.errors import BadInput, EsperError, IllegalEvent
from esper.leyline.config import VERIFY_TOLERANCE
from esper.leyline.events import (
    CommandIssued,
    CommandRejected,
    Event,
    RunFailed,
    RunFinished,
    RunStarted,
    SeedGerminated,
    SeedTransitioned,
    encode,
    type_name,
)
from esper.nissa.fmt import plural
from esper.nissa.runstate import as_one_run
from esper.store.recorder import Recorded
from esper.tamiyo.controllers import ScriptedController, ScriptEnded
from esper.tolaria.data import recorded_data
from esper.tolaria.loop import Batches, ListSink, Progress, execute, policy_file_sha256
from esper.tolaria.trainer import Computed, check_recorded_device


DECISIONS = (CommandIssued, CommandRejected, SeedGerminated, SeedTransitioned)


class VerificationFailed(EsperError):
    """Re-executing the run gave different events: not deterministic, or the log was changed."""

    exit_code = 1


@attrs.frozen
class Verification:
    """What `verify_run` compared and how close the numbers came."""

    events: int
    exact: bool
    tolerance: float
    deviations: dict[str, float]
    """`Type.field` → the largest relative deviation seen in it (only fields that deviated at all)."""
    notes: list[str]
    """Differences that are reported, not judged (versions of the software that computed the run)."""

    def describe(self) -> str:
        if self.exact:
            return f"re-execution gives the same {plural(self.events, 'event')}, bit for bit"
        worst = sorted(self.deviations.items(), key=lambda kv: -kv[1])
        numbers = ", ".join(f"{field} {dev:.1e}" for field, dev in worst[:6]) + (", ..." if len(worst) > 6 else "")
        close = f"largest relative deviations: {numbers}" if worst else "every number identical"
        return (f"re-execution gives the same {plural(self.events, 'event')}: decisions identical, numbers within "
                f"{self.tolerance:.0e} relative ({close})")


def reexecutable(recorded: list[Recorded]) -> tuple[RunStarted, Any]:
    """The run's `RunStarted` and its data, if its log holds everything re-execution needs; else one line saying why
    not (checked before the data is loaded, except that a text run's corpus must be the one it read)."""
    if not recorded or not isinstance(recorded[0].event, RunStarted):
        raise IllegalEvent("the log does not start with RunStarted", recorded[0].position if recorded else None)
    started: RunStarted = recorded[0].event
    if started.user_code:
        raise BadInput(f"run {recorded[0].run_id} came from user code (a {started.preset.host} trained by esper.fit): "
                       "its log holds every decision but not the model or the data, so it cannot be re-executed; "
                       "replay it without --verify to check its chain and every decision")
    check_recorded_device(recorded[0].run_id, started.config.device)
    Computed.of(started)  # a CPU run computed with another kernel set than this process's: one line, up front
    policy_file_sha256(started.config)  # a policy run is re-executed only beside the file it played
    return started, recorded_data(started)  # bad input (another corpus) even where the run itself failed


def verify_run(recorded: list[Recorded], exact: bool = False, tolerance: float = VERIFY_TOLERANCE,
               running: bool = False, starting: Callable[[], None] = lambda: None, progress: Progress | None = None,
               batches: Batches | None = None) -> Verification:
    """Re-execute the run from its `RunStarted` (config and preset) and its commands, and compare event by event.
    `running`: a writer holds the run now (its log so far is compared, as a killed run's is). `starting` is called
    once the log is found re-executable and its data loaded, before the re-execution; `progress` and `batches` follow
    it as they follow a run (`esper.tolaria.loop.execute`)."""
    log_ends_at = recorded[-1].seq if recorded else 0  # before the checkpoints and resumptions are set aside
    recorded = as_one_run(recorded)
    started, data = reexecutable(recorded)
    starting()
    issued = [r.event for r in recorded if isinstance(r.event, CommandIssued)]
    sink = ListSink()
    # A scratch run recorded before the `build` transition existed has its architecture built without events:
    # re-execute it the same way (the weights are drawn in the same order either way).
    built = any(isinstance(r.event, SeedTransitioned) and r.event.trigger == "build" for r in recorded)
    last = recorded[-1].event
    ended = isinstance(last, (RunFinished, RunFailed))  # else its process was killed: the log is what it wrote
    try:
        execute(started.config, ScriptedController(started.config.controller, issued), sink, progress,
                preset=started.preset, build_events=built or not started.config.architecture, data=data,
                computed=Computed.of(started), batches=batches)
    except ScriptEnded:  # the log's decisions end before the re-execution's: only a finished run's may not
        if isinstance(last, RunFinished):
            raise
    except EsperError:
        if not isinstance(last, RunFailed):
            raise
    # A run stopped from outside (Ctrl-C, SIGTERM) has no recorded cause to re-execute: what it logged before its
    # RunFailed is compared, and the re-execution, which runs on until the recorded commands end, may hold more.
    # So is the whole log of a killed run, which ends without either.
    stopped = isinstance(last, RunFailed) and last.interrupted
    compared = recorded[:-1] if stopped else recorded
    comparison = Comparison(exact, tolerance)
    for old, new in zip(compared, sink.events):
        comparison.compare(old, new)
    if len(sink.events) < len(compared) or (ended and not stopped and len(sink.events) != len(recorded)):
        raise VerificationFailed(f"re-execution wrote {len(sink.events)} events, the log holds {len(recorded)}")
    if stopped:
        comparison.notes.append(f"the run was stopped from outside ({last.error}) at seq {recorded[-1].seq}: its "
                                f"{len(compared)} events before that were re-executed")
    elif not ended:
        why = "it is still being written" if running else "its process was killed"
        comparison.notes.append(f"the run's log ends at seq {log_ends_at} without RunFinished or RunFailed ({why}): "
                                f"its {len(compared)} events were re-executed")
    return Verification(len(compared), exact, tolerance, comparison.deviations, comparison.notes)


@attrs.define
class Comparison:
    """Recorded events against re-executed ones, one pair at a time: `compare` raises `VerificationFailed` at the
    first difference it does not accept, and keeps the largest deviation of each number."""

    exact: bool
    tolerance: float
    deviations: dict[str, float] = attrs.Factory(dict)
    notes: list[str] = attrs.Factory(list)

    def compare(self, old: Recorded, new: Event) -> None:
        recorded = old.event
        if isinstance(recorded, RunStarted) and isinstance(new, RunStarted):
            if recorded.versions and recorded.versions != new.versions:
                self.notes.append(f"recorded with {_versions(recorded.versions)}; re-executed with {_versions(new.versions)}")
            if recorded.ranks != new.ranks:
                self.notes.append(f"trained by {recorded.ranks} ranks, re-executed here as their {recorded.ranks} "
                                  "shards of each batch, one after another")
            new = msgspec.structs.replace(new, versions=recorded.versions, ranks=recorded.ranks,
                                          threads=recorded.threads, channels_last=recorded.channels_last)
        if isinstance(recorded, CommandRejected) and isinstance(new, CommandRejected) and not recorded.evidence:
            new = msgspec.structs.replace(new, evidence={})  # logged before refusals carried their evidence
        if encode(recorded) == encode(new):
            return
        where = f"re-execution differs at seq {old.seq} (position {old.position}, {type(recorded).__name__})"
        a, b = msgspec.to_builtins(recorded), msgspec.to_builtins(new)
        if self.exact or type(recorded) is not type(new) or not _same_shape(a, b):
            if isinstance(recorded, DECISIONS) or isinstance(new, DECISIONS):
                self.fail(f"decision differs at epoch {recorded.epoch}: recorded {describe(recorded)}; now {describe(new)}")
            self.fail(f"{where}, {_first_difference(a, b)}")
        for path, x, y in _numbers(a, b):
            deviation = _relative(x, y)
            if deviation == 0.0:
                continue
            field = f"{type_name(recorded)}.{path}"
            self.deviations[field] = max(self.deviations.get(field, 0.0), deviation)
            if deviation > self.tolerance:
                self.fail(f"{where}, in {path}: recorded {x!r}, now {y!r} (relative deviation {deviation:.1e}, "
                          f"over the tolerance {self.tolerance:.0e})")

    def fail(self, message: str) -> None:
        """A difference, with what may explain it: the run was recorded by other software or another CPU."""
        raise VerificationFailed("; ".join([message, *self.notes]))


def describe(event: Event) -> str:
    """A decision in one phrase, with the numbers its gate compared."""
    if isinstance(event, SeedTransitioned):
        return f"{event.trigger} {event.seed_id} {event.from_stage} → {event.to_stage} ({_evidence(event.evidence)})"
    if isinstance(event, CommandRejected):
        return f"{_command(event.command)} rejected ({event.reason})"
    if isinstance(event, SeedGerminated):
        return f"{event.seed_id} germinated: {event.blueprint} in {event.slot}"
    if isinstance(event, CommandIssued):
        return f"{event.controller} issued {_command(event.command)}"
    return f"{type_name(event)} at epoch {event.epoch}"


def _command(command: Any) -> str:
    fields = msgspec.to_builtins(command)
    op = fields.pop("op", type(command).__name__)
    return op + (f"({', '.join(f'{k}={v}' for k, v in fields.items())})" if fields else "")


def _evidence(evidence: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in evidence.items()) or "no evidence"


def _versions(versions: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or "unknown versions"


def _same_shape(a: Any, b: Any) -> bool:
    """Equal except for the values of floats: same keys, lengths, types, and every non-float value equal."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isfinite(a) == math.isfinite(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_shape(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_shape(x, y) for x, y in zip(a, b))
    return a == b


def _numbers(a: Any, b: Any, path: str = ""):
    """(field path without list indices, recorded, now) for every float of two same-shaped payloads."""
    if isinstance(a, float):
        yield path, a, b
    elif isinstance(a, dict):
        for key in a:
            yield from _numbers(a[key], b[key], f"{path}.{key}" if path else key)
    elif isinstance(a, list):
        for x, y in zip(a, b):
            yield from _numbers(x, y, path)


def _relative(x: float, y: float) -> float:
    """|x - y| relative to the larger magnitude, and absolute below 1: most logged numbers are fractions
    (accuracies, contributions, α) that may cross zero, where a purely relative measure means nothing."""
    return 0.0 if x == y else abs(x - y) / max(abs(x), abs(y), 1.0)


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
