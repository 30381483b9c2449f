"""Telemetry profiles: what a run measures beyond what the lifecycle gates need.

* `minimal`: only the gate signals (validation metrics, each seed's gradient health and contribution).
* `standard`: plus per-layer gradient norms of the host, averaged over the epoch's steps, with
  vanishing/exploding flags and a host gradient-health score.
* `diagnostic`: plus a loss-landscape sharpness estimate every `SHARPNESS_EVERY` epochs: the top
  eigenvalue of the training loss's Hessian, by power iteration on Hessian-vector products.
Everything lands in `EpochEnded.diagnostics`.
"""

import math
from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from esper.tolaria.health import EXPLODING, VANISHING, step_health
from esper.tolaria.inputs import positional

PROFILES = ("minimal", "standard", "diagnostic")
SHARPNESS_EVERY = 5
"""Epochs between two sharpness estimates (the first is at epoch 1)."""
SHARPNESS_ITERATIONS = 10
SHARPNESS_EXAMPLES = 512
"""Training examples (the first ones, unshuffled) the Hessian is taken over."""


class LayerGradients:
    """Sums each layer's gradient norm over the steps of an epoch: a few fused ops per step, no device sync.
    `named`: the model's (name, parameter) pairs, e.g. `named_parameters()`; a layer is a name's module part."""

    def __init__(self, named: Iterable[tuple[str, nn.Parameter]]):
        by_layer: dict[str, list[nn.Parameter]] = defaultdict(list)
        for name, p in named:
            if p.requires_grad:
                by_layer[name.rsplit(".", 1)[0]].append(p)
        self.layers = list(by_layer)
        self.params = [p for layer in self.layers for p in by_layer[layer]]
        device = self.params[0].device
        self.layer_of = torch.tensor([i for i, layer in enumerate(self.layers) for _ in by_layer[layer]], device=device)
        self.sums = torch.zeros(len(self.layers), device=device)
        self.steps = 0

    def add(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        squares = torch.stack(torch._foreach_norm(grads)).square()
        self.sums += torch.zeros_like(self.sums).index_add_(0, self.layer_of, squares).sqrt()
        self.steps += 1

    def report(self) -> dict:
        if self.steps == 0:
            return {}
        means = (self.sums / self.steps).tolist()
        # JSON has no NaN or infinity (they would be logged as null): a layer whose gradient was not finite
        # (a diverging seed's) has no norm, and is exploding.
        norms = {layer: round(value, 8) for layer, value in zip(self.layers, means) if math.isfinite(value)}
        return {
            "grad_norms": norms,
            "vanishing": [layer for layer, v in norms.items() if v < VANISHING],
            "exploding": [layer for layer, v in zip(self.layers, means) if not v <= EXPLODING],
            "host_gradient_health": sum(step_health(v) for v in means) / len(means),
        }


def sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int,
              loss_fn: Callable[..., torch.Tensor] = F.cross_entropy) -> float:
    """Top Hessian eigenvalue of the loss (`loss_fn(output, y)`, the mean over the batch) at the current weights
    (eval mode: no statistics change).
    Uses `autograd.grad` only, so no `.grad` is touched; the start vector comes from its own generator. Attention
    runs as plain matrix products here: the fused kernels (flash on CPU and CUDA, memory-efficient on CUDA) have no
    second derivative."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        with sdpa_kernel(SDPBackend.MATH):
            loss = loss_fn(model(*positional(x)), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        v = [torch.randn(p.shape, generator=generator).to(p.device) for p in params]
        eigenvalue = 0.0
        for _ in range(SHARPNESS_ITERATIONS):
            norm = torch.sqrt(sum((t * t).sum() for t in v))
            v = [t / norm for t in v]
            hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
            eigenvalue = float(sum((a * b).sum() for a, b in zip(hv, v)))
            v = [t.detach() for t in hv]
        return eigenvalue
    finally:
        model.train(was_training)
