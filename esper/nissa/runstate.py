"""The state of a run: a left fold of its events through the lifecycle (DESIGN.md, Replay).

`RunState.fold(recorded)` checks the log as it goes (seq without gaps, RunStarted first, nothing after
the end, every transition legal through the one machine) and raises `IllegalEvent` with the position
of the first event it cannot fold. A run interrupted from outside and resumed (`RunResumed`) is one run.

It folds as the read models do (`esper.nissa.projection`): a handler per event type (`HANDLERS`), the status by
the rule every reader shares (`esper.leyline.status`). Unlike a projection's state it is no plain data: it holds
the lifecycle's `Garden`, judges every event as it folds it, and so updates itself in place (`apply(event)`, as
the Garden does) rather than returning a new state; snapshots (`esper.nissa.snapshot`) are its plain form.
"""

from typing import Any, ClassVar, Iterable

import attrs
import msgspec

from esper.errors import IllegalEvent
from esper.leyline.config import RunConfig
from esper.leyline.events import (
    CheckpointSaved,
    CommandIssued,
    CommandRejected,
    EpochEnded,
    Event,
    RunFailed,
    RunFinished,
    RunResumed,
    RunStarted,
    SeedGerminated,
    SeedTransitioned,
)
from esper.leyline.garden import Garden
from esper.leyline.status import INCOMPLETE, status_after
from esper.store.recorder import Recorded


