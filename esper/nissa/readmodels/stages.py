"""Seed stages as the read models store them: the stages' values (strings), as the events carry them."""

from esper.leyline.stages import ACTIVE_STAGES, LIVE_STAGES, SeedStage

LIVE = frozenset(s.value for s in LIVE_STAGES)
ACTIVE = frozenset(s.value for s in ACTIVE_STAGES)
FOSSILIZED = SeedStage.FOSSILIZED.value
CULLED = SeedStage.CULLED.value
DORMANT = SeedStage.DORMANT.value
