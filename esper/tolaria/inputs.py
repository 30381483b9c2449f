"""A batch's inputs: the `x` of `(x, y)` is one tensor, or a tuple of a model's positional inputs (a model of
several inputs, called `model(*x)`, as `esper.grow` calls it on a tuple example)."""

from typing import Any

import torch

from esper.tolaria.data import to_device


def positional(x: Any) -> tuple:
    """The model's positional arguments for `x`."""
    return x if isinstance(x, tuple) else (x,)


def rows(x: Any, start: int, stop: int) -> Any:
    """Examples `[start, stop)` of `x`: of each of its tensors when it is a tuple."""
    if isinstance(x, tuple):
        return tuple(t[start:stop] for t in x)
    return x[start:stop]


def moved(x: Any, device: torch.device | None) -> Any:
    """`x` with its tensors on `device` (None: where they are); anything else as it is."""
    if isinstance(x, tuple):
        return tuple(moved(t, device) for t in x)
    if device is None or not isinstance(x, torch.Tensor):
        return x
    return to_device(x, device)
