"""The seed lifecycle as one `transitions` machine shared by every seed: the one judge.

The machine holds no seeds (`model=None`): each seed keeps its own `stage`, and a transition is fired
with `machine.events[trigger].trigger(seed, ctx=...)`. Every rule is one of the machine's conditions:
the germination rules (the slot exists and is free, the blueprint exists, the size cap), the gates, the
embargo, automatic culls, a cull's reason and the scratch baseline's build. Each rule is a pure function
of the seed, the run's folded state (`GateContext.garden`) and what the command or the recorded event
claims (`GateContext.claim`); it returns whether it holds and its evidence. The evidence of the rules
that held is the transition's (the caller writes it into `SeedTransitioned`); the first rule that fails
leaves `GateContext.refusal`: `{"rule": name, ...the numbers it compared}`.
"""

import math
from typing import Any, Callable

import attrs
from transitions import Machine
from transitions.core import EventData

from esper.leyline.config import LifecycleConfig
from esper.leyline.events import SeedTelemetry
from esper.leyline.stages import SeedStage as S


@attrs.define
class SeedState:
    """One seed as the lifecycle sees it: identity, stage, and the telemetry its gates read."""

    seed_id: str
    slot: str
    blueprint: str
    params: int = 0
    stage: S = S.DORMANT
    epochs_in_stage: int = 0
    telemetry: SeedTelemetry | None = None
    first_loss_in_stage: float | None = None
    stage_entry_accuracy: float | None = None
    epochs_at_full_alpha: int = 0
    history: list[tuple[int | None, S]] = attrs.Factory(list)
    """(epoch, stage entered), in order, starting with DORMANT."""


@attrs.define
class GateContext:
    """What a rule may read besides the seed, and where it leaves its evidence."""

    config: LifecycleConfig
    val_accuracy: float | None
    evidence: dict[str, Any] = attrs.Factory(dict)
    """The evidence of the rules that held: what the transition records."""
    garden: Any = None
    """The run's folded state (`esper.leyline.garden.Garden`): slots, blueprints, sizes, occupants, config."""
    claim: dict[str, Any] = attrs.Factory(dict)
    """What the command or the recorded event asserts: a cull's `reason` or `automatic`, a build's index."""
    refusal: dict[str, Any] | None = None
    """Set by the first rule that failed: `{"rule": name, ...its evidence}`."""
    recorded: dict[str, Any] | None = None
    """The evidence a recorded transition stores (replay): the machine refuses the move unless the rules'
    evidence, recomputed from the fold, is exactly this."""


Gate = Callable[[SeedState, GateContext], tuple[bool, dict[str, Any]]]


def training_gate(seed: SeedState, ctx: GateContext) -> tuple[bool, dict[str, Any]]:
    """TRAINING → BLENDING: healthy gradients, enough epochs, and the seed's own loss improving."""
    cfg = ctx.config
    health = seed.telemetry.gradient_health if seed.telemetry else 0.0
    loss = seed.telemetry.seed_loss if seed.telemetry else None
    improving = loss is not None and seed.first_loss_in_stage is not None and loss < seed.first_loss_in_stage
    evidence = {
        "gradient_health": health,
        "gradient_health_threshold": cfg.gradient_health_threshold,
        "epochs_in_stage": seed.epochs_in_stage,
        "min_training_epochs": cfg.min_training_epochs,
        "seed_loss": loss,
        "seed_loss_at_entry": seed.first_loss_in_stage,
    }
    ok = health >= cfg.gradient_health_threshold and seed.epochs_in_stage >= cfg.min_training_epochs and improving
    return ok, evidence


