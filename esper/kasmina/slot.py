"""Seeds and slots: where a host grows.

A `Slot` sits right after a submodule of the host (its output passes through the slot). It holds any
number of fossilized seeds, applied in order as residuals (`x = x + seed(x)`), then at most one live seed,
whose effect depends on its stage:

* GERMINATED, TRAINING: the slot's output is exactly its input. The slot keeps the activation it
  saw, detached (`cache`), for the chain's shortcut of the isolated pass (`GrowableModel.isolated_output`; the
  whole model runs again where a layer after the slot changed that activation in place);
  inside that pass the seed is fully in, on its input detached (`Seed.isolated`).
* BLENDING: `x + alpha * seed(x)`, gradients flow both ways; alpha follows a schedule from 0 to 1.
* FOSSILIZED: `x + seed(x)`; the seed is part of the host.
"""

import math

import torch
from torch import nn

from esper.leyline.stages import SeedStage

SCHEDULES = ("linear", "sigmoid")
SIGMOID_STEEPNESS = 10.0


def blend_alpha(step: int, steps: int, schedule: str) -> float:
    """Alpha after `step` of `steps` blending steps: 0.0 at step 0, exactly 1.0 from step `steps` on."""
    if step <= 0:
        return 0.0
    if step >= steps:
        return 1.0
    t = step / steps
    if schedule == "linear":
        return t
    # A logistic curve rescaled so that it passes through (0, 0) and (1, 1).
    k = SIGMOID_STEEPNESS
    low, high = _logistic(-k / 2), _logistic(k / 2)
    return min(1.0, max(0.0, (_logistic(k * (t - 0.5)) - low) / (high - low)))


def _logistic(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


class Seed(nn.Module):
    """One seed: a blueprint module plus the mechanics of its stage (alpha, blending progress).

    `seed(x)` is the residual branch only; the slot decides how much of it reaches the output.
    """

    def __init__(self, seed_id: str, blueprint: str, module: nn.Module):
        super().__init__()
        self.seed_id = seed_id
        self.blueprint = blueprint
        self.module = module
        self.stage = SeedStage.GERMINATED
        self.blend_step = 0
        self.blend_steps = 0
        self.schedule = "linear"
        self.forced: float | None = None
        """Set by `GrowableModel.forced_alpha`: overrides alpha, whatever the stage."""
        self.isolated = False
        """Set during `GrowableModel.isolated_output`: the seed is fully in, on its input detached."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    @property
    def alpha(self) -> float:
        """How much of this seed reaches the output now."""
        if self.forced is not None:
            return self.forced
        if self.stage is SeedStage.FOSSILIZED:
            return 1.0
        if self.stage is SeedStage.BLENDING:
            return blend_alpha(self.blend_step, self.blend_steps, self.schedule)
        return 0.0

    def contributes(self) -> bool:
        """Whether the seed is computed in the forward pass (its output reaches the host's)."""
        return self.forced is not None or self.stage in (SeedStage.BLENDING, SeedStage.FOSSILIZED)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # Blending progress travels with `state_dict()`, so a checkpoint taken mid-blend resumes there.
    def get_extra_state(self) -> dict:
        return {"blend_step": self.blend_step, "blend_steps": self.blend_steps, "schedule": self.schedule}

    def set_extra_state(self, state: dict) -> None:
        self.blend_step = int(state["blend_step"])
        self.blend_steps = int(state["blend_steps"])
        self.schedule = str(state["schedule"])

    def extra_repr(self) -> str:
        return f"id={self.seed_id!r}, blueprint={self.blueprint!r}, stage={self.stage.value}"


class Slot(nn.Module):
    """A place in the host where seeds grow, right after the host's submodule `after` (a dotted path); identity
    until something is planted. `family` names the blueprints that fit its activations, `channels` their width;
    `repeats` says whether a copy of `after` can grow here too (`repeat`: it maps its one input to an output of the
    same shape)."""

    repeats = False
    """The default of a slot saved whole (`torch.save`) before slots said whether they repeat."""

    def __init__(self, name: str, after: str, family: str, channels: int, repeats: bool = False):
        super().__init__()
        self.name = name
        self.after = after
        self.family = family
        self.channels = channels
        self.repeats = repeats
        self.fossils = nn.ModuleList()
        self.register_module("live", None)  # the live seed (GERMINATED, TRAINING or BLENDING), if any
        self.cache: torch.Tensor | None = None
        """The detached activation the live seed saw in the latest forward pass."""
        self.cache_version = 0
        """The cache's version counter when it was kept: a layer after the slot that works in place (a user's
        `ReLU(inplace=True)`) changes it, and the cache is then no longer what the seed saw."""
        self.recording = True
        """Whether a forward pass keeps its activation in `cache` (not inside an isolated pass)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for seed in self.fossils:
            x = _add(x, seed)
        live = self.live
        if live is None:
            return x
        if live.isolated:
            return isolated(live, x.detach())
        if self.recording:
            self.cache = x.detach()  # shares x's memory and version counter: a copy would cost every step
            self.cache_version = self.cache._version
        return _add(x, live)

    @property
    def cache_intact(self) -> bool:
        """Whether the cache still holds what the live seed saw (nothing after the slot changed it in place)."""
        return self.cache is not None and self.cache._version == self.cache_version

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # torch skips a child that is None without a word, keys and all: a state dict with a live seed, loaded into a
        # slot without one, would drop that seed and report every key matched. Its keys are unexpected, as a
        # fossil's are (`GrowableModel` plants a state dict's seeds only in a model that holds none yet).
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if self.live is None:
            unexpected_keys.extend(key for key in state_dict if key.startswith(f"{prefix}live."))

    def seeds(self) -> list[Seed]:
        """Fossilized seeds in order, then the live one."""
        return list(self.fossils) + ([self.live] if self.live is not None else [])

    def __getstate__(self):
        # A pickled or deep-copied model does not carry a stale activation around.
        state = super().__getstate__()
        state["cache"] = None
        return state

    def extra_repr(self) -> str:
        return f"after={self.after!r}, family={self.family}, channels={self.channels}, repeats={self.repeats}"


def isolated(seed: Seed, h: torch.Tensor) -> torch.Tensor:
    """The slot's output with `seed` fully in on the detached activation `h`: what its isolated pass learns from."""
    return h + seed(h)


def _add(x: torch.Tensor, seed: Seed) -> torch.Tensor:
    if not seed.contributes():
        return x
    alpha = seed.alpha
    out = seed(x)
    return x + out if alpha == 1.0 else x + alpha * out
