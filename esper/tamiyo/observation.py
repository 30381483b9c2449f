"""What a controller sees: a projection of the run's event stream.

Because the observation is folded from events (never read off the live trainer), the very same
observations can be rebuilt from any old log; that is what lets Simic learn offline from runs it
never saw.
"""

import attrs

from esper.leyline.events import EpochEnded, Event, RunStarted, SeedTransitioned
from esper.leyline.garden import Garden
from esper.leyline.lifecycle import LIFECYCLE, SeedState
from esper.leyline.stages import SeedStage


@attrs.frozen
class SlotView:
    slot: str
    seed_id: str | None
    stage: SeedStage
    blueprint: str | None
    alpha: float
    epochs_in_stage: int
    gradient_health: float
    contribution: float | None
    gate_open: bool
    """Whether `Advance` on this slot's seed would pass its gate now."""
    fossilized: int
    """How many seeds this slot has fossilized so far."""


@attrs.frozen
class Observation:
    epoch: int
    """Last finished epoch (0 before training)."""
    epochs: int
    """The run's epoch budget."""
    val_accuracy: float
    best_val_accuracy: float
    accuracy_history: tuple[float, ...]
    """Validation accuracy per finished epoch, oldest first."""
    train_loss: float
    val_loss: float
    plateau: int
    """Epochs since validation accuracy last improved on its best."""
    params: int
    host_params: int
    slots: tuple[SlotView, ...]
    blueprints: tuple[str, ...]
    culled_recently: dict[str, int]
    """Blueprint → epoch of its most recent cull."""
    garden: Garden = attrs.field(eq=False, repr=False)
    """A detached copy of the folded lifecycle state (for masks and legality): a controller may ask it
    anything, even fold into it, without touching the run; it changes the run only through its command."""


class ObservationProjection:
    """Folds events into the `Observation` a controller decides on."""

    def __init__(self) -> None:
        self.garden = Garden()
        self.epochs = 0
        self.host_params = 0
        self.history: list[EpochEnded] = []
        self.best = 0.0
        self.best_epoch = 0
        self.culled: dict[str, int] = {}
        self.fossilized: dict[str, int] = {}

    def apply(self, event: Event) -> None:
        self.garden.apply(event)
        if isinstance(event, RunStarted):
            self.epochs = event.config.epochs
            self.host_params = event.host_params
            self.fossilized = {slot: 0 for slot in event.slots}
        elif isinstance(event, EpochEnded):
            self.history.append(event)
            if event.val_accuracy > self.best:
                self.best, self.best_epoch = event.val_accuracy, event.epoch
        elif isinstance(event, SeedTransitioned):
            if event.to_stage == SeedStage.CULLED.value:
                self.culled[self.garden.seeds[event.seed_id].blueprint] = event.epoch or 0
            elif event.to_stage == SeedStage.FOSSILIZED.value:
                self.fossilized[event.slot] = self.fossilized.get(event.slot, 0) + 1

    def observe(self) -> Observation:
        last = self.history[-1] if self.history else None
        epoch = last.epoch if last else 0
        return Observation(
            epoch=epoch,
            epochs=self.epochs,
            val_accuracy=last.val_accuracy if last else 0.0,
            best_val_accuracy=self.best,
            accuracy_history=tuple(e.val_accuracy for e in self.history),
            train_loss=last.train_loss if last else 0.0,
            val_loss=last.val_loss if last else 0.0,
            plateau=epoch - self.best_epoch,
            params=last.params if last else self.host_params,
            host_params=self.host_params,
            slots=tuple(self._slot_view(slot) for slot in self.garden.slots),
            blueprints=tuple(self.garden.blueprints),
            culled_recently=dict(self.culled),
            garden=self.garden.snapshot(),
        )

    def _slot_view(self, slot: str) -> SlotView:
        seed: SeedState | None = self.garden.live_seed(slot)
        fossilized = self.fossilized.get(slot, 0)
        if seed is None:
            return SlotView(slot, None, SeedStage.DORMANT, None, 0.0, 0, 0.0, None, False, fossilized)
        t = seed.telemetry
        ctx = self.garden.gate_context()
        return SlotView(
            slot=slot,
            seed_id=seed.seed_id,
            stage=seed.stage,
            blueprint=seed.blueprint,
            alpha=t.alpha if t else 0.0,
            epochs_in_stage=seed.epochs_in_stage,
            gradient_health=t.gradient_health if t else 0.0,
            contribution=t.contribution if t else None,
            gate_open=LIFECYCLE.evaluate(seed, "advance", ctx),
            fossilized=fossilized,
        )
