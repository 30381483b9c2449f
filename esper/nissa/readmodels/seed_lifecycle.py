"""`seed_lifecycle` and `seed_stages`: each seed's life, and each stage it entered."""

from typing import Any

import msgspec

from esper.leyline.events import EpochEnded, SeedGerminated, SeedTransitioned
from esper.leyline.stages import SeedStage
from esper.nissa.projection import Projection
from esper.nissa.readmodels.stages import CULLED, DORMANT, FOSSILIZED, LIVE
from esper.nissa.tables import Table
from esper.store import Recorded


class SeedLifecycleRow(msgspec.Struct):
    seed_id: str
    slot: str
    blueprint: str
    params: int
    germinated_epoch: int | None
    epochs_germinated: int
    epochs_training: int
    epochs_blending: int
    epochs_culled: int
    epochs_embargoed: int
    final_stage: str
    ended_epoch: int | None
    contribution: float | None
    culled_by: str | None
    cull_reason: str | None
    built: bool
    """Built into the host before the first epoch (a scratch run's architecture), not germinated: no gate judged it."""


class StageRow(msgspec.Struct):
    seed_id: str
    slot: str
    stage: str
    entered_epoch: int | None
    entered_after: int
    left_epoch: int | None = None
    left_after: int | None = None
    epochs: int = 0


class SeedProgress(msgspec.Struct):
    """One seed as the fold goes: what `SeedLifecycleRow` is made of."""

    seed_id: str
    slot: str
    blueprint: str
    params: int
    germinated_epoch: int | None
    stage: str = DORMANT
    epochs: dict[str, int] = {}
    """Stage → epochs completed in it."""
    ended_epoch: int | None = None
    contribution: float | None = None
    last_contribution: float | None = None
    culled_by: str | None = None
    cull_reason: str | None = None
    built: bool = False

    def row(self) -> SeedLifecycleRow:
        def epochs(stage: SeedStage) -> int:
            return self.epochs.get(stage.value, 0)

        return SeedLifecycleRow(
            seed_id=self.seed_id, slot=self.slot, blueprint=self.blueprint, params=self.params,
            germinated_epoch=self.germinated_epoch, epochs_germinated=epochs(SeedStage.GERMINATED),
            epochs_training=epochs(SeedStage.TRAINING), epochs_blending=epochs(SeedStage.BLENDING),
            epochs_culled=epochs(SeedStage.CULLED), epochs_embargoed=epochs(SeedStage.EMBARGOED), final_stage=self.stage, ended_epoch=self.ended_epoch, contribution=self.contribution,
            culled_by=self.culled_by, cull_reason=self.cull_reason, built=self.built,
        )


class SeedLifecycleState(msgspec.Struct):
    completed: int = 0
    """Epochs completed so far (the last `EpochEnded.epoch`)."""
    seeds: dict[str, SeedProgress] = {}
    stages: list[StageRow] = []


class SeedLifecycle(Projection):
    """Per seed: where and what it was, epochs in each stage, how it ended and what it contributed then.

    `seed_stages` holds one row per stage a seed entered (DORMANT after an embargo excluded), with the
    epoch of the transition event and the number of epochs completed when it happened (`entered_after`,
    `left_after`): a transition of the automatic tick before epoch e trains has `*_after` = e - 1, one
    caused by the command issued after epoch e has `*_after` = e. Charts draw stage bands from these.
    `contribution` is the seed's last measured contribution when it fossilized or was culled (the cull
    evidence's value when an automatic cull compared one).
    """

    name = "seed_lifecycle"
    version = 3
    state_type = SeedLifecycleState
    tables = (
        Table("seed_lifecycle", SeedLifecycleRow, ("run_id", "germinated_epoch", "seed_id")),
        Table("seed_stages", StageRow, ("run_id", "seed_id", "entered_after", "left_after")),
    )

    HANDLERS = {SeedGerminated: "_germinated", SeedTransitioned: "_transitioned", EpochEnded: "_epoch"}

    def _germinated(self, s: SeedLifecycleState, r: Recorded) -> SeedLifecycleState:
        e: SeedGerminated = r.event
        s.seeds[e.seed_id] = SeedProgress(e.seed_id, e.slot, e.blueprint, e.params, e.epoch)
        return s

    def _transitioned(self, s: SeedLifecycleState, r: Recorded) -> SeedLifecycleState:
        e: SeedTransitioned = r.event
        seed = s.seeds.get(e.seed_id)
        if seed is None:  # a transition without its germination: nothing to attach it to
            return s
        for row in s.stages:
            if row.seed_id == e.seed_id and row.left_after is None:
                row.left_epoch, row.left_after = e.epoch, s.completed
        seed.stage = e.to_stage
        if e.to_stage != DORMANT:
            s.stages.append(StageRow(e.seed_id, e.slot, e.to_stage, e.epoch, s.completed))
        if e.to_stage == FOSSILIZED:
            seed.ended_epoch, seed.contribution = e.epoch, seed.last_contribution
            seed.built = e.trigger == "build"
        elif e.to_stage == CULLED:
            _culled(seed, e)
        return s

    def _epoch(self, s: SeedLifecycleState, r: Recorded) -> SeedLifecycleState:
        e: EpochEnded = r.event
        s.completed = e.epoch
        for seed in s.seeds.values():
            if seed.stage in LIVE:
                seed.epochs[seed.stage] = seed.epochs.get(seed.stage, 0) + 1
        for row in s.stages:
            if row.left_after is None and row.stage in LIVE:
                row.epochs += 1
        for t in e.seeds:
            seed = s.seeds.get(t.seed_id)
            if seed is not None and t.contribution is not None:
                seed.last_contribution = t.contribution
        return s

    def rows(self, state: SeedLifecycleState) -> dict[str, list[Any]]:
        return {"seed_lifecycle": [seed.row() for seed in state.seeds.values()], "seed_stages": state.stages}


def _culled(seed: SeedProgress, e: SeedTransitioned) -> None:
    """How and by whom the seed was culled, and what it contributed then (an automatic cull's measured value)."""
    evidence = e.evidence or {}
    measured = evidence.get("contribution")
    seed.ended_epoch = e.epoch
    seed.contribution = measured if isinstance(measured, (int, float)) else seed.last_contribution
    seed.culled_by = "automatic" if evidence.get("automatic") else "controller"
    why = evidence.get("reason") or evidence.get("why")
    seed.cull_reason = None if why is None else str(why)
