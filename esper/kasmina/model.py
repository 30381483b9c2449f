"""`GrowableModel`: any host network with slots, and the mechanics of each seed stage.

The host is any `nn.Module`. Each slot sits right after one of its submodules: a forward hook passes that
submodule's output through the slot, so the host's own code and its own parameter names are untouched
(`esper.kasmina.grow` finds where slots go and what grows in them). Kasmina carries out lifecycle changes;
it does not judge them (the lifecycle machine in `esper.leyline` does) and never assigns a stage on its
own: each stage change is one of the machine's moves (`LIFECYCLE.destination`), and any other raises
`ValueError`, as does a call that makes no mechanical sense (unknown slot or seed, a second live seed in a
slot).

A grown model is an ordinary `nn.Module`: print it, `torch.save` it, call it. Its `state_dict()` loads into a fresh
`esper.grow` of the same model, slots and example, which plants the seeds it holds first (`_regrow`).
"""

import contextlib
import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.nn.utils.stateless import _reparametrize_module

from esper.errors import BadInput
from esper.kasmina.blueprints import BLUEPRINTS, REPEAT, REPEAT_RULE, blueprint_sizes, offered, param_count, repeat_of
from esper.kasmina.slot import SCHEDULES, Seed, Slot, isolated
from esper.leyline.lifecycle import LIFECYCLE
from esper.leyline.stages import SeedStage


def isolated_examples(batch: int, fraction: float) -> int:
    """How many of a batch's examples a training seed's isolated pass runs on (its first ones) when it runs on
    `fraction` of each batch (`LifecycleConfig.isolated_fraction`): at least one."""
    return max(1, round(batch * fraction))


class SlotHook:
    """The forward hook that passes a host submodule's output through its slot (an object, not a closure, so
    that a grown model pickles and deep-copies with its hooks)."""

    def __init__(self, slot: Slot):
        self.slot = slot

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.slot(output)


