"""Blueprints: the modules a seed can be. Each maps an activation to a residual of the same shape.

A slot adds a seed's output to the activation it sees (`x + alpha * seed(x)`), so a blueprint is the
residual branch only. `BLUEPRINTS[family][name](channels)` builds one; family "conv1d" works on
(B, C, L) activations, "conv2d" on (B, C, H, W). Weights are initialised the ordinary way (PyTorch
defaults): a seed learns in isolation before it is blended, and blending starts at alpha = 0.
"""

from collections.abc import Callable

import torch
from torch import nn

EXPANSION = 4
"""How much `conv_heavy` widens the activation inside its residual."""


class SqueezeExcite(nn.Module):
    """Channel attention: pool over positions, a small bottleneck MLP, a sigmoid gate per channel.

    Returns `x * gate(x)`, so in a slot the activation becomes `x * (1 + alpha * gate)`.
    """

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(4, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.flatten(2).mean(dim=2)  # (B, C), works for 1-D and 2-D activations
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(squeezed))))
        return x * gate.view(*gate.shape, *([1] * (x.dim() - 2)))


def _family(conv: type[nn.Module], norm: type[nn.Module], dw_kernel: int) -> dict[str, Callable[[int], nn.Module]]:
    """The blueprints of one family, written once for 1-D and 2-D layers."""

    def conv_light(c: int) -> nn.Module:
        return nn.Sequential(conv(c, c, 3, padding=1), norm(c), nn.ReLU(), conv(c, c, 1))

    def conv_heavy(c: int) -> nn.Module:
        w = EXPANSION * c
        return nn.Sequential(
            conv(c, w, 3, padding=1), norm(w), nn.ReLU(),
            conv(w, w, 3, padding=1), norm(w), nn.ReLU(),
            conv(w, c, 1),
        )

    def depthwise(c: int) -> nn.Module:
        w = 2 * c
        return nn.Sequential(
            conv(c, w, 1), norm(w), nn.ReLU(),
            conv(w, w, dw_kernel, padding=dw_kernel // 2, groups=w), nn.ReLU(),
            conv(w, c, 1),
        )

    def attention(c: int) -> nn.Module:
        return SqueezeExcite(c)

    def norm_(c: int) -> nn.Module:
        return norm(c)

    return {
        "conv_light": conv_light,
        "conv_heavy": conv_heavy,
        "depthwise": depthwise,
        "attention": attention,
        "norm": norm_,
    }


BLUEPRINTS: dict[str, dict[str, Callable[[int], nn.Module]]] = {
    "conv1d": _family(nn.Conv1d, nn.BatchNorm1d, dw_kernel=5),
    "conv2d": _family(nn.Conv2d, nn.BatchNorm2d, dw_kernel=3),
}


def param_count(module: nn.Module) -> int:
    """Number of scalar parameters a built module holds."""
    return sum(p.numel() for p in module.parameters())


def blueprint_sizes(family: str, channels: int) -> dict[str, int]:
    """Parameters each blueprint of `family` holds at `channels`. Built on the meta device: no memory, and
    no draw from the torch RNG, so knowing the sizes changes nothing about a run's initialisation."""
    with torch.device("meta"):
        return {name: param_count(build(channels)) for name, build in BLUEPRINTS[family].items()}
