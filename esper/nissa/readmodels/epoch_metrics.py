"""`epoch_metrics`: one row per epoch of a run."""

import msgspec

from esper.leyline.events import EpochEnded, SeedTransitioned
from esper.nissa.projection import Projection
from esper.nissa.readmodels.stages import ACTIVE, FOSSILIZED, LIVE
from esper.nissa.tables import Table
from esper.store import Recorded


class EpochRow(msgspec.Struct):
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    params: int
    live_seeds: int
    active_seeds: int
    fossilized_seeds: int
    val_bits_per_char: float | None = None
    """Text task: the validation loss in bits per character (None for other tasks)."""


class EpochMetricsState(msgspec.Struct):
    stages: dict[str, str] = {}
    """Seed → its stage now."""
    rows: list[EpochRow] = []


class EpochMetrics(Projection):
    """One row per `EpochEnded`: losses, accuracy, parameter count, and how many seeds were where.

    `live_seeds` counts seeds occupying a slot (leyline's LIVE_STAGES: germinated, training, blending,
    culled, embargoed); `active_seeds` those computing in the forward pass (germinated, training, blending).
    """

    name = "epoch_metrics"
    version = 3
    state_type = EpochMetricsState
    tables = (Table("epoch_metrics", EpochRow, ("run_id", "epoch")),)

    HANDLERS = {EpochEnded: "_epoch", SeedTransitioned: "_transitioned"}

    def _transitioned(self, s: EpochMetricsState, r: Recorded) -> EpochMetricsState:
        s.stages[r.event.seed_id] = r.event.to_stage
        return s

    def _epoch(self, s: EpochMetricsState, r: Recorded) -> EpochMetricsState:
        e: EpochEnded = r.event
        stages = list(s.stages.values())
        s.rows.append(EpochRow(
            epoch=e.epoch, train_loss=e.train_loss, val_loss=e.val_loss, val_accuracy=e.val_accuracy,
            params=e.params, live_seeds=sum(x in LIVE for x in stages),
            active_seeds=sum(x in ACTIVE for x in stages), fossilized_seeds=stages.count(FOSSILIZED),
            val_bits_per_char=e.val_bits_per_char,
        ))
        return s

    def rows(self, state: EpochMetricsState) -> dict[str, list[EpochRow]]:
        return {"epoch_metrics": state.rows}
