"""The lifecycle state of one run's slots: decides what a command does, and folds events.

`Garden` is an event-sourced aggregate. `handle(command)` and `tick()` only *decide*: they return the
events that would follow, and change nothing. `apply(event)` is the only way state changes, and it
moves seeds through the one lifecycle machine, so a live run and a replay of its log go through the
exact same code. An event the machine refuses raises `IllegalEvent`: it can never be folded silently.
"""

from typing import Any

import attrs

from esper.errors import IllegalEvent
from esper.leyline.commands import Advance, Command, Cull, Germinate, Wait
from esper.leyline.config import LifecycleConfig
from esper.leyline.events import (
    CommandRejected,
    EpochEnded,
    Event,
    RunStarted,
    SeedGerminated,
    SeedTransitioned,
)
from esper.leyline.lifecycle import LIFECYCLE, GateContext, SeedState, auto_cull_check
from esper.leyline.stages import ACTIVE_STAGES, LIVE_STAGES, SeedStage


@attrs.define
class Garden:
    config: LifecycleConfig = LifecycleConfig()
    slots: list[str] = attrs.Factory(list)
    blueprints: list[str] = attrs.Factory(list)
    seeds: dict[str, SeedState] = attrs.Factory(dict)
    """Every seed ever germinated in the run, in germination order."""
    host_params: int = 0
    seed_sizes: dict[str, dict[str, int]] = attrs.Factory(dict)
    """Slot → blueprint → parameters a seed would add (from `RunStarted`)."""
    epoch: int | None = None
    val_accuracy: float | None = None

    # ---- queries -------------------------------------------------------------------------------

    def live_seed(self, slot: str) -> SeedState | None:
        """The seed occupying `slot` (germinated, training, blending, culled or embargoed), if any."""
        for seed in self.seeds.values():
            if seed.slot == slot and seed.stage in LIVE_STAGES:
                return seed
        return None

    def active_seeds(self) -> list[SeedState]:
        return [s for s in self.seeds.values() if s.stage in ACTIVE_STAGES]

    def params(self) -> int:
        """Parameters the model would end with if every live seed were fossilized: the host, its fossils and
        its germinated, training and blending seeds. What `max_params` bounds."""
        grown = [s for s in self.seeds.values() if s.stage in ACTIVE_STAGES or s.stage is SeedStage.FOSSILIZED]
        return self.host_params + sum(s.params for s in grown)

    def next_seed_id(self, slot: str) -> str:
        return f"s{len(self.seeds) + 1}-{slot}"

    def gate_context(self) -> GateContext:
        return GateContext(self.config, self.val_accuracy)

    # ---- decisions (pure) ----------------------------------------------------------------------

    def handle(self, command: Command, epoch: int | None = None) -> list[Event]:
        """The events a command leads to: its effect, a `CommandRejected`, or nothing for `Wait`."""
        if isinstance(command, Wait):
            return []
        if isinstance(command, Germinate):
            return self._germinate(command, epoch)
        seed = self.seeds.get(command.seed_id)
        if seed is None:
            return [CommandRejected(epoch=epoch, command=command, reason=f"no seed {command.seed_id!r} in this run")]
        trigger = "advance" if isinstance(command, Advance) else "cull"
        reject = CommandRejected(epoch=epoch, command=command, reason="", seed_id=seed.seed_id, slot=seed.slot)
        if not LIFECYCLE.allows(seed.stage, trigger):
            return [_with_reason(reject, f"{trigger} is not allowed from {seed.stage.value}")]
        ctx = self.gate_context()
        if not LIFECYCLE.evaluate(seed, trigger, ctx):
            return [_with_reason(reject, f"gate closed: {_describe(ctx.evidence)}")]
        evidence = ctx.evidence
        if isinstance(command, Cull):
            evidence = {"reason": command.reason}
        return [self._transition(seed, trigger, evidence, epoch)]

    def _germinate(self, command: Germinate, epoch: int | None) -> list[Event]:
        reason = None
        occupant = self.live_seed(command.slot)
        if command.slot not in self.slots:
            reason = f"unknown slot {command.slot!r} (slots: {', '.join(self.slots)})"
        elif command.blueprint not in self.blueprints:
            reason = f"unknown blueprint {command.blueprint!r} (blueprints: {', '.join(self.blueprints)})"
        elif occupant is not None:
            reason = f"slot {command.slot} holds seed {occupant.seed_id} in {occupant.stage.value}"
        else:
            reason = self._over_cap(command)
        if reason is not None:
            return [CommandRejected(epoch=epoch, command=command, reason=reason, slot=command.slot)]
        seed_id = self.next_seed_id(command.slot)
        return [
            SeedGerminated(epoch=epoch, seed_id=seed_id, slot=command.slot, blueprint=command.blueprint, params=0),
            SeedTransitioned(
                epoch=epoch, seed_id=seed_id, slot=command.slot, from_stage=SeedStage.DORMANT.value,
                to_stage=SeedStage.GERMINATED.value, trigger="germinate", evidence={"blueprint": command.blueprint},
            ),
        ]

    def _over_cap(self, command: Germinate) -> str | None:
        cap = self.config.max_params
        if not cap:
            return None
        after = self.params() + self.seed_sizes[command.slot][command.blueprint]
        if after <= cap:
            return None
        return f"{command.blueprint} in {command.slot} would grow the model to {after:,} parameters, over max_params {cap:,}"

    def tick(self, epoch: int | None = None) -> list[Event]:
        """The automatic transitions due before `epoch` trains: start training, cleanup, cooldown, auto-cull."""
        events: list[Event] = []
        for seed in list(self.seeds.values()):
            ctx = self.gate_context()
            if seed.stage is SeedStage.GERMINATED:
                events.append(self._transition(seed, "start_training", {"automatic": True}, epoch))
            elif seed.stage is SeedStage.CULLED:
                events.append(self._transition(seed, "cleanup", {"automatic": True}, epoch))
            elif seed.stage is SeedStage.EMBARGOED:
                if LIFECYCLE.evaluate(seed, "cooldown_complete", ctx):
                    events.append(self._transition(seed, "cooldown_complete", ctx.evidence, epoch))
            else:
                cull, evidence = auto_cull_check(seed, ctx)
                if cull:
                    events.append(self._transition(seed, "cull", evidence, epoch))
        return events

    def _transition(self, seed: SeedState, trigger: str, evidence: dict[str, Any], epoch: int | None) -> SeedTransitioned:
        dest = LIFECYCLE.destination(seed.stage, trigger)
        assert dest is not None, f"{trigger} from {seed.stage}"
        return SeedTransitioned(
            epoch=epoch, seed_id=seed.seed_id, slot=seed.slot, from_stage=seed.stage.value,
            to_stage=dest.value, trigger=trigger, evidence=evidence,
        )

    def legal(self, command: Command) -> bool:
        """Whether `command` would take effect now (not be rejected)."""
        return not any(isinstance(e, CommandRejected) for e in self.handle(command))

    # ---- fold ----------------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Fold one event. Raises `IllegalEvent` if the lifecycle refuses it."""
        if isinstance(event, RunStarted):
            self.config = event.config.lifecycle
            self.slots = list(event.slots)
            self.blueprints = list(event.blueprints)
            self.host_params = event.host_params
            self.seed_sizes = {slot: dict(sizes) for slot, sizes in event.seed_sizes.items()}
        elif isinstance(event, EpochEnded):
            self._apply_epoch(event)
        elif isinstance(event, SeedGerminated):
            if event.seed_id in self.seeds:
                raise IllegalEvent(f"seed {event.seed_id} germinated twice")
            occupant = self.live_seed(event.slot)
            if occupant is not None:
                raise IllegalEvent(f"germination into slot {event.slot} held by {occupant.seed_id}")
            seed = SeedState(event.seed_id, event.slot, event.blueprint, params=event.params)
            seed.history.append((event.epoch, SeedStage.DORMANT))
            self.seeds[event.seed_id] = seed
        elif isinstance(event, SeedTransitioned):
            self._apply_transition(event)

    def _apply_epoch(self, event: EpochEnded) -> None:
        self.epoch = event.epoch
        self.val_accuracy = event.val_accuracy
        telemetry = {t.seed_id: t for t in event.seeds}
        for seed in self.seeds.values():
            if seed.stage in (SeedStage.DORMANT, SeedStage.FOSSILIZED):
                continue
            seed.epochs_in_stage += 1
            t = telemetry.get(seed.seed_id)
            if t is None:
                continue
            seed.telemetry = t
            if seed.first_loss_in_stage is None:
                seed.first_loss_in_stage = t.seed_loss
            if t.alpha >= 1.0:
                seed.epochs_at_full_alpha += 1

    def _apply_transition(self, event: SeedTransitioned) -> None:
        seed = self.seeds.get(event.seed_id)
        if seed is None:
            raise IllegalEvent(f"transition of unknown seed {event.seed_id}")
        if seed.stage.value != event.from_stage:
            raise IllegalEvent(f"{event.seed_id} is {seed.stage.value}, event says {event.from_stage}")
        if not LIFECYCLE.fire(seed, event.trigger, self.gate_context()):
            raise IllegalEvent(f"{event.trigger} {event.from_stage} → {event.to_stage} refused for {event.seed_id}")
        if seed.stage.value != event.to_stage:
            raise IllegalEvent(f"{event.trigger} led {event.seed_id} to {seed.stage.value}, event says {event.to_stage}")
        seed.history.append((event.epoch, seed.stage))
        seed.epochs_in_stage = 0
        seed.first_loss_in_stage = None
        seed.epochs_at_full_alpha = 0
        seed.stage_entry_accuracy = self.val_accuracy


def _with_reason(event: CommandRejected, reason: str) -> CommandRejected:
    return CommandRejected(epoch=event.epoch, command=event.command, reason=reason, seed_id=event.seed_id, slot=event.slot)


def _describe(evidence: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in evidence.items())


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def legal_commands(garden: Garden) -> list[Command]:
    """Every command the lifecycle would accept now: the source of action masks and of `random`."""
    candidates: list[Command] = [Germinate(slot=slot, blueprint=b) for slot in garden.slots for b in garden.blueprints]
    for seed in garden.seeds.values():
        candidates += [Advance(seed_id=seed.seed_id), Cull(seed_id=seed.seed_id, reason="controller")]
    return [Wait()] + [command for command in candidates if garden.legal(command)]