class GrowableModel(nn.Module):
    """A host network that grows: `host` is the user's module, `slots` the places seeds grow in, each after
    the host submodule `slot.after`. Build one with `esper.grow`."""

    def __init__(self, host: nn.Module, slots: list[Slot]):
        super().__init__()
        self.host = host
        self.slots = nn.ModuleDict({slot_key(slot.name): slot for slot in slots})
        for slot in slots:
            host.get_submodule(slot.after).register_forward_hook(SlotHook(slot))
        self.downstream = {slot.name: chain_after(host, slot.after) for slot in slots}
        """Slot name → the host's submodules that run after it when the host is a chain there (None elsewhere):
        the isolated pass's shortcut reruns only those."""
        self.fossil_order: list[str] = []
        """Ids of the fossilized seeds, in the order they were fossilized."""
        self.channels_last = False
        """Whether 4-D weights are stored channels-last (`use_channels_last`), the seeds planted later too."""

    @property
    def slot_names(self) -> list[str]:
        return [slot.name for slot in self.slots.values()]

    def slot(self, name: str) -> Slot:
        key = slot_key(name)
        if key not in self.slots or self.slots[key].name != name:
            raise ValueError(f"unknown slot {name!r} (slots: {', '.join(self.slot_names)})")
        return self.slots[key]

    def forward(self, *inputs, **kwargs):
        return self.host(*inputs, **kwargs)

    def use_channels_last(self) -> None:
        """Store every 4-D weight and buffer (2-D convolutions') channels-last, now and in every seed planted from
        here on: the layout CUDA's convolutions run fastest in under mixed precision. The numbers are the same."""
        self.channels_last = True
        _to_channels_last(self)

    # ---- lifecycle mechanics -------------------------------------------------------------------

    def germinate(self, slot: str, seed_id: str, blueprint: str) -> int:
        """DORMANT → GERMINATED: build a `blueprint` seed (global torch RNG) into `slot`; it computes nothing
        that reaches the output yet. Returns its parameter count."""
        return self._plant(slot, seed_id, blueprint, fresh=False).num_params()

    def build(self, slot: str, seed_id: str, blueprint: str) -> list[nn.Parameter]:
        """DORMANT → FOSSILIZED (the machine's `build`, the scratch baseline): a `blueprint` seed built into
        the host before training (a `repeat` initialised afresh, not copied). Returns its parameters, for the host
        optimizer."""
        seed = self._plant(slot, seed_id, blueprint, fresh=True)
        return self._fossilize(self.slot(slot), seed)

    def _plant(self, slot: str, seed_id: str, blueprint: str, fresh: bool) -> Seed:
        target = self.slot(slot)
        names = offered(target.family, target.repeats)
        if blueprint == REPEAT and not target.repeats:  # a property of the slot, not of its family
            raise ValueError(f"slot {slot} cannot grow {REPEAT!r}: {REPEAT_RULE}")
        if blueprint not in names:
            raise ValueError(f"unknown blueprint {blueprint!r} for family {target.family} (blueprints: {', '.join(names)})")
        if target.live is not None:
            raise ValueError(f"slot {slot} already holds seed {target.live.seed_id} ({target.live.stage.value})")
        if self._lookup(seed_id) is not None:
            raise ValueError(f"seed id {seed_id!r} is already in use")
        if blueprint == REPEAT:
            module = repeat_of(self.host.get_submodule(target.after), fresh)
        else:
            module = BLUEPRINTS[target.family][blueprint](target.channels)  # built on CPU: the same weights on every device
        ref = next(self.parameters())
        seed = Seed(seed_id, blueprint, module).to(device=ref.device, dtype=ref.dtype)
        if getattr(self, "channels_last", False):
            _to_channels_last(seed)
        seed.train(self.training)
        target.live = seed
        target.cache = None
        return seed

    def start_training(self, seed_id: str) -> None:
        """GERMINATED → TRAINING: the seed learns in isolation (`isolated_output`)."""
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
        own = list(self.host.parameters())
        return own + [p for seed_id in self.fossil_order for p in self._find(seed_id)[2].parameters()]

    def placed_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Every parameter, named as the user's model names it (no `host.` prefix) and each slot's seeds as
        `slots.NAME...`, listed with each slot right after the top-level part of the host that holds it (the
        order data flows through a chain): how telemetry names layers."""
        slots_in: dict[str, list[tuple[str, Slot]]] = defaultdict(list)
        for key, slot in self.slots.items():
            slots_in[slot.after.split(".")[0]].append((key, slot))
        named = list(self.host.named_parameters(recurse=False))
        for part, child in self.host.named_children():
            named += child.named_parameters(prefix=part)
            for key, slot in slots_in[part]:
                named += slot.named_parameters(prefix=f"slots.{key}")
        seen: set[int] = set()
        return [(n, p) for n, p in named if not (id(p) in seen or seen.add(id(p)))]

    def training_seeds(self) -> list[str]:
        return self._live_in(SeedStage.TRAINING)

    def blending_seeds(self) -> list[str]:
        return self._live_in(SeedStage.BLENDING)

    def live_seeds(self) -> dict[str, str]:
        """Seed id → slot name of every live seed (GERMINATED, TRAINING, BLENDING)."""
        return {slot.live.seed_id: slot.name for slot in self.slots.values() if slot.live is not None}

    def param_count(self) -> int:
        """Parameters that affect the output: host, fossilized seeds and blending seeds."""
        blending = [p for seed_id in self.blending_seeds() for p in self.seed_parameters(seed_id)]
        return sum(p.numel() for p in self.host_parameters() + blending)

    def seed_sizes(self, blueprints: Iterable[str] = ()) -> dict[str, dict[str, int]]:
        """Slot → blueprint → the parameters a seed of that blueprint would add there: every blueprint the slot's
        width builds, and `repeat` where it grows if `blueprints` names it (a run that grows no copy records the
        sizes it recorded before there was one)."""
        sizes = {slot.name: blueprint_sizes(slot.family, slot.channels) for slot in self.slots.values()}
        for slot in self.slots.values():
            if REPEAT in blueprints and slot.repeats:
                sizes[slot.name][REPEAT] = param_count(self.host.get_submodule(slot.after))
        return sizes

    def architecture(self) -> list[tuple[str, str]]:
        """(slot, blueprint) of each fossilized seed, in the order they were fossilized."""
        out = []
        for seed_id in self.fossil_order:
            name, _, seed = self._find(seed_id)
            out.append((name, seed.blueprint))
        return out

    # ---- isolated training ---------------------------------------------------------------------

    def isolated_output(self, seed_id: str, *inputs, shortcut: bool = True, examples: int | None = None, **kwargs):
        """The model's output on `inputs` with the seed fully in (alpha 1) on its slot's input detached, and
        every other parameter detached: only the seed's parameters get gradients from it, so `backward()` on
        a loss of it touches the seed's `.grad` only. The host's buffers are copied for the pass (BatchNorm in
        training mode normalises with the batch's statistics but does not update its running ones), and the
        pass draws from a fork of the global RNG: the host ends exactly as it would without the seed.

        Call it right after `model(*inputs)`: where the host is a chain after the slot (`downstream`), the
        `shortcut` starts from the activation that pass left in the slot and reruns only the layers after it
        (the same numbers for a fraction of the cost); elsewhere, or where a layer after the slot changed that
        activation in place, the whole model runs again.

        `examples`: the output on the batch's first `examples` only (every input batch-first), for a fraction of
        the cost again (`LifecycleConfig.isolated_fraction`).
        """
        name, slot, seed = self._find(seed_id)
        if seed is not slot.live:
            raise ValueError(f"seed {seed_id} is fossilized; it has no isolated pass")
        after = self.downstream[name] if shortcut else None
        if after is not None and slot.cache is None:
            raise ValueError(f"slot {name} has seen no activation since seed {seed_id} was planted; run forward first")
        if after is not None and not slot.cache_intact:  # a layer after the slot worked in place on it
            after = None
        first = slice(None) if examples is None else slice(examples)
        with self._isolating(seed):
            if after is None:
                return self.host(*(x[first] for x in inputs), **kwargs)
            x = isolated(seed, slot.cache[first])
            for path in after:
                x = self.host.get_submodule(path)(x)
            return x

    @contextlib.contextmanager
    def _isolating(self, seed: Seed) -> Iterator[None]:
        """Within the block: every parameter but the seed's detached, every buffer but the seed's a copy, the
        global RNG forked, the seed isolated in its slot and no slot recording its activation."""
        own = {id(t) for t in [*seed.parameters(), *seed.buffers()]}
        state = {n: p.detach() for n, p in self.named_parameters() if id(p) not in own}
        state.update({n: b.clone() for n, b in self.named_buffers() if id(b) not in own})
        device = next(self.parameters()).device
        forked = [device.index or 0] if device.type == "cuda" else []
        slots = list(self.slots.values())
        # The stateless API's own context manager (what `torch.func.functional_call` runs inside): it swaps
        # the state in for a block of code rather than for one call of `forward`.
        with torch.random.fork_rng(devices=forked), _reparametrize_module(self, state, tie_weights=True):
            seed.isolated = True
            for s in slots:
                s.recording = False
            try:
                yield
            finally:
                seed.isolated = False
                for s in slots:
                    s.recording = True

    # ---- loading a grown model's weights --------------------------------------------------------

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        # torch loads a module before its children: into a model that holds no seed yet (a fresh `esper.grow` of the
        # same model, slots and example), the seeds `state_dict` holds are planted first, and then take its weights.
        if not any(slot.seeds() for slot in self.slots.values()):
            with torch.random.fork_rng(devices=[]):  # a seed's weights are drawn, then overwritten: no draw shows
                self._regrow(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _regrow(self, state_dict, prefix: str) -> None:
        """Plant the seeds a grown model's `state_dict` holds, each blueprint told by the names and shapes of its
        weights: in each slot its fossils in order, then its live seed, blending at the step the state dict says
        (its `_extra_state`) or else GERMINATED (a seed that was TRAINING adds nothing either way). Seed ids are new
        (`s1-SLOT`, ... in slot order), and fossils of different slots come back in slot order, not in the order
        they fossilized."""
        planted = itertools.count(1)
        for key, slot in self.slots.items():
            at = f"{prefix}slots.{key}."
            fossils = {k.removeprefix(f"{at}fossils.").split(".", 1)[0] for k in state_dict
                       if k.startswith(f"{at}fossils.")}
            for i in range(len(fossils)):  # keyed 0, 1, ...: one missing is refused as matching no blueprint
                blueprint = self._blueprint_of(slot, _shapes(state_dict, f"{at}fossils.{i}.module."), f"fossil {i}")
                self.build(slot.name, f"s{next(planted)}-{slot.name}", blueprint)
            if live := _shapes(state_dict, f"{at}live.module."):
                seed_id = f"s{next(planted)}-{slot.name}"
                self.germinate(slot.name, seed_id, self._blueprint_of(slot, live, "live seed"))
                blending = state_dict.get(f"{at}live._extra_state") or {}
                if blending.get("blend_steps"):
                    self.start_training(seed_id)
                    self.start_blending(seed_id, int(blending["blend_steps"]), str(blending["schedule"]))

    def _blueprint_of(self, slot: Slot, weights: dict[str, tuple], which: str) -> str:
        """The blueprint of `slot` whose weights have these names and shapes (those of each blueprint differ)."""
        for name in offered(slot.family, slot.repeats):
            if name == REPEAT:
                built = self.host.get_submodule(slot.after).state_dict(prefix="block.")
            else:
                with torch.device("meta"):  # no memory, no draw from the RNG
                    built = BLUEPRINTS[slot.family][name](slot.channels).state_dict()
            if _shapes(built, "") == weights:
                return name
        raise BadInput(f"the state dict's {which} of slot {slot.name} has the weights of no blueprint of this slot "
                       f"({slot.family}, {slot.channels} channels): load it into esper.grow of the same model, slots "
                       "and example")

    # ---- helpers -------------------------------------------------------------------------------

    def _lookup(self, seed_id: str) -> tuple[str, Slot, Seed] | None:
        for slot in self.slots.values():
            for seed in slot.seeds():
                if seed.seed_id == seed_id:
                    return slot.name, slot, seed
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


def _shapes(state_dict, prefix: str) -> dict[str, tuple]:
    """Name (after `prefix`) → shape of each tensor of `state_dict` under `prefix`."""
    return {k[len(prefix):]: tuple(v.shape) for k, v in state_dict.items()
            if k.startswith(prefix) and isinstance(v, torch.Tensor)}


def slot_key(name: str) -> str:
    """A slot's key in `GrowableModel.slots` (module names hold no dots; a slot named by a dotted path does)."""
    return name.replace(".", "_")


def chain_after(host: nn.Module, path: str) -> list[str] | None:
    """The paths of the submodules that run after `path`, in order, when every module from `host` down to
    `path`'s parent is a plain `nn.Sequential`: the host's output is then those applied in turn to `path`'s
    output. None when any of them is not (a graph Esper cannot see into)."""
    levels = []
    module, prefix = host, ""
    for part in path.split("."):
        if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
            return None
        names = [n for n, m in module._modules.items() if m is not None]
        levels.append([prefix + n for n in names[names.index(part) + 1:]])
        module, prefix = module._modules[part], f"{prefix}{part}."
    return [p for level in reversed(levels) for p in level]


def _to_channels_last(module: nn.Module) -> None:
    """Every 4-D parameter and buffer of `module` channels-last, in place. `Module.to(memory_format=...)` would also
    convert 5-D ones (a user's Conv3d), which have no channels-last layout, and fail."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
