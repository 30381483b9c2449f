"""The seven stages of a seed's life (DESIGN.md, Seed lifecycle)."""

import enum


class SeedStage(enum.Enum):
    DORMANT = "DORMANT"
    GERMINATED = "GERMINATED"
    TRAINING = "TRAINING"
    BLENDING = "BLENDING"
    FOSSILIZED = "FOSSILIZED"
    CULLED = "CULLED"
    EMBARGOED = "EMBARGOED"


# A seed in one of these stages occupies its slot; DORMANT and FOSSILIZED seeds do not.
LIVE_STAGES = frozenset(
    {SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.CULLED, SeedStage.EMBARGOED}
)

# A seed in one of these stages has a module that computes something in the forward pass.
ACTIVE_STAGES = frozenset({SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING})
