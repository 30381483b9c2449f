"""`grow`: any `nn.Module` becomes a `GrowableModel`, with slots after the submodules the user names.

One forward pass of an example input finds each slot's activation shape, and the shape picks the blueprint family
that grows there: `(B, C, H, W)` conv2d; a 3-D activation is `(B, C, L)`, conv1d, when the last layer that shaped it
is a 1-D convolution, normalisation or pooling (`CHANNELS_FIRST`), else `(B, T, D)`, sequence (`causal_sequence`
unless `causal=False`: Esper cannot see whether the model lets positions see later ones, and a causal seed is safe
in any model); `(B, D)` features, an MLP's hidden layer (`families` names a slot's family where that guess is
wrong: a 3-D activation of a layer Esper does not know). The same pass says where a copy of the submodule can grow
(`repeat`, growth by depth): after one with parameters that maps its one input to an output of the same shape and
dtype (a transformer's block, a residual block of unchanged width). The copy runs on the submodule's output, so it
adds a block when the submodule holds its residual (`x + f(x)` inside it, as the built-in transformer's blocks do);
after a residual branch `f` that the model adds outside (`h + f(h)`), the grown model computes `h + f(f(h))`. Shapes
are all the pass sees: an example whose dimensions differ from each other (batch, length and width) keeps a
submodule that transposes or mixes them from passing for one that keeps them. The pass runs on the meta device
(shapes only: no memory, no arithmetic), or for real on the model's own device when some module cannot run on meta;
either way in eval mode, without gradients, on a copy of the buffers and a fork of the RNG, so growing changes
nothing about the model or a run's randomness. Bad input is one `BadInput` line.
"""

import difflib
import functools
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from esper.errors import BadInput, first_line
from esper.kasmina.model import GrowableModel, SlotHook, slot_key
from esper.kasmina.slot import Slot

MESSAGE_CHARS = 200
"""How much of the model's own error message a bad example quotes."""

CHANNELS_FIRST = (nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d, nn.InstanceNorm1d, nn.MaxPool1d, nn.AvgPool1d,
                  nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)
"""Layers whose 3-D output is `(B, C, L)`."""
CHANNELS_LAST = (nn.Linear, nn.LayerNorm, nn.Embedding, nn.MultiheadAttention, nn.RNNBase)
"""Layers whose 3-D output is `(B, T, D)`. Layers of neither kind (activations, dropout) keep the layout."""


SEVERAL_INPUTS = (tuple, list)
"""An example, or a batch's x, of these types holds a model's positional inputs: `model(*x)` (a DataLoader collates
a dataset's tuples into lists)."""


def positional(x) -> tuple:
    """The model's positional arguments for an example or a batch's x."""
    return tuple(x) if isinstance(x, SEVERAL_INPUTS) else (x,)


def grow(model: nn.Module, slots: Sequence[str] | Mapping[str, str], example, *, causal: bool = True,
         families: Mapping[str, str] | None = None) -> GrowableModel:
    """`model` with a slot after each submodule in `slots`: dotted paths as `named_modules()` gives them (each
    slot named by its path), or a mapping slot name → path. `example`: an input the model takes (a tensor, or
    a tuple or list of its positional inputs); only its shapes matter (best all different: batch, length, width).
    `causal`: seeds in (B, T, D) slots attend to earlier positions only (as a decoder's own layers do; False lets
    them see the whole sequence, for an encoder). `families`: slot name → the blueprint family that grows there,
    where the activation's shape leaves a choice Esper guessed wrong: a 3-D activation is conv1d's (B, C, L) or
    sequence's (B, T, D) (or causal_sequence's). The model itself is grown (hooks on its submodules); the returned
    module wraps it."""
    paths = _slot_paths(model, slots)
    chosen = _chosen_families(families, paths)
    activations = _activations(model, list(paths.values()), example)
    grown = []
    for name, path in paths.items():
        family, channels = family_of(path, activations[path], causal, chosen.get(name))
        repeats = all(repeatable for _, _, repeatable in activations[path]) and _has_parameters(model, path)
        grown.append(Slot(name, path, family, channels, repeats=repeats))
    return GrowableModel(model, grown)


