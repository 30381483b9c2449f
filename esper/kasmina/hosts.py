"""The built-in host networks seeds grow in: plain chains (`nn.Sequential` of `stages`, then `head`; the
transformer has an `embed` first), grown like any user's model by `esper.kasmina.grow`, with three slots: "early",
"mid" and "late" after the stages.
"""

import inspect
import json
from collections import OrderedDict

import torch
from torch import nn

from esper.errors import BadInput
from esper.kasmina.blueprints import SelfAttention, mlp
from esper.kasmina.grow import grow
from esper.kasmina.model import GrowableModel
from esper.leyline.config import TaskPreset

SLOTS = {"early": "stages.0", "mid": "stages.1", "late": "stages.2"}
"""Where the built-in hosts' slots sit: after each of their three stages."""


class CNN1D(nn.Sequential):
    """MNIST-1D host: input (B, 1, 40), 10 classes.

    Deliberately small (about 60% test accuracy alone in 25 epochs) so that seeds have something to
    add: three narrow conv stages, the last two halving the length, then a linear head.

    The default (8 channels, no normalisation, linear head on the flattened features) is limited by its
    conditioning as much as by its capacity: a `norm` seed adds about as much as a `conv_heavy` one.
    `build_host("cnn1d", channels=4, batchnorm=True, global_pool=True)` is limited by capacity alone
    (also about 60% alone; `conv_heavy` seeds add 20–30 points, `norm` seeds about 6).
    """

    def __init__(self, channels: int = 8, length: int = 40, num_classes: int = 10,
                 batchnorm: bool = False, global_pool: bool = False):
        c = channels

        def stage(cin: int, kernel: int, stride: int) -> nn.Sequential:
            conv = nn.Conv1d(cin, c, kernel, stride=stride, padding=kernel // 2)
            return nn.Sequential(conv, *([nn.BatchNorm1d(c)] if batchnorm else []), nn.ReLU())

        stages = [stage(1, 5, 1), stage(c, 3, 2), stage(c, 3, 2)]  # (B, c, 40), (B, c, 20), (B, c, 10)
        if global_pool:
            head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, num_classes))
        else:
            head = nn.Sequential(nn.Flatten(), nn.Linear(c * ((length + 3) // 4), num_classes))
        super().__init__(OrderedDict(stages=nn.Sequential(*stages), head=head))
        self.input_shape = (1, length)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with BatchNorm, and a projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn1(self.conv1(x)).relu()
        out = self.bn2(self.conv2(out))
        return (out + self.shortcut(x)).relu()


class ResNet(nn.Sequential):
    """CIFAR-10 host: input (B, 3, 32, 32), 10 classes. Three stages of `blocks` basic blocks with
    `width`, 2·`width`, 4·`width` channels (32x32, 16x16, 8x8); a slot after each stage."""

    def __init__(self, width: int = 16, blocks: int = 1, num_classes: int = 10):
        w = [width, 2 * width, 4 * width]
        stem = [nn.Conv2d(3, w[0], 3, padding=1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU()]
        stages = []
        cin = w[0]
        for i, cout in enumerate(w):
            layers = [BasicBlock(cin if b == 0 else cout, cout, stride=2 if (i > 0 and b == 0) else 1) for b in range(blocks)]
            stages.append(nn.Sequential(*(stem if i == 0 else []), *layers))
            cin = cout
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w[2], num_classes))
        super().__init__(OrderedDict(stages=nn.Sequential(*stages), head=head))
        self.input_shape = (3, 32, 32)


class PaperCNN(nn.Sequential):
    """The MNIST-1D paper's reference CNN (Greydanus 2020): three convolutions of `channels` channels with
    stride 2 (kernels 5, 3, 3) and ReLUs, then a linear head on the flattened features; input (B, 1, 40).
    A strong static baseline of about 5.2k parameters at its 25 channels; a slot after each convolution."""

    def __init__(self, channels: int = 25, length: int = 40, num_classes: int = 10):
        c = channels
        stages = [nn.Sequential(nn.Conv1d(1, c, 5, stride=2, padding=1), nn.ReLU()),  # (B, c, 19)
                  nn.Sequential(nn.Conv1d(c, c, 3, stride=2, padding=1), nn.ReLU()),  # (B, c, 10)
                  nn.Sequential(nn.Conv1d(c, c, 3, stride=2, padding=1), nn.ReLU())]  # (B, c, 5)
        out = length
        for kernel in (5, 3, 3):
            out = (out + 2 - kernel) // 2 + 1
        head = nn.Sequential(nn.Flatten(), nn.Linear(c * out, num_classes))
        super().__init__(OrderedDict(stages=nn.Sequential(*stages), head=head))
        self.input_shape = (1, length)


class Embedding(nn.Module):
    """Token and learned position embeddings: (B, T) token ids → (B, T, width)."""

    def __init__(self, vocab: int, context: int, width: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x) + self.positions.weight[: x.shape[1]]


class Block(nn.Module):
    """Pre-LN decoder block: causal self-attention, then a position-wise MLP, each a residual."""

    def __init__(self, width: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = SelfAttention(width, causal=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = mlp(width, mlp_ratio * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Sequential):
    """Text host: a small decoder-only transformer over byte ids, input (B, T) with T ≤ `context`, output logits
    (B, T, `vocab`) of each next byte. Three blocks of `width` channels with a narrow MLP (`mlp_ratio` × width,
    a quarter of the usual) so that seeds have capacity to add; a slot after each block."""

    def __init__(self, vocab: int = 256, context: int = 64, width: int = 64, mlp_ratio: int = 1):
        stages = nn.Sequential(*(Block(width, mlp_ratio) for _ in range(3)))
        head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, vocab))
        super().__init__(OrderedDict(embed=Embedding(vocab, context, width), stages=stages, head=head))
        self.input_shape = (context,)
        self.input_dtype = torch.long


HOSTS = {"cnn1d": CNN1D, "resnet": ResNet, "paper_cnn": PaperCNN, "transformer": Transformer}


def preset_host(preset: TaskPreset) -> GrowableModel:
    """The grown host a task preset names, with its options."""
    return build_host(preset.host, **preset.host_options)


def host_problem(name: str, options: dict) -> str | None:
    """Why `build_host(name, **options)` would fail (None if it would not): an unknown host or option, or a value
    of another kind than the option's (a number for a true/false option, true or 1.5 for a whole number)."""
    if not isinstance(name, str) or name not in HOSTS:
        return f"unknown host {name!r} (hosts: {', '.join(HOSTS)})"
    known = inspect.signature(HOSTS[name]).parameters
    unknown = [k for k in options if k not in known]
    if unknown:
        return f"host {name} has no option {unknown[0]!r} (options: {', '.join(known)})"
    for key, value in options.items():
        kind = known[key].annotation
        if kind in _KINDS and not _KINDS[kind][1](value):
            return f"host {name} option {key} takes {_KINDS[kind][0]}, got {json.dumps(value)}"
    return None


_KINDS = {
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("a whole number, at least 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
}
"""What a host option of each annotated type accepts, as said and as checked (bool is an int to Python, not here;
every whole-number option is a size or a count, of which none can be 0)."""


def build_host(name: str, **kw) -> GrowableModel:
    """Build a host by name, "cnn1d" or "paper_cnn" (MNIST-1D), "resnet" (CIFAR-10) or "transformer" (text), and grow
    it with its three slots. Keyword arguments go to its constructor; an unknown host or option, or a value of the
    wrong kind, is one `BadInput` line naming what is known (`host_problem`)."""
    if problem := host_problem(name, kw):
        raise BadInput(problem)
    host = HOSTS[name](**kw)
    return grow(host, SLOTS, example=example_input(host, 2))


def example_input(host: nn.Module, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A batch of zeros of the kind a built-in host takes (float signals or images; token ids for the transformer)."""
    return torch.zeros(batch, *host.input_shape, dtype=input_dtype(host), device=device)


def input_dtype(host: nn.Module) -> torch.dtype:
    """What a built-in host takes: float signals or images, or (the transformer) token ids."""
    return getattr(host, "input_dtype", torch.float32)