def fossilize_gate(seed: SeedState, ctx: GateContext) -> tuple[bool, dict[str, Any]]:
    """BLENDING → FOSSILIZED: α reached 1, held over the stability window, host accuracy not regressed."""
    cfg = ctx.config
    alpha = seed.telemetry.alpha if seed.telemetry else 0.0
    baseline = seed.stage_entry_accuracy
    regression = None if baseline is None or ctx.val_accuracy is None else baseline - ctx.val_accuracy
    evidence = {
        "alpha": alpha,
        "epochs_at_full_alpha": seed.epochs_at_full_alpha,
        "stability_window": cfg.stability_window,
        "val_accuracy": ctx.val_accuracy,
        "val_accuracy_at_blend_start": baseline,
        "regression_tolerance": cfg.regression_tolerance,
    }
    ok = (
        alpha >= 1.0
        and seed.epochs_at_full_alpha >= cfg.stability_window
        and regression is not None
        and regression <= cfg.regression_tolerance
    )
    return ok, evidence


def embargo_gate(seed: SeedState, ctx: GateContext) -> tuple[bool, dict[str, Any]]:
    """EMBARGOED → DORMANT after the embargo length."""
    evidence = {"epochs_in_stage": seed.epochs_in_stage, "embargo_epochs": ctx.config.embargo_epochs}
    return seed.epochs_in_stage >= ctx.config.embargo_epochs, evidence


def auto_cull_check(seed: SeedState, ctx: GateContext) -> tuple[bool, dict[str, Any]]:
    """Whether a seed should be culled without being asked: diverged while training, or hurting once blended."""
    t = seed.telemetry
    if t is None:
        return False, {}
    if seed.stage is S.TRAINING and seed.epochs_in_stage > 0:
        diverged = t.seed_loss is not None and not math.isfinite(t.seed_loss)
        return diverged or t.gradient_health <= 0.0, {
            "automatic": True, "why": "seed diverged", "gradient_health": t.gradient_health, "seed_loss": t.seed_loss,
        }
    if seed.stage is S.BLENDING and t.contribution is not None:
        cfg = ctx.config
        hurting = seed.epochs_at_full_alpha >= cfg.auto_cull_patience and t.contribution < cfg.auto_cull_contribution
        return hurting, {
            "automatic": True, "why": "regression", "contribution": t.contribution,
            "auto_cull_contribution": cfg.auto_cull_contribution, "epochs_at_full_alpha": seed.epochs_at_full_alpha,
        }
    return False, {}


# ---- germination rules (germinate and build) -------------------------------------------------------


def slot_known(seed: SeedState, ctx: GateContext) -> tuple[bool, dict[str, Any]]:
    slots = list(ctx.garden.slots)
    return seed.slot in slots, {} if seed.slot in slots else {"slot": seed.slot, "slots": slots}


def blueprint_known(seed: SeedState, ctx: GateContext) -> tuple[bool, dict[str, Any]]:
    """The run offers the blueprint, and so does the slot's family: a user's model may hold slots of several
    families (a convolution's, an MLP head's), and `RunStarted.seed_sizes` lists what each slot can hold (a log
    written before it has no such list: the run's blueprints alone decide)."""
    blueprints = list(ctx.garden.blueprints)
    if seed.blueprint not in blueprints:
        return False, {"blueprint": seed.blueprint, "blueprints": blueprints}
    offered = ctx.garden.seed_sizes.get(seed.slot)
    if offered is not None and seed.blueprint not in offered:
        return False, {"blueprint": seed.blueprint, "slot": seed.slot, "blueprints": sorted(offered)}
    return True, {"blueprint": seed.blueprint}


def slot_free(seed: SeedState, ctx: GateContext) -> tuple[bool, dict[str, Any]]:
    """The slot holds no live seed; one culled or embargoed there is the embargo rule."""
    occupant = ctx.garden.live_seed(seed.slot)
    if occupant is None or occupant is seed:
        return True, {}
    evidence = {"slot": seed.slot, "seed_id": occupant.seed_id, "stage": occupant.stage.value}
    if occupant.stage in (S.CULLED, S.EMBARGOED):
        evidence |= {"rule": "embargo", "epochs_in_stage": occupant.epochs_in_stage,
                     "embargo_epochs": ctx.config.embargo_epochs}
    return False, evidence