FAMILIES_OF_RANK = {2: ("features",), 3: ("conv1d", "sequence", "causal_sequence"), 4: ("conv2d",)}
"""The blueprint families that grow on activations of each number of dimensions, batch included."""


def family_of(path: str, outputs: list[tuple], causal: bool = True, family: str | None = None) -> tuple[str, int]:
    """The blueprint family and width of the slot after `path`, from what the submodule returned: one
    (shape, last layer that shaped it, whether it kept its input's shape) per call in the example's forward pass;
    `family`, if given, where the shape allows it (`FAMILIES_OF_RANK`)."""
    if len(outputs) != 1:
        raise BadInput(f"{path} runs {len(outputs)} times in one forward pass: a slot goes after a submodule that runs once")
    shape, shaped_by, _ = outputs[0]
    if not isinstance(shape, torch.Size):
        raise BadInput(f"{path} returns a {shape}, not a tensor: a slot goes after a submodule that returns one tensor")
    fits = FAMILIES_OF_RANK.get(len(shape), ())
    if family is not None and fits:
        if family not in fits:
            raise BadInput(f"families: {path} gives activations of shape {tuple(shape)}, which {' or '.join(fits)} "
                           f"grow{'s' * (len(fits) == 1)} on, not {family}")
        return family, shape[1] if family in ("conv1d", "conv2d") else shape[-1]
    if len(shape) == 4:
        return "conv2d", shape[1]
    if len(shape) == 3 and shaped_by is not None and issubclass(shaped_by, CHANNELS_FIRST):
        return "conv1d", shape[1]
    if len(shape) == 3:
        return ("causal_sequence" if causal else "sequence"), shape[2]
    if len(shape) == 2:
        return "features", shape[1]
    raise BadInput(f"{path} gives activations of shape {tuple(shape)}: no blueprint family grows those (features "
                   "take (B, D), conv1d (B, C, L), conv2d (B, C, H, W), sequence (B, T, D))")