@attrs.define
class RunState:
    run_id: str = ""
    config: RunConfig | None = None
    garden: Garden = attrs.Factory(Garden)
    epochs: list[EpochEnded] = attrs.Factory(list)
    commands: int = 0
    rejected: int = 0
    status: str = INCOMPLETE
    """The run's status (`esper.leyline.status`), folded by the rule every reader shares."""
    finished: RunFinished | None = None
    failed: RunFailed | None = None
    """The `RunFailed` that ends the run (None once a `RunResumed` continued it)."""
    last_seq: int = 0
    owed: list[tuple] = attrs.Factory(list)
    """What the last `CommandIssued` leads to (`_effect` of each event the garden decides for it) and the log
    has not shown yet: a command's recorded effects must be exactly what the machine decides for it now."""
    due: list[tuple] = attrs.Factory(list)
    """The automatic transitions the lifecycle's clock decided for the epoch being read, not yet seen."""
    ticked: int | None = None
    """The epoch whose automatic transitions `due` holds."""
    germinating: str | None = None
    """A seed just germinated: the next event must be its `germinate` (or `build`) transition."""

    HANDLERS: ClassVar[dict[type, str]] = {
        RunStarted: "_started", EpochEnded: "_epoch", CommandIssued: "_issued", CommandRejected: "_rejected",
        RunFinished: "_finished", RunFailed: "_failed", RunResumed: "_resumed",
    }
    """Event type → the method that folds it (as a projection's `HANDLERS`); the lifecycle's own
    events are folded by the garden."""

    @classmethod
    def fold(cls, recorded: Iterable[Recorded]) -> "RunState":
        state = cls()
        for r in recorded:
            state.apply_recorded(r)
        return state

    def apply_recorded(self, r: Recorded) -> None:
        if r.seq != self.last_seq + 1:
            raise IllegalEvent(f"run {r.run_id}: seq {r.seq} follows {self.last_seq}", r.position)
        try:
            self.apply(r.event)
        except IllegalEvent as exc:
            raise IllegalEvent(f"run {r.run_id}, seq {r.seq} ({type(r.event).__name__}): {exc}", r.position) from None
        self.run_id = r.run_id
        self.last_seq = r.seq

    def apply(self, event: Event) -> None:
        """Fold one event: check the log may hold it here, fold it by its type, then through the lifecycle."""
        if self.config is None and not isinstance(event, RunStarted):
            raise IllegalEvent(f"{type(event).__name__} before RunStarted")
        if self.status != INCOMPLETE and not isinstance(event, RunResumed):
            raise IllegalEvent(f"{type(event).__name__} after the run ended")
        handler = self.HANDLERS.get(type(event))
        if handler is not None:
            getattr(self, handler)(event)
        self.status = status_after(self.status, event)
        self._expect_ticks(event)
        self.garden.apply(event)  # the machine's rules first: they name what is wrong most precisely
        self._check_tick(event)
        self._settle(event)

    def _started(self, event: RunStarted) -> None:
        if self.config is not None:
            raise IllegalEvent("a second RunStarted")
        self.config = event.config

    def _epoch(self, event: EpochEnded) -> None:
        if self.epochs and event.epoch <= self.epochs[-1].epoch:
            raise IllegalEvent(f"epoch {event.epoch} after epoch {self.epochs[-1].epoch}")
        self.epochs.append(event)

    def _issued(self, event: CommandIssued) -> None:
        self.commands += 1

    def _rejected(self, event: CommandRejected) -> None:
        self.rejected += 1

    def _finished(self, event: RunFinished) -> None:
        self.finished = event

    def _failed(self, event: RunFailed) -> None:
        self.failed = event

    def _resumed(self, event: RunResumed) -> None:
        """One run, continued: a run cut off (no end) or interrupted from outside goes on after its last whole
        epoch; the interruption's `RunFailed` stays in the log and no longer ends the run."""
        if self.finished is not None or (self.failed is not None and not self.failed.interrupted):
            ended = "finished" if self.finished is not None else f"failed ({self.failed.error})"
            raise IllegalEvent(f"RunResumed after the run {ended}")
        last = self.epochs[-1].epoch if self.epochs else 0
        if event.epoch != last or event.checkpoint_epoch > last:
            raise IllegalEvent(f"RunResumed at epoch {event.epoch} from the checkpoint of epoch "
                               f"{event.checkpoint_epoch}; the log's last epoch is {last}")
        self.failed = None

    def _expect_ticks(self, event: Event) -> None:
        """At the first event of a new epoch e, what the lifecycle's clock decides before e trains (`Garden.tick`)."""
        epoch = event.epoch
        if isinstance(event, (SeedTransitioned, EpochEnded)) and epoch is not None and epoch >= 1 \
                and epoch != self.ticked and not (isinstance(event, SeedTransitioned) and event.trigger == "build"):
            self.due = [_tick(e) for e in self.garden.tick(epoch)]
            self.ticked = epoch

    def _check_tick(self, event: Event) -> None:
        """Hold the log to the lifecycle's clock: before epoch e trains, exactly the automatic transitions the
        clock decided are recorded, in order, and no other (a removed one is named too)."""
        epoch = event.epoch
        tick = _tick(event) if isinstance(event, SeedTransitioned) else None
        if tick is not None:
            if not self.due or self.due[0] != tick:
                raise IllegalEvent(f"rule tick: {' '.join(tick)} at epoch {epoch} is not what the lifecycle's "
                                   f"clock decides ({', '.join(' '.join(d) for d in self.due) or 'nothing due'})")
            self.due.pop(0)
        elif isinstance(event, EpochEnded) and self.due:
            raise IllegalEvent(f"rule tick: {' '.join(self.due[0])} was due before epoch {epoch} trained and is missing")

    def _settle(self, event: Event) -> None:
        """Hold the log to its commands: the effects a command leads to follow it, in order, and nothing a
        controller causes (a germination, an advance, a cull it asked for, a refusal) appears without one."""
        if self.germinating is not None and not (isinstance(event, SeedTransitioned) and event.seed_id ==
                                                 self.germinating and event.trigger in ("germinate", "build")):
            raise IllegalEvent(f"rule command: {self.germinating} germinated without its germinate transition")
        self.germinating = event.seed_id if isinstance(event, SeedGerminated) else None
        effect = _effect(event)
        if effect is not None:
            if not self.owed:
                raise IllegalEvent(f"rule command: {_said(effect)} with no command that leads to it")
            owed = self.owed.pop(0)
            if effect != owed:
                raise IllegalEvent(f"rule command: the log records {_said(effect)}, the command issued leads to "
                                   f"{_said(owed)}")
            return
        if self.owed and not isinstance(event, SeedGerminated):  # a germination's own effect is its transition
            raise IllegalEvent(f"rule command: {_said(self.owed[0])} is missing after its command")
        if isinstance(event, CommandIssued):
            self.owed = [e for e in map(_effect, self.garden.handle(event.command, event.epoch)) if e is not None]

    def stage_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for seed in self.garden.seeds.values():
            counts[seed.stage.value] = counts.get(seed.stage.value, 0) + 1
        return counts

    def summary(self) -> dict[str, Any]:
        """The run as plain data (what `esper replay --json` prints)."""
        last = self.epochs[-1] if self.epochs else None
        return {
            "run_id": self.run_id,
            "status": self.status,
            "config": None if self.config is None else msgspec.to_builtins(self.config),
            "epochs": len(self.epochs),
            "events": self.last_seq,
            "val_accuracy": self.finished.val_accuracy if self.finished else (last.val_accuracy if last else None),
            "test_accuracy": self.finished.test_accuracy if self.finished else None,
            "params": self.finished.params if self.finished else (last.params if last else None),
            "seeds": {
                s.seed_id: {
                    "slot": s.slot,
                    "blueprint": s.blueprint,
                    "params": s.params,
                    "stage": s.stage.value,
                    "history": [[epoch, stage.value] for epoch, stage in s.history],
                }
                for s in self.garden.seeds.values()
            },
            "stage_counts": self.stage_counts(),
            "metrics": [
                {"epoch": e.epoch, "train_loss": e.train_loss, "val_loss": e.val_loss,
                 "val_accuracy": e.val_accuracy, "params": e.params}
                for e in self.epochs
            ],
            "commands": self.commands,
            "rejected": self.rejected,
            "error": self.failed.error if self.failed else None,
        }