def under_cap(seed: SeedState, ctx: GateContext) -> tuple[bool, dict[str, Any]]:
    """`max_params` bounds the host, its fossils and its live seeds plus this one (its size from `seed_sizes`)."""
    cap = ctx.config.max_params
    if not cap:
        return True, {}
    after = ctx.garden.params() + seed.params
    return after <= cap, {} if after <= cap else {"slot": seed.slot, "blueprint": seed.blueprint, "after": after,
                                                  "max_params": cap}


GERMINATION_RULES: tuple[tuple[str, Gate], ...] = (
    ("unknown_slot", slot_known), ("unknown_blueprint", blueprint_known), ("slot_occupied", slot_free),
    ("max_params", under_cap),
)


def built_by_config(seed: SeedState, ctx: GateContext) -> tuple[bool, dict[str, Any]]:
    """DORMANT → FOSSILIZED at epoch 0, only for the (slot, blueprint) pairs the run's config names, each once."""
    garden = ctx.garden
    index = ctx.claim.get("architecture_index")
    evidence = {"like": garden.like, "architecture_index": index}
    architecture = [tuple(a) for a in garden.architecture]
    why = None
    if not architecture:
        why = "the run's config names no architecture"
    elif garden.epoch is not None:
        why = f"a build after epoch {garden.epoch}: seeds are built before the first epoch only"
    elif not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(architecture):
        why = f"architecture_index {index!r} is not one of the config's {len(architecture)}"
    elif architecture[index] != (seed.slot, seed.blueprint):
        why = f"the config's architecture[{index}] is {architecture[index]}, not {(seed.slot, seed.blueprint)}"
    elif index in garden.built:
        why = f"architecture[{index}] is built already"
    return why is None, evidence if why is None else {**evidence, "why": why}


# ---- cull and automatic transitions -------------------------------------------------------------------


def cull_justified(seed: SeedState, ctx: GateContext) -> tuple[bool, dict[str, Any]]:
    """An automatic cull must be due now (`auto_cull_check`, recomputed); a controller's must give a reason."""
    if ctx.claim.get("automatic"):
        due, evidence = auto_cull_check(seed, ctx)
        return due, evidence if due else {"rule": "auto_cull", **evidence}
    reason = ctx.claim.get("reason")
    if isinstance(reason, str) and reason.strip():
        return True, {"reason": reason}
    return False, {"reason": reason}


def automatic(seed: SeedState, ctx: GateContext) -> tuple[bool, dict[str, Any]]:
    """start_training and cleanup follow by themselves; their evidence says so."""
    return True, {"automatic": True}


def _condition(gate: Gate, rule: str) -> Callable[[Any], bool]:
    def check(event_data) -> bool:
        ctx: GateContext = event_data.kwargs["ctx"]
        ok, evidence = gate(event_data.model, ctx)
        if ok:
            ctx.evidence.update(evidence)
        else:
            ctx.refusal = {"rule": rule, **evidence}
        return ok

    check.__name__ = gate.__name__
    return check


def _as_recorded(event_data) -> bool:
    """The last condition of every move: in replay, the recorded evidence is what the rules recompute."""
    ctx: GateContext = event_data.kwargs["ctx"]
    if ctx.recorded is None or same_evidence(ctx.evidence, ctx.recorded):
        return True
    ctx.refusal = {"rule": "evidence", "why": evidence_difference(ctx.recorded, ctx.evidence)}
    return False


