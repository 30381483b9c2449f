"""A user's own batches and loss (`esper.fit`), behind the interface the trainer trains on (`TaskData`'s).

Batches come as the user's iterables give them: their size, their order and their shuffling are the user's
(a `DataLoader` shuffles with its own generator). Each split is read again every epoch, so it must be a
collection (a list, a `DataLoader`) or a function returning the batches; a one-shot iterator is refused.
"""

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
import torch

from esper.errors import BadInput, first_line
from esper.tolaria.inputs import examples_in, moved, positional, rows

Loss = Callable[[Any, torch.Tensor], torch.Tensor]
Score = Callable[[Any, torch.Tensor], Any]


@attrs.define(eq=False)
class UserData:
    """Splits of (x, y) batches; `loss(output, y)` is the batch's mean loss, `score(output, y)` the fraction of
    the batch the model gets right (default: top-1 accuracy of logits `(B, classes)` against class indices)."""

    train: Iterable | Callable[[], Iterable]
    val: Iterable | Callable[[], Iterable]
    test: Iterable | Callable[[], Iterable] | None
    """None: the run measures no test score (`RunFinished.test_accuracy` is None)."""
    loss_fn: Loss
    score: Score | None = None
    device: torch.device | None = None
    train_steps: int | None = None
    """Batches in one pass over `train`: its `len()`, else counted in the first pass."""

    def __attrs_post_init__(self) -> None:
        for split in ("train", "val", "test"):
            source = getattr(self, split)
            if source is None and split == "test":
                continue
            if not (callable(source) or isinstance(source, Iterable)):
                raise BadInput(f"{split} is {_kind(source)}: pass a list of (x, y) batches, a DataLoader, or a function "
                               "that returns the batches")
            if isinstance(source, Iterator):
                raise BadInput(f"{split} is an iterator, which runs out after one epoch: pass a list, a DataLoader, or "
                               "a function that returns the batches")
        if self.train_steps is None and not callable(self.train) and hasattr(self.train, "__len__"):
            self.train_steps = len(self.train)

    def to(self, device: torch.device | str) -> "UserData":
        """The same data, each batch moved to `device` as it is drawn."""
        return attrs.evolve(self, device=torch.device(device))

    def batches(self, split: str, batch_size: int = 0, generator: torch.Generator | None = None,
                **_: Any) -> Iterator[tuple[Any, torch.Tensor]]:
        """The split's batches as the user gives them (`batch_size` and `generator` are the built-in tasks')."""
        count = 0
        for x, y in self._pass(split):
            count += 1
            yield moved(x, self.device), moved(y, self.device)
        if split == "train":
            self.train_steps = count

    def holds_nothing(self, split: str) -> bool:
        """Whether `split` gives no batch: its `len()` when it has one (drawing a batch would move a shuffling
        DataLoader's generator on), else whether a first batch comes."""
        source = getattr(self, split)
        if not callable(source):
            try:
                return len(source) == 0
            except TypeError:  # no length: a generator's DataLoader, an IterableDataset's
                pass
        return next(iter(self._pass(split)), None) is None

    def _pass(self, split: str) -> Iterable:
        """The items of one pass over `split`, as the user gives them: a function's result, drawn anew."""
        source = getattr(self, split)
        return source() if callable(source) else source

    def steps(self, batch_size: int = 0) -> int:
        """Training batches in one epoch (1 until a pass over an unsized `train` has counted them)."""
        return self.train_steps or 1

    def examples(self, n: int) -> tuple[Any, torch.Tensor]:
        """The first `n` examples of the first training batch."""
        x, y = next(iter(self.batches("train")))
        return rows(x, 0, n), rows(y, 0, n)

    def loss(self, output: Any, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(output, y)

    def loss_sum(self, output: Any, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(output, y) * examples_in(y)

    def correct(self, output: Any, y: Any) -> torch.Tensor:
        if self.score is not None:
            right = torch.as_tensor(self.score(output, y), dtype=torch.float32, device=positional(y)[0].device)
            return right * examples_in(y)
        return (output.argmax(1) == y).sum()


def check_first_batch(model: torch.nn.Module, data: UserData, split: str) -> None:
    """Refuse, before anything is written, what would make the run's numbers wrong or fail it later: the first
    batch of `split` must be a pair (x, y) whose tensors hold one row per example, and the model's output on it (in
    eval mode, without gradients: nothing about the model changes) must give a finite scalar loss and a score
    between 0 and 1; the default score needs logits `(B, classes)` and class indices `(B,)`."""
    where = f"the first {SPLIT_NAMES[split]} batch"
    try:
        x, y = next(iter(data.batches(split)))
    except (TypeError, ValueError) as exc:  # unpacking an item into x, y
        raise BadInput(f"{where} is not a pair (x, y): {first_line(exc)}") from exc
    for name, part in (("x", x), ("y", y)):
        if odd := [t for t in positional(part) if not isinstance(t, torch.Tensor) or not t.dim()]:
            raise BadInput(f"{name} of {where} holds {_kind(odd[0], shape=True)}: each batch is a pair (x, y) whose parts "
                           "are tensors, or tuples of them, with one row per example (a constant belongs in the model; "
                           "a dict batch unpacks into its keys)")
    counts = sorted({len(t) for t in (*positional(x), *positional(y))})
    if len(counts) > 1:  # slicing a batch into shards or examples takes the same rows of each part
        raise BadInput(f"the tensors of {where} hold different numbers of examples ({', '.join(map(str, counts))}): "
                       "each input and target has one row per example")
    loss, score = data.loss_fn, data.score
    if score is None and not (isinstance(y, torch.Tensor) and not y.is_floating_point() and not y.is_complex()):
        raise BadInput(f"y is {_kind(y)}, not class indices: esper.fit measures top-1 accuracy by default; {_PASS_SCORE}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(*positional(moved(x, device)))
            y = moved(y, device)
            if score is None and not (isinstance(output, torch.Tensor) and output.dim() == 2 and y.dim() == 1
                                      and len(output) == len(y)):
                raise BadInput(f"the model gives {_kind(output, shape=True)} for targets of shape {tuple(y.shape)}: the "
                               f"default score is top-1 accuracy of logits (B, classes) against class indices (B,); "
                               f"{_PASS_SCORE}")
            value = loss(output, y)
            if not (isinstance(value, torch.Tensor) and value.dim() == 0 and torch.isfinite(value)):
                raise BadInput(f"loss(output, y) gave {_kind(value, shape=True)} on {where}: it must be the "
                               "batch's mean loss, a finite scalar tensor")
            right = float(torch.as_tensor(score(output, y) if score else (output.argmax(1) == y).float().mean()))
    except BadInput:
        raise
    except Exception as exc:  # the user's model, loss or score: their own message, traceback chained
        raise BadInput(f"the model, loss or score fails on {where}: {type(exc).__name__}: "
                       f"{first_line(exc)}") from exc
    finally:
        model.train(was_training)
    if not 0.0 <= right <= 1.0:
        raise BadInput(f"score(output, y) gave {right:.6g} on {where}: it must be the fraction of the batch "
                       "the model gets right, 0..1")


SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}

_PASS_SCORE = "pass score=f(output, y) giving the fraction of a batch the model gets right (0..1)"


def _kind(value: Any, shape: bool = False) -> str:
    if not isinstance(value, torch.Tensor):
        return f"a {type(value).__name__}"
    return f"a {value.dtype} tensor" + (f" of shape {tuple(value.shape)}" if shape else "")

