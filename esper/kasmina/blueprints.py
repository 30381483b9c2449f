"""Blueprints: the modules a seed can be. Each maps an activation to a residual of the same shape.

A slot adds a seed's output to the activation it sees (`x + alpha * seed(x)`), so a blueprint is the
residual branch only. `BLUEPRINTS[family][name](channels)` builds one; family "conv1d" works on
(B, C, L) activations, "conv2d" on (B, C, H, W), "sequence" and "causal_sequence" on (B, T, D) (the same
blueprints; in the causal family a position attends to itself and earlier ones only), "features" on (B, D) (an
MLP's hidden layers: the sequence blueprints that need no positions). Convolution weights are
initialised the ordinary way (PyTorch defaults): a seed learns in isolation before it is blended, and blending
starts at alpha = 0. A sequence blueprint's last layer starts at zero, as in transformers' residual branches
(and LoRA's up-projection): it contributes nothing until it has learned something, even fully in.

One blueprint is not built from the slot's width but from the host: `repeat` (`REPEAT`) is a copy of the host block
the slot follows, so that fully in it applies that block once more (growth by depth). It fits a slot after a block
with parameters that maps its one input to an output of the same shape (a transformer's blocks, a residual block of
unchanged width: `Slot.repeats`, which `esper.grow` finds); `GrowableModel` builds it.
"""

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

EXPANSION = 4
"""How much `conv_heavy` and the sequence `mlp` widen the activation inside their residual."""
HEAD_WIDTH = 16
"""Channels per attention head (fewer heads when the width does not divide)."""
RANK_DIVISOR = 8
"""The low-rank adapter's rank is the width over this (at least 1)."""


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


class SelfAttention(nn.Module):
    """Multi-head self-attention over (B, T, D): the transformer host's and the `attention` seed's. `causal`: a
    position attends to itself and earlier ones only."""

    def __init__(self, width: int, causal: bool, heads: int | None = None):
        super().__init__()
        self.heads = heads or next(h for h in range(max(1, width // HEAD_WIDTH), 0, -1) if width % h == 0)
        self.causal = causal
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, causal={self.causal}"


def mlp(width: int, hidden: int) -> nn.Sequential:
    """The position-wise feed-forward block of a transformer (without its norm)."""
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))


def _zero_last(module: nn.Module) -> nn.Module:
    """`module` with its last layer's weights (and bias) zero: a residual branch that starts contributing nothing."""
    last = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.LayerNorm))][-1]
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)
    return module


def _sequence_family(causal: bool) -> dict[str, Callable[[int], nn.Module]]:
    """Residual branches over (B, T, D), the largest first; each pre-normalised, as in a pre-LN transformer."""

    def mlp_(d: int) -> nn.Module:
        return _zero_last(nn.Sequential(nn.LayerNorm(d), *mlp(d, EXPANSION * d)))

    def attention(d: int) -> nn.Module:
        return _zero_last(nn.Sequential(nn.LayerNorm(d), SelfAttention(d, causal)))

    def lowrank(d: int) -> nn.Module:
        rank = max(1, d // RANK_DIVISOR)
        return _zero_last(nn.Sequential(nn.Linear(d, rank, bias=False), nn.Linear(rank, d, bias=False)))

    def norm(d: int) -> nn.Module:
        return _zero_last(nn.LayerNorm(d))  # x + gain * normalised(x) + bias, gain and bias from zero

    return {"mlp": mlp_, "attention": attention, "lowrank": lowrank, "norm": norm}


def _features_family() -> dict[str, Callable[[int], nn.Module]]:
    """Residual branches over (B, D): the sequence family's, which act on the last dimension, less attention."""
    family = _sequence_family(causal=False)
    del family["attention"]
    return family


BLUEPRINTS: dict[str, dict[str, Callable[[int], nn.Module]]] = {
    "conv1d": _family(nn.Conv1d, nn.BatchNorm1d, dw_kernel=5),
    "conv2d": _family(nn.Conv2d, nn.BatchNorm2d, dw_kernel=3),
    "sequence": _sequence_family(causal=False),
    "causal_sequence": _sequence_family(causal=True),
    "features": _features_family(),
}


REPEAT = "repeat"
"""The blueprint that copies the host block before its slot (`Repeat`)."""
REPEAT_RULE = ("a copy grows only after a submodule with parameters that maps its one input to an output of the same "
               "shape and dtype")
"""Where `repeat` grows (`Slot.repeats`, which `esper.grow` finds), as every refusal to grow it says."""


def offered(family: str, repeats: bool) -> list[str]:
    """The names of the blueprints a slot of `family` can grow, `repeat` too where it `repeats`."""
    return [*BLUEPRINTS[family], *([REPEAT] if repeats else [])]


class Repeat(nn.Module):
    """A host block as a residual branch: `block(x) - x`. In a slot (`x + alpha * seed(x)`) it blends from the host as
    it was (alpha 0) to the host with the block applied twice (alpha 1): one block deeper. Germinated, the copy starts
    from the block as trained so far, as stacking a trained network's blocks starts a deeper one; built into a scratch
    run's architecture, it is initialised afresh, as a new block is."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) - x


def repeat_of(block: nn.Module, fresh: bool) -> Repeat:
    """A `Repeat` of a copy of `block`, without the hooks the host's block carries (its slot's, which would pass the
    copy's output through the slot again); with `fresh`, each of its layers initialised again (`reset_parameters`,
    from the global torch RNG)."""
    hooks = {m: {name: getattr(m, name) for name in HOOK_DICTS if hasattr(m, name)} for m in block.modules()}
    try:
        for m, held in hooks.items():
            for name, d in held.items():
                setattr(m, name, type(d)())
        copied = copy.deepcopy(block)
    finally:
        for m, held in hooks.items():
            for name, d in held.items():
                setattr(m, name, d)
    if fresh:
        if not any(p.is_meta for p in copied.parameters()):  # on CPU, as the other blueprints are built: the same
            copied = copied.cpu()                            # weights on every device (the meta device has none)
        for m in copied.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return Repeat(copied)


HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
              "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")
"""Where an `nn.Module` keeps its hooks (and what they are called with)."""


def param_count(module: nn.Module) -> int:
    """Number of scalar parameters a built module holds."""
    return sum(p.numel() for p in module.parameters())


def blueprint_sizes(family: str, channels: int) -> dict[str, int]:
    """Parameters each blueprint of `family` holds at `channels`. Built on the meta device: no memory, and
    no draw from the torch RNG, so knowing the sizes changes nothing about a run's initialisation."""
    with torch.device("meta"):
        return {name: param_count(build(channels)) for name, build in BLUEPRINTS[family].items()}