def _slot_paths(model: nn.Module, slots: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """Slot name → submodule path, each path checked against the model."""
    if not isinstance(model, nn.Module):
        raise BadInput(f"esper.grow takes a torch nn.Module, got {type(model).__name__}")
    if isinstance(model, GrowableModel) or any(isinstance(h, SlotHook) for m in model.modules()
                                               for h in m._forward_hooks.values()):
        raise BadInput("this model is grown already: grow a model once, with all its slots")
    if next(model.parameters(), None) is None:
        raise BadInput(f"the {type(model).__name__} has no parameters: there is nothing to train or grow")
    if isinstance(slots, str) or not slots:
        raise BadInput("slots: give a list of submodule paths, e.g. ['layer1', 'layer2']")
    paths = dict(slots) if isinstance(slots, Mapping) else {path: path for path in slots}
    for name, path in paths.items():
        if not (isinstance(name, str) and name and isinstance(path, str) and path):
            shown = repr(path) if name == path else f"{name!r}: {path!r}"
            raise BadInput(f"slots: each slot names a submodule by its path, a non-empty text like 'layer1'; got {shown}")
    names = [n for n, _ in model.named_modules() if n]
    if not names:
        raise BadInput(f"the {type(model).__name__} has no submodules: a slot goes after a submodule of the model, "
                       "named by its path in model.named_modules()")
    for path in paths.values():
        if path not in names:
            raise BadInput(f"the model has no submodule {path!r} ({_suggestion(path, names)})")
    if len(set(paths.values())) != len(paths) or len({slot_key(n) for n in paths}) != len(paths):
        raise BadInput(f"slots name the same place or name twice: {list(paths.items())}")
    return paths


def _chosen_families(families: Mapping[str, str] | None, paths: dict[str, str]) -> dict[str, str]:
    """Slot name → the family the user chose for it, each checked to name a slot and a family."""
    if families is None:
        return {}
    if not isinstance(families, Mapping):
        raise BadInput(f"families: a dict of slot name → family, e.g. {{'layer1': 'conv1d'}}; got {families!r}")
    known = [family for fits in FAMILIES_OF_RANK.values() for family in fits]
    for name, family in families.items():
        if name not in paths:
            raise BadInput(f"families: no slot {name!r} (slots: {', '.join(paths)})")
        if family not in known:
            raise BadInput(f"families: unknown family {family!r} for slot {name} (families: {', '.join(known)})")
    return dict(families)


def _has_parameters(model: nn.Module, path: str) -> bool:
    """Whether the submodule has weights of its own: a copy of a ReLU would grow nothing."""
    return next(model.get_submodule(path).parameters(), None) is not None


def _suggestion(path: str, names: list[str], n: int = 4) -> str:
    """What a slot path that is no submodule's may have meant: the `n` names most like it, the best first (ties in
    the model's order), or where none is close its first `n` submodules, the outermost first."""
    score = {name: difflib.SequenceMatcher(None, path, name).ratio() for name in names}
    near = sorted((name for name in names if score[name] >= 0.5), key=lambda name: -score[name])
    if near:
        return f"nearest: {', '.join(near[:n])}"
    more = f", … {len(names)} in all" if len(names) > n else ""
    outer = sorted(names, key=lambda name: name.count("."))
    return f"none is close; its submodules: {', '.join(outer[:n])}{more}"


def _activations(model: nn.Module, paths: list[str], example) -> dict[str, list[tuple]]:
    """Path → (shape, the class of the last layer of `CHANNELS_FIRST` or `CHANNELS_LAST` that ran before, whether
    it was called on one tensor alone of the output's shape and dtype) of each output that submodule gave in one
    forward pass of `example`."""
    inputs = positional(example)
    try:
        return _trace(model, paths, inputs, meta=True)
    except Exception:  # no meta kernel for some op, or an op that needs values (`.item()`, data-dependent shapes)
        pass
    try:
        return _trace(model, paths, inputs, meta=False)
    except Exception as exc:
        message = first_line(exc)
        message = message if len(message) <= MESSAGE_CHARS else message[:MESSAGE_CHARS - 3] + "..."
        raise BadInput(f"the example fails the model's forward pass: {type(exc).__name__}: {message}") from None


def _trace(model: nn.Module, paths: list[str], inputs: tuple, meta: bool) -> dict[str, list[tuple]]:
    outputs: dict[str, list] = {path: [] for path in paths}
    shaping: list[type] = []  # the layout layers that ran, in order (registered first: they see their output first)
    handles = [m.register_forward_hook(lambda module, args, output: shaping.append(type(module)))
               for m in model.modules() if isinstance(m, CHANNELS_FIRST + CHANNELS_LAST)]
    handles += [model.get_submodule(p).register_forward_hook(functools.partial(_record, outputs[p], shaping),
                                                             with_kwargs=True)
                for p in paths]
    modes = {m: m.training for m in model.modules()}
    device = torch.device("meta") if meta else next(model.parameters()).device
    if meta:
        state = {n: t.to("meta") for n, t in [*model.named_parameters(), *model.named_buffers()]}
    else:
        state = {n: b.clone() for n, b in model.named_buffers()}
    moved = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs)
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            functional_call(model, state, moved)
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode
    return outputs


def _record(outputs: list, shaping: list[type], module: nn.Module, args: tuple, kwargs: dict, output) -> None:
    shape = output.shape if isinstance(output, torch.Tensor) else type(output).__name__
    # a copy runs as `copy(x)`: what the submodule took besides its one input would be missing
    repeatable = (len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor) and args[0].shape == shape
                  and args[0].dtype == output.dtype)
    outputs.append((shape, shaping[-1] if shaping else None, repeatable))
