"""The lifecycle state of one run's slots: decides what a command does, and folds events.

`Garden` is an event-sourced aggregate. `handle(command)`, `tick()` and `build()` only *decide*: they
return the events that would follow, and change nothing. `apply(event)` is the only way state changes,
and it re-judges every event through the one lifecycle machine (the same conditions `handle` asked), so
a live run and a replay of its log go through the exact same rules. An event the machine refuses, or
whose recorded evidence differs from what the fold recomputes, raises `IllegalEvent` naming the rule:
it can never be folded silently.
"""

import copy
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
from esper.leyline.lifecycle import LIFECYCLE, GateContext, SeedState, short
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
    architecture: list[tuple[str, str]] = attrs.Factory(list)
    """(slot, blueprint) the run's config builds up front (the `scratch` baseline)."""
    like: str | None = None
    """The run whose architecture `architecture` is (`RunConfig.like`)."""
    built: set[int] = attrs.Factory(set)
    """Indices of `architecture` built so far."""

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

    def gate_context(self, claim: dict[str, Any] | None = None) -> GateContext:
        return GateContext(self.config, self.val_accuracy, garden=self, claim=dict(claim or {}))

    # ---- decisions (pure) ----------------------------------------------------------------------

    def handle(self, command: Command, epoch: int | None = None) -> list[Event]:
        """The events a command leads to: its effect, a `CommandRejected`, or nothing for `Wait`."""
        if isinstance(command, Wait):
            return []
        if isinstance(command, Germinate):
            return self._germinate(command, epoch)
        seed = self.seeds.get(command.seed_id)
        if seed is None:
            return [_reject(command, epoch, {"rule": "unknown_seed", "seed_id": command.seed_id})]
        trigger = "advance" if isinstance(command, Advance) else "cull"
        ctx = self.gate_context({"reason": command.reason} if isinstance(command, Cull) else {})
        if not LIFECYCLE.evaluate(seed, trigger, ctx):
            return [_reject(command, epoch, ctx.refusal, seed)]
        return [self._transition(seed, trigger, ctx.evidence, epoch)]

    def _germinate(self, command: Germinate, epoch: int | None) -> list[Event]:
        seed = self.candidate(self.next_seed_id(command.slot), command.slot, command.blueprint)
        ctx = self.gate_context()
        if not LIFECYCLE.evaluate(seed, "germinate", ctx):
            return [_reject(command, epoch, ctx.refusal, slot=command.slot)]
        return self._germination(seed, "germinate", ctx.evidence, epoch)

    def build(self, index: int, epoch: int = 0) -> list[Event]:
        """The events that build the config's `architecture[index]` into the host (DORMANT → FOSSILIZED, the
        `scratch` baseline). Raises `IllegalEvent` naming the rule when the machine refuses it."""
        slot, blueprint = self.architecture[index]
        seed = self.candidate(f"built{index + 1}-{slot}", slot, blueprint)
        ctx = self.gate_context({"architecture_index": index})
        if not LIFECYCLE.evaluate(seed, "build", ctx):
            raise IllegalEvent(f"architecture[{index}] ({blueprint} in {slot}) cannot be built: {_ruled(ctx.refusal)}")
        return self._germination(seed, "build", ctx.evidence, epoch)

    def candidate(self, seed_id: str, slot: str, blueprint: str) -> SeedState:
        """A DORMANT seed as a germination would create it, with the parameters the garden counts for it."""
        return SeedState(seed_id, slot, blueprint, params=self.seed_size(slot, blueprint) or 0)

    def seed_size(self, slot: str, blueprint: str) -> int | None:
        """Parameters a `blueprint` seed adds in `slot` (from `RunStarted.seed_sizes`; None when not recorded)."""
        return self.seed_sizes.get(slot, {}).get(blueprint)

    def _germination(self, seed: SeedState, trigger: str, evidence: dict[str, Any], epoch: int | None) -> list[Event]:
        dest = LIFECYCLE.destination(SeedStage.DORMANT, trigger)
        assert dest is not None
        return [
            SeedGerminated(epoch=epoch, seed_id=seed.seed_id, slot=seed.slot, blueprint=seed.blueprint, params=seed.params),
            SeedTransitioned(epoch=epoch, seed_id=seed.seed_id, slot=seed.slot, from_stage=SeedStage.DORMANT.value,
                             to_stage=dest.value, trigger=trigger, evidence=evidence),
        ]

    def tick(self, epoch: int | None = None) -> list[Event]:
        """The automatic transitions due before `epoch` trains: start training, cleanup, cooldown, auto-cull."""
        events: list[Event] = []
        for seed in list(self.seeds.values()):
            trigger = _AUTOMATIC.get(seed.stage)
            if trigger is None:
                continue
            ctx = self.gate_context({"automatic": True} if trigger == "cull" else {})
            if LIFECYCLE.evaluate(seed, trigger, ctx):
                events.append(self._transition(seed, trigger, ctx.evidence, epoch))
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

    def snapshot(self) -> "Garden":
        """A detached deep copy: what a controller may read (and scribble on) without touching the run."""
        return copy.deepcopy(self)

    # ---- fold ----------------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Fold one event, re-judging it through the machine. Raises `IllegalEvent` if the lifecycle refuses it."""
        if isinstance(event, RunStarted):
            self.config = event.config.lifecycle
            self.slots = list(event.slots)
            self.blueprints = list(event.blueprints)
            self.host_params = event.host_params
            self.seed_sizes = {slot: dict(sizes) for slot, sizes in event.seed_sizes.items()}
            self.architecture = [tuple(a) for a in event.config.architecture]
            self.like = event.config.like
        elif isinstance(event, EpochEnded):
            self._apply_epoch(event)
        elif isinstance(event, SeedGerminated):
            self._apply_germination(event)
        elif isinstance(event, SeedTransitioned):
            self._apply_transition(event)
        elif isinstance(event, CommandRejected):
            self._apply_rejection(event)

    def _apply_germination(self, event: SeedGerminated) -> None:
        if event.seed_id in self.seeds:
            raise IllegalEvent(f"seed {event.seed_id} germinated twice")
        size = self.seed_size(event.slot, event.blueprint)
        if size is not None and event.params != size:
            raise IllegalEvent(f"rule params: {event.seed_id} records {event.params:,} parameters, "
                               f"{event.blueprint} in {event.slot} has {size:,}")
        seed = SeedState(event.seed_id, event.slot, event.blueprint, params=event.params)
        ctx = self.gate_context()
        if not LIFECYCLE.evaluate(seed, "germinate", ctx):  # the rules germinate and build share
            raise IllegalEvent(f"germination of {event.seed_id} refused: {_ruled(ctx.refusal)}")
        seed.history.append((event.epoch, SeedStage.DORMANT))
        self.seeds[event.seed_id] = seed

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
        move = f"{event.trigger} {event.from_stage} → {event.to_stage} of {event.seed_id}"
        dest = LIFECYCLE.destination(seed.stage, event.trigger)
        if dest is None or dest.value != event.to_stage:
            raise IllegalEvent(f"{move} refused: rule illegal_move: the lifecycle has no such move")
        claim = dict(event.evidence)
        ctx = self.gate_context(claim)
        ctx.recorded = claim
        if not LIFECYCLE.fire(seed, event.trigger, ctx):  # every rule, and the evidence as recorded, in one pass
            raise IllegalEvent(f"{move} refused: {_ruled(ctx.refusal)}")
        assert seed.stage is dest
        if event.trigger == "build":
            self.built.add(claim["architecture_index"])
        seed.history.append((event.epoch, seed.stage))
        seed.epochs_in_stage = 0
        seed.telemetry = None  # a stage's rules read what was measured in it (a new blend, not its training)
        seed.first_loss_in_stage = None
        seed.epochs_at_full_alpha = 0
        seed.stage_entry_accuracy = self.val_accuracy

    def _apply_rejection(self, event: CommandRejected) -> None:
        """A recorded refusal is re-judged too: the machine must refuse the command now, by the same rule."""
        outcome = self.handle(event.command, event.epoch)
        refused = [e for e in outcome if isinstance(e, CommandRejected)]
        if not refused:
            raise IllegalEvent(f"rule rejection: the log refuses {type(event.command).__name__} "
                               f"({event.reason}), the lifecycle accepts it")
        rule = event.evidence.get("rule")
        if rule is not None and rule != refused[0].evidence.get("rule"):
            raise IllegalEvent(f"rule rejection: the log refuses by rule {rule}, the lifecycle by "
                               f"{refused[0].evidence.get('rule')}")


