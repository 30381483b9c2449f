"""`GrowableModel`: a host network with slots, and the mechanics of each seed stage.

The host is a chain `stage_0, slot_0, stage_1, slot_1, ..., head`. Kasmina carries out lifecycle
changes; it does not judge them (the lifecycle machine in `esper.leyline` does) and never assigns a stage
on its own: each stage change is one of the machine's moves (`LIFECYCLE.destination`), and any other
raises `ValueError`, as does a call that makes no mechanical sense (unknown slot or seed, a second live
seed in a slot).

A grown model is an ordinary `nn.Module`: print it, `torch.save` it, call it.
"""

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call

from esper.kasmina.blueprints import BLUEPRINTS, blueprint_sizes
from esper.kasmina.slot import SCHEDULES, Seed, Slot
from esper.leyline.lifecycle import LIFECYCLE
from esper.leyline.stages import SeedStage


class GrowableModel(nn.Module):
    """A host network that grows: `stages[i]` is followed by the slot `slot_names[i]`, then `head`.

    Subclasses (the hosts in `esper.kasmina.hosts`) build the stages and the head.
    """

    def __init__(self, family: str, stages: list[nn.Module], slots: list[tuple[str, int]], head: nn.Module):
        super().__init__()
        if family not in BLUEPRINTS:
            raise ValueError(f"unknown blueprint family {family!r} (families: {', '.join(BLUEPRINTS)})")
        if len(stages) != len(slots):
            raise ValueError(f"{len(stages)} stages but {len(slots)} slots: every stage is followed by one slot")
        self.family = family
        self.stages = nn.ModuleList(stages)
        self.slots = nn.ModuleDict({name: Slot(channels) for name, channels in slots})
        self.head = head
        self.fossil_order: list[str] = []
        """Ids of the fossilized seeds, in the order they were fossilized."""

    @property
    def slot_names(self) -> list[str]:
        return list(self.slots)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage, slot in zip(self.stages, self.slots.values()):
            x = slot(stage(x))
        return self.head(x)

    # ---- lifecycle mechanics -------------------------------------------------------------------

    def germinate(self, slot: str, seed_id: str, blueprint: str) -> int:
        """DORMANT → GERMINATED: build a `blueprint` seed (global torch RNG) into `slot`; it computes nothing
        that reaches the output yet. Returns its parameter count."""
        return self._plant(slot, seed_id, blueprint).num_params()

    def build(self, slot: str, seed_id: str, blueprint: str) -> list[nn.Parameter]:
        """DORMANT → FOSSILIZED (the machine's `build`, the scratch baseline): a `blueprint` seed built into
        the host before training. Returns its parameters, for the host optimizer."""
        seed = self._plant(slot, seed_id, blueprint)
        return self._fossilize(self.slots[slot], seed)

    def _plant(self, slot: str, seed_id: str, blueprint: str) -> Seed:
        if slot not in self.slots:
            raise ValueError(f"unknown slot {slot!r} (slots: {', '.join(self.slots)})")
        factories = BLUEPRINTS[self.family]
        if blueprint not in factories:
            raise ValueError(f"unknown blueprint {blueprint!r} for family {self.family} (blueprints: {', '.join(factories)})")
        target = self.slots[slot]
        if target.live is not None:
            raise ValueError(f"slot {slot} already holds seed {target.live.seed_id} ({target.live.stage.value})")
        if self._lookup(seed_id) is not None:
            raise ValueError(f"seed id {seed_id!r} is already in use")
        module = factories[blueprint](target.channels)  # built on CPU: the same weights on every device
        ref = next(self.parameters())
        seed = Seed(seed_id, blueprint, module).to(device=ref.device, dtype=ref.dtype)
        seed.train(self.training)
        target.live = seed
        target.cache = None
        return seed

    def start_training(self, seed_id: str) -> None:
        """GERMINATED → TRAINING: the seed learns on the detached activation (`isolated_logits`)."""
        seed = self._move(seed_id, "start_training", SeedStage.TRAINING)
        seed.stage = SeedStage.TRAINING

    def start_blending(self, seed_id: str, steps: int, schedule: str = "linear") -> None:
        """→ BLENDING: output becomes `h + alpha * seed(h)`, alpha rising from 0 to 1 over `steps` calls of
        `step_blending()` along the `schedule` ("linear" or "sigmoid")."""
        if steps < 1:
            raise ValueError(f"blending needs at least one step, got steps={steps}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown blending schedule {schedule!r} (schedules: {', '.join(SCHEDULES)})")
        seed = self._move(seed_id, "advance", SeedStage.BLENDING)
        seed.stage = SeedStage.BLENDING
        seed.blend_step, seed.blend_steps, seed.schedule = 0, steps, schedule

    def step_blending(self) -> None:
        """Advance the alpha of every blending seed by one step (call once per optimizer step)."""
        for slot in self.slots.values():
            seed = slot.live
            if seed is not None and seed.stage is SeedStage.BLENDING:
                seed.blend_step = min(seed.blend_step + 1, seed.blend_steps)

    def fossilize(self, seed_id: str) -> list[nn.Parameter]:
        """BLENDING → FOSSILIZED: alpha is 1 for good and the seed is part of the host. Returns its parameters,
        for the host optimizer. Only a blending seed fossilizes (a seed built up front: `build`)."""
        _, slot, seed = self._find(seed_id)
        if seed is not slot.live:
            raise ValueError(f"seed {seed_id} is already fossilized")
        self._move(seed_id, "advance", SeedStage.FOSSILIZED)
        return self._fossilize(slot, seed)

    def _fossilize(self, slot: Slot, seed: Seed) -> list[nn.Parameter]:
        seed_id = seed.seed_id
        slot.live = None
        slot.cache = None
        seed.stage = SeedStage.FOSSILIZED
        slot.fossils.append(seed)
        self.fossil_order.append(seed_id)
        return list(seed.parameters())

    def cull(self, seed_id: str) -> None:
        """Remove a live seed: the host computes exactly what it computed before the seed was germinated."""
        _, slot, seed = self._find(seed_id)
        if seed is not slot.live:
            raise ValueError(f"seed {seed_id} is fossilized; fossilized seeds are part of the host and cannot be culled")
        self._move(seed_id, "cull", SeedStage.CULLED)
        slot.live = None
        slot.cache = None

    # ---- queries -------------------------------------------------------------------------------

    def alpha(self, seed_id: str) -> float:
        """The seed's alpha now: 0 before blending, the schedule's value while blending, 1 once fossilized
        (or the forced value inside `forced_alpha`)."""
        return self._find(seed_id)[2].alpha

    def stage(self, seed_id: str) -> SeedStage:
        return self._find(seed_id)[2].stage

    @contextlib.contextmanager
    def forced_alpha(self, seed_id: str, value: float) -> Iterator[None]:
        """Within the block the seed's output is scaled by `value` whatever its stage (alpha 0 gives the
        host's output without it: the counterfactual for its contribution)."""
        seed = self._find(seed_id)[2]
        previous = seed.forced
        seed.forced = float(value)
        try:
            yield
        finally:
            seed.forced = previous

    def seed_parameters(self, seed_id: str) -> list[nn.Parameter]:
        return list(self._find(seed_id)[2].parameters())

    def host_parameters(self) -> list[nn.Parameter]:
        """What the host optimizer trains: the host's own parameters, then those of each fossilized seed
        in the order they were fossilized. Live seeds are excluded."""
        in_seeds = {id(p) for slot in self.slots.values() for seed in slot.seeds() for p in seed.parameters()}
        own = [p for p in self.parameters() if id(p) not in in_seeds]
        return own + [p for seed_id in self.fossil_order for p in self._find(seed_id)[2].parameters()]

    def training_seeds(self) -> list[str]:
        return self._live_in(SeedStage.TRAINING)

    def blending_seeds(self) -> list[str]:
        return self._live_in(SeedStage.BLENDING)

    def live_seeds(self) -> dict[str, str]:
        """Seed id → slot name of every live seed (GERMINATED, TRAINING, BLENDING)."""
        return {slot.live.seed_id: name for name, slot in self.slots.items() if slot.live is not None}

    def param_count(self) -> int:
        """Parameters that affect the output: host, fossilized seeds and blending seeds."""
        blending = [p for seed_id in self.blending_seeds() for p in self.seed_parameters(seed_id)]
        return sum(p.numel() for p in self.host_parameters() + blending)

    def seed_sizes(self) -> dict[str, dict[str, int]]:
        """Slot → blueprint → the parameters a seed of that blueprint would add there."""
        return {name: blueprint_sizes(self.family, slot.channels) for name, slot in self.slots.items()}

    def architecture(self) -> list[tuple[str, str]]:
        """(slot, blueprint) of each fossilized seed, in the order they were fossilized."""
        out = []
        for seed_id in self.fossil_order:
            name, _, seed = self._find(seed_id)
            out.append((name, seed.blueprint))
        return out

    # ---- isolated training ---------------------------------------------------------------------

    def isolated_logits(self, seed_id: str) -> torch.Tensor:
        """Logits of the host with the seed fully in (alpha 1) at its slot, on the activation `h` the slot
        saw in the latest forward pass: the rest of the network runs on `h + seed(h)` with `h` detached.

        Only the seed's parameters get gradients from these logits; nothing downstream changes either:
        the rest of the network runs with its parameters detached and its buffers copied (BatchNorm
        in training mode normalises with the batch's statistics but does not update its running ones).
        So `loss.backward()` on these logits touches the seed's `.grad` only.
        """
        name, slot, seed = self._find(seed_id)
        if seed is not slot.live:
            raise ValueError(f"seed {seed_id} is fossilized; it has no isolated pass")
        if slot.cache is None:
            raise ValueError(f"slot {name} has seen no activation since seed {seed_id} was planted; run forward first")
        h = slot.cache
        x = h + seed(h)
        index = self.slot_names.index(name)
        for stage, downstream in list(zip(self.stages, self.slots.values()))[index + 1:]:
            x = _frozen(stage, x)
            x = _frozen(downstream, x, record=False)
        return _frozen(self.head, x)

    # ---- helpers -------------------------------------------------------------------------------

    def _lookup(self, seed_id: str) -> tuple[str, Slot, Seed] | None:
        for name, slot in self.slots.items():
            for seed in slot.seeds():
                if seed.seed_id == seed_id:
                    return name, slot, seed
        return None

    def _find(self, seed_id: str) -> tuple[str, Slot, Seed]:
        found = self._lookup(seed_id)
        if found is None:
            raise ValueError(f"no seed {seed_id!r} in this model (live: {', '.join(self.live_seeds()) or 'none'})")
        return found

    def _move(self, seed_id: str, trigger: str, to: SeedStage) -> Seed:
        """The live seed, if `trigger` takes it from its stage to `to` in the lifecycle machine; else ValueError."""
        _, slot, seed = self._find(seed_id)
        if seed is not slot.live or LIFECYCLE.destination(seed.stage, trigger) is not to:
            raise ValueError(f"seed {seed_id} is {seed.stage.value}: the lifecycle has no move to {to.value} "
                             f"from there ({trigger})")
        return seed

    def _live_in(self, stage: SeedStage) -> list[str]:
        return [s.live.seed_id for s in self.slots.values() if s.live is not None and s.live.stage is stage]


def _frozen(module: nn.Module, *args, **kwargs) -> torch.Tensor:
    """Call `module` with its parameters detached and its buffers copied: gradients flow through it to
    its input, but it owns nothing that gets a gradient or changes."""
    state = {n: p.detach() for n, p in module.named_parameters()}
    state.update({n: b.clone() for n, b in module.named_buffers()})
    return functional_call(module, state, args, kwargs)
