"""Gradient health: one number in 0..1 saying whether a seed's gradients are usable."""

import math

import torch

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


def step_health_tensor(norm: torch.Tensor) -> torch.Tensor:
    """`step_health` of a norm that stays on its device (float64, as the float version computes)."""
    n = norm.detach().double()
    # made on the device (a tensor built from Python numbers is copied there, and the step waits for the copy)
    bound = torch.full_like(n, EXPLODING).masked_fill_(n < VANISHING, VANISHING)
    outside = (1.0 - torch.log10(n / bound).abs() / DECADES).clamp(min=0.0)
    value = torch.where((n >= VANISHING) & (n <= EXPLODING), 1.0, outside)
    return torch.where(torch.isfinite(n) & (n > 0), value, 0.0)


class HealthMeter:
    """Sums `step_health` over an epoch's steps on the device the norms live on: no step waits to read a norm
    back; the epoch's end reads `total` once (`steps` counts on the host)."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.steps = 0

    def add(self, norm: torch.Tensor) -> None:
        self.total += step_health_tensor(norm)
        self.steps += 1