def as_one_run(recorded: Iterable[Recorded]) -> list[Recorded]:
    """The events an uninterrupted run would have written: without `CheckpointSaved`, `RunResumed` and the
    `RunFailed` of each interruption a `RunResumed` continued (what re-execution compares a resumed run with)."""
    out: list[Recorded] = []
    for r in recorded:
        if isinstance(r.event, RunResumed) and out and isinstance(out[-1].event, RunFailed):
            out.pop()
        if not isinstance(r.event, (CheckpointSaved, RunResumed)):
            out.append(r)
    return out


def _effect(event: Event) -> tuple | None:
    """What identifies `event` as the effect of a command, or None for an event no command causes (a tick's
    transitions, an automatic cull, a scratch run's build, the epoch's measurements). A germination is told
    by its `germinate` transition, which must follow its `SeedGerminated`; a build's follows with `build`."""
    if isinstance(event, SeedTransitioned) and (event.trigger in ("germinate", "advance") or (
            event.trigger == "cull" and not event.evidence.get("automatic"))):
        evidence = event.evidence
        return ("transitioned", event.trigger, event.seed_id, event.slot, evidence.get("blueprint"), evidence.get("reason"))
    if isinstance(event, CommandRejected):
        return ("rejected", msgspec.json.encode(event.command).decode())
    return None


def _said(effect: tuple) -> str:
    kind, *what = effect
    return f"{kind} {' '.join(str(w) for w in what if w is not None)}"


def _tick(event: SeedTransitioned) -> tuple | None:
    """(trigger, seed) of an automatic transition (a tick's: no command causes it), else None."""
    automatic = event.trigger in ("start_training", "cleanup", "cooldown_complete") or (
        event.trigger == "cull" and event.evidence.get("automatic"))
    return (event.trigger, event.seed_id) if automatic else None