def same_evidence(a: Any, b: Any) -> bool:
    """Evidence equality as a JSON log keeps it (a tuple reads back as a list, True is not 1)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_evidence(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_evidence(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def evidence_difference(recorded: dict[str, Any], recomputed: dict[str, Any]) -> str:
    for key in [*recorded, *(k for k in recomputed if k not in recorded)]:
        a, b = recorded.get(key, "nothing"), recomputed.get(key, "nothing")
        if not same_evidence(a, b):
            return f"{key} recorded {short(a)}, the fold recomputes {short(b)}"
    return "the evidence differs"


def short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


_GERMINATION = [_condition(gate, rule) for rule, gate in GERMINATION_RULES]

TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "germinate", "source": S.DORMANT, "dest": S.GERMINATED, "conditions": _GERMINATION},
    {"trigger": "start_training", "source": S.GERMINATED, "dest": S.TRAINING,
     "conditions": [_condition(automatic, "automatic")]},
    {"trigger": "advance", "source": S.TRAINING, "dest": S.BLENDING,
     "conditions": [_condition(training_gate, "training_gate")]},
    {"trigger": "advance", "source": S.BLENDING, "dest": S.FOSSILIZED,
     "conditions": [_condition(fossilize_gate, "fossilize_gate")]},
    {"trigger": "cull", "source": S.TRAINING, "dest": S.CULLED, "conditions": [_condition(cull_justified, "cull_reason")]},
    {"trigger": "cull", "source": S.BLENDING, "dest": S.CULLED, "conditions": [_condition(cull_justified, "cull_reason")]},
    {"trigger": "cleanup", "source": S.CULLED, "dest": S.EMBARGOED, "conditions": [_condition(automatic, "automatic")]},
    {"trigger": "cooldown_complete", "source": S.EMBARGOED, "dest": S.DORMANT,
     "conditions": [_condition(embargo_gate, "embargo_gate")]},
    {"trigger": "build", "source": S.DORMANT, "dest": S.FOSSILIZED,
     "conditions": [*_GERMINATION, _condition(built_by_config, "build")]},
]
for _move in TRANSITIONS:
    _move["conditions"] = [*_move["conditions"], _as_recorded]
TRIGGERS = tuple(dict.fromkeys(t["trigger"] for t in TRANSITIONS))


class Lifecycle:
    """The one machine. `fire` moves a seed if the transition exists from its stage and its gate opens."""

    def __init__(self) -> None:
        self._machine = Machine(
            model=None,
            states=S,
            transitions=TRANSITIONS,
            initial=None,
            send_event=True,
            auto_transitions=False,
            model_attribute="stage",
        )

        # (stage, trigger) → destination, read once from the machine: asking it (`get_triggers`) walks
        # every event each time, and replay asks for every event it folds.
        self._moves = {
            (S[source], trigger): S[transition.dest]
            for trigger, event in self._machine.events.items()
            for source, transitions in event.transitions.items()
            for transition in transitions
        }

    def allows(self, stage: S, trigger: str) -> bool:
        """Whether `trigger` leaves `stage` at all (gates not evaluated)."""
        return (stage, trigger) in self._moves

    def destination(self, stage: S, trigger: str) -> S | None:
        return self._moves.get((stage, trigger))

    def evaluate(self, seed: SeedState, trigger: str, ctx: GateContext) -> bool:
        """Run the rules of `trigger` from the seed's stage without moving it; evidence (or the refusal)
        lands in `ctx`."""
        if not self.allows(seed.stage, trigger):
            ctx.refusal = {"rule": "illegal_move", "trigger": trigger, "stage": seed.stage.value}
            return False
        event = self._machine.events[trigger]
        for transition in event.transitions[seed.stage.name]:
            data = EventData(self._machine.get_model_state(seed), event, self._machine, seed, (), {"ctx": ctx})
            if all(condition.check(data) for condition in transition.conditions):
                return True
        return False

    def fire(self, seed: SeedState, trigger: str, ctx: GateContext) -> bool:
        """Move the seed through the machine. False (and no change) when illegal or a rule refuses.

        The move's conditions are the machine's, evaluated as `trigger` would; the state is then set by the
        machine directly. The machine has no enter/exit/before/after callbacks, so this is what triggering
        does, without the per-call bookkeeping that made it most of a replay's time."""
        if not self.evaluate(seed, trigger, ctx):
            return False
        self._machine.set_state(self._moves[(seed.stage, trigger)], model=seed)
        return True


LIFECYCLE = Lifecycle()
