"""A batch's parts: the `x` of `(x, y)` is one tensor, or a tuple or list of a model's positional inputs (a model
of several inputs, called `model(*x)` as `esper.grow` calls it on its example); `y` likewise one tensor, or a
tuple or list of several targets (a model of several outputs, whose loss and score take them as they come)."""

from typing import Any

import torch

from esper.kasmina.grow import SEVERAL_INPUTS, positional
from esper.tolaria.data import to_device

__all__ = ["examples_in", "moved", "positional", "rows"]


def examples_in(part: Any) -> int:
    """How many examples a batch's `x` or `y` holds (the rows of the first tensor when it holds several)."""
    return len(positional(part)[0])


def rows(x: Any, start: int, stop: int) -> Any:
    """Examples `[start, stop)` of `x`: of each of its inputs when it holds several."""
    if isinstance(x, SEVERAL_INPUTS):
        return tuple(t[start:stop] for t in x)
    return x[start:stop]


def moved(x: Any, device: torch.device | None) -> Any:
    """`x` with its tensors on `device` (None: where they are); anything else as it is."""
    if isinstance(x, SEVERAL_INPUTS):
        return tuple(moved(t, device) for t in x)
    if device is None or not isinstance(x, torch.Tensor):
        return x
    return to_device(x, device)