_AUTOMATIC = {
    SeedStage.GERMINATED: "start_training", SeedStage.CULLED: "cleanup", SeedStage.EMBARGOED: "cooldown_complete",
    SeedStage.TRAINING: "cull", SeedStage.BLENDING: "cull",
}
"""The transition `tick` tries for a seed in each stage (a cull with `automatic`: `auto_cull_check`)."""


def _reject(command: Command, epoch: int | None, refusal: dict[str, Any] | None, seed: SeedState | None = None,
            slot: str | None = None) -> CommandRejected:
    refusal = dict(refusal or {"rule": "unknown"})
    return CommandRejected(epoch=epoch, command=command, reason=describe_refusal(refusal), evidence=refusal,
                           seed_id=seed.seed_id if seed else None, slot=seed.slot if seed else slot)


def describe_refusal(refusal: dict[str, Any] | None) -> str:
    """The human line of a refusal (a `CommandRejected.reason`): the rule's own words, else `gate closed: ...`."""
    ev = dict(refusal or {})
    rule = ev.pop("rule", "unknown")
    if rule == "unknown_slot":
        return f"unknown slot {ev['slot']!r} (slots: {', '.join(ev['slots'])})"
    if rule == "unknown_blueprint":
        where = f" in slot {ev['slot']}" if "slot" in ev else ""  # one its family does not offer
        return f"unknown blueprint {ev['blueprint']!r}{where} (blueprints: {', '.join(ev['blueprints'])})"
    if rule in ("slot_occupied", "embargo"):
        return f"slot {ev['slot']} holds seed {ev['seed_id']} in {ev['stage']}"
    if rule == "max_params":
        return (f"{ev['blueprint']} in {ev['slot']} would grow the model to {ev['after']:,} parameters, "
                f"over max_params {ev['max_params']:,}")
    if rule == "unknown_seed":
        return f"no seed {ev['seed_id']!r} in this run"
    if rule == "illegal_move":
        return f"{ev['trigger']} is not allowed from {ev['stage']}"
    if rule == "cull_reason":
        return f"a cull needs a reason (got {ev.get('reason')!r})"
    if rule == "build":
        return f"build refused: {ev.get('why')}"
    if rule == "evidence":
        return ev["why"]
    if rule == "auto_cull":
        return f"automatic cull not due: {_describe(ev)}"
    return f"gate closed: {_describe(ev)}"


def _ruled(refusal: dict[str, Any] | None) -> str:
    """A refusal for an `IllegalEvent`: `rule NAME: ...` with the numbers compared."""
    return f"rule {(refusal or {}).get('rule', 'unknown')}: {describe_refusal(refusal)}"


def _describe(evidence: dict[str, Any]) -> str:
    return ", ".join(f"{k}={short(v)}" for k, v in evidence.items())


def legal_commands(garden: Garden) -> list[Command]:
    """Every command the lifecycle would accept now: the source of action masks and of `random`."""
    candidates: list[Command] = [Germinate(slot=slot, blueprint=b) for slot in garden.slots for b in garden.blueprints]
    for seed in garden.seeds.values():
        candidates += [Advance(seed_id=seed.seed_id), Cull(seed_id=seed.seed_id, reason="controller")]
    return [Wait()] + [command for command in candidates if garden.legal(command)]
