"""The seed lifecycle as one `transitions` machine shared by every seed.

The machine holds no seeds (`model=None`): each seed keeps its own `stage`, and a transition is fired
with `machine.events[trigger].trigger(seed, ctx=...)`. Gates are the machine's conditions; each gate is
a pure function of the seed's folded state, the run's accuracy and the `LifecycleConfig`, and returns
the evidence it compared, which the caller writes into the `SeedTransitioned` event.
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
    """What a gate may read besides the seed, and where it leaves its evidence."""

    config: LifecycleConfig
    val_accuracy: float | None
    evidence: dict[str, Any] = attrs.Factory(dict)


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


def _condition(gate: Gate) -> Callable[[Any], bool]:
    def check(event_data) -> bool:
        ctx: GateContext = event_data.kwargs["ctx"]
        ok, evidence = gate(event_data.model, ctx)
        ctx.evidence.update(evidence)
        return ok

    check.__name__ = gate.__name__
    return check


TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "germinate", "source": S.DORMANT, "dest": S.GERMINATED},
    {"trigger": "start_training", "source": S.GERMINATED, "dest": S.TRAINING},
    {"trigger": "advance", "source": S.TRAINING, "dest": S.BLENDING, "conditions": [_condition(training_gate)]},
    {"trigger": "advance", "source": S.BLENDING, "dest": S.FOSSILIZED, "conditions": [_condition(fossilize_gate)]},
    {"trigger": "cull", "source": S.TRAINING, "dest": S.CULLED},
    {"trigger": "cull", "source": S.BLENDING, "dest": S.CULLED},
    {"trigger": "cleanup", "source": S.CULLED, "dest": S.EMBARGOED},
    {"trigger": "cooldown_complete", "source": S.EMBARGOED, "dest": S.DORMANT, "conditions": [_condition(embargo_gate)]},
]
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

    def allows(self, stage: S, trigger: str) -> bool:
        """Whether `trigger` leaves `stage` at all (gates not evaluated)."""
        return trigger in self._machine.get_triggers(stage.name)

    def destination(self, stage: S, trigger: str) -> S | None:
        for transition in self._machine.events[trigger].transitions.get(stage.name, []):
            return S[transition.dest]
        return None

    def evaluate(self, seed: SeedState, trigger: str, ctx: GateContext) -> bool:
        """Run the gate of `trigger` from the seed's stage without moving it; evidence lands in `ctx`."""
        if not self.allows(seed.stage, trigger):
            return False
        event = self._machine.events[trigger]
        for transition in event.transitions[seed.stage.name]:
            data = EventData(self._machine.get_model_state(seed), event, self._machine, seed, (), {"ctx": ctx})
            if all(condition.check(data) for condition in transition.conditions):
                return True
        return False

    def fire(self, seed: SeedState, trigger: str, ctx: GateContext) -> bool:
        """Move the seed through the machine. False (and no change) when illegal or the gate is shut."""
        if not self.allows(seed.stage, trigger):
            return False
        return self._machine.events[trigger].trigger(seed, ctx=ctx)


LIFECYCLE = Lifecycle()
