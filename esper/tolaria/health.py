"""Gradient health: one number in 0..1 saying whether a seed's gradients are usable."""

import math

VANISHING = 1e-6
"""Below this gradient norm a step teaches the seed nothing."""
EXPLODING = 1e2
"""Above this gradient norm a step is likely to wreck the seed."""
DECADES = 3.0
"""How many orders of magnitude outside the healthy band a norm may stray before it scores 0."""


def step_health(norm: float) -> float:
    """1 inside [VANISHING, EXPLODING], falling linearly in log10 to 0 three decades outside; 0 if not finite."""
    if not math.isfinite(norm):
        return 0.0
    if norm <= 0.0:
        return 0.0
    if VANISHING <= norm <= EXPLODING:
        return 1.0
    bound = VANISHING if norm < VANISHING else EXPLODING
    return max(0.0, 1.0 - abs(math.log10(norm / bound)) / DECADES)


class HealthMeter:
    """Averages `step_health` over an epoch's steps."""

    def __init__(self) -> None:
        self.total = 0.0
        self.steps = 0

    def add(self, norm: float) -> None:
        self.total += step_health(norm)
        self.steps += 1

    @property
    def value(self) -> float:
        return self.total / self.steps if self.steps else 0.0
