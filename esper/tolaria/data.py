"""Task data held in memory as tensors, and batches drawn from it without a DataLoader.

Both tasks are small enough to live in memory (MNIST-1D is 5,000 signals of length 40; CIFAR-10 is
about 740 MB as float32), so the trainer slices batches straight out of tensors: no workers, no
collation, and the shuffle order comes from a `torch.Generator` the trainer owns, so the same seed
gives the same batches.

* `mnist1d` is generated locally by the `mnist1d` package (`make_dataset`, never `get_dataset`,
  which may download a pickle). Generation takes about a second, so the arrays are cached in memory
  per process and on disk under `$ESPER_CACHE` (else `$XDG_CACHE_HOME/esper`, else `~/.cache/esper`).
  The last 20% of the generated training set is the validation set; inputs are standardised with
  the mean and standard deviation of the remaining training set.
* `cifar10` is read by torchvision's own `CIFAR10` loader (checksums verified) from `data_dir` (the folder
  holding `cifar-10-batches-py`, or that folder itself), downloading there when asked. The last 10% of the
  training set (5,000 images) is the validation set; inputs are standardised with the usual per-channel
  CIFAR-10 statistics.

Every split has `x` float32 of shape `(N, C, L)` or `(N, C, H, W)` and `y` int64 class indices. Both tasks
classify: `TaskData` also says what is measured on a batch (cross-entropy, top-1 accuracy), the interface
a user's own data and loss provide too (`esper.tolaria.userdata`).
"""

import contextlib
import importlib.metadata
import inspect
import math
import os
import random
import shutil
import zipfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from esper.errors import BadInput
from esper.kasmina.hosts import Transformer
from esper.leyline.config import TaskPreset
from esper.leyline.events import RunStarted
from esper.nissa.fmt import plural
from esper.tolaria.tasks import get_task
from esper.tolaria.text import TextData, load_text

TEXT_CONTEXT = inspect.signature(Transformer).parameters["context"].default
"""The transformer host's context when a preset does not set it: the text task's window length."""

SPLITS = ("train", "val", "test")

MNIST1D_VAL_FRACTION = 0.2
"""Share of MNIST-1D's generated training set held out (from its end) for validation."""

CIFAR10_VAL_FRACTION = 0.1
"""Share of CIFAR-10's training set held out (from its end) for validation: 5,000 of 50,000."""
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
"""Per-channel statistics of the CIFAR-10 training images (pixels scaled to 0..1)."""

_MNIST1D_CACHE_FORMAT = 1
"""Bump when the cached arrays change meaning; old cache files are then ignored."""


class Split(NamedTuple):
    """One split of a task: inputs `x` (float32) and class indices `y` (int64), same length."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:  # type: ignore[override]  # the number of examples, not of fields
        return int(self.y.shape[0])


@attrs.frozen(eq=False)
class TaskData:
    """A task's train, validation and test splits, in memory."""

    task: str
    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. `(1, 40)` or `(3, 32, 32)`."""
        return tuple(self.train.x.shape[1:])

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r} (splits: {', '.join(SPLITS)})")
        return getattr(self, name)

    def to(self, device: torch.device | str) -> "TaskData":
        """The same data on `device` (all of it: it is small), e.g. to skip per-batch copies on GPU."""
        moved = {s: Split(*(t.to(device) for t in self.split(s))) for s in SPLITS}
        return attrs.evolve(self, **moved)

    def batches(
        self,
        split: str,
        batch_size: int,
        generator: torch.Generator | None = None,
        *,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`(x, y)` batches covering `split` once.

        `train` is shuffled by a permutation drawn from `generator` (required) when this is called,
        so the same generator state gives the same batches. `val` and `test` come in order and
        ignore `generator`; their batches are views of the stored tensors, so never modify a batch in
        place. The last batch is smaller unless `drop_last`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        x, y = self.split(split)
        n = len(y)
        order = None
        if split == "train":
            if generator is None:
                raise ValueError("training batches are shuffled: pass a torch.Generator")
            order = to_device(torch.randperm(n, generator=generator, device=generator.device), x.device)
        stop = n - n % batch_size if drop_last else n
        return _slices(x, y, order, batch_size, stop)

    def steps(self, batch_size: int) -> int:
        """Training batches in one epoch (`batches("train", batch_size, ...)`)."""
        return math.ceil(len(self.train) / batch_size)

    def examples(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `n` training examples, in order (what the sharpness probe measures the loss on)."""
        return self.train.x[:n], self.train.y[:n]

    # What is measured on a batch of logits and class indices.
    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss: what training minimises."""
        return F.cross_entropy(output, y)

    def loss_sum(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's summed loss: what evaluation adds up over a split."""
        return F.cross_entropy(output, y, reduction="sum")

    def correct(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """How many of the batch's examples the model gets right (top-1)."""
        return (output.argmax(1) == y).sum()


def _slices(
    x: torch.Tensor, y: torch.Tensor, order: torch.Tensor | None, batch_size: int, stop: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            index = order[start : start + batch_size]
            yield x[index], y[index]


def data_problem(task: str, data_dir: object, download: bool) -> str | None:
    """Why a new run of `task` should not be given `data_dir` or `download` (None if it may): a setting the task would
    ignore is refused rather than silently dropped."""
    name = get_task(task).name
    if name == "mnist1d" and (data_dir is not None or download):
        return ("mnist1d is generated from the run's seed and reads no files: --data-dir and --download are for "
                "cifar10 and text")
    if name == "text" and download:
        return ("--download is for cifar10: the text task reads the file or folder given with --data-dir, else the "
                "standard library's sources")
    return None


def load_task_data(
    task: str,
    seed: int,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    *,
    limit: int | None = None,
    preset: TaskPreset | None = None,
) -> "TaskData | TextData":
    """Load `task`'s splits into memory.

    `seed` is the generation seed of `mnist1d` (each seed gives a different, reproducible dataset);
    the other tasks ignore it. `data_dir` is where `cifar10` lives or the text of `text` (`download`
    concerns `cifar10` only). `preset`: the task preset the run trains with (the text task's windows follow
    its host's context), the task's own by default. `limit` keeps at most that many examples of each split
    (the first ones; not the text task's), for quick tests. Raises `BadInput` for an unknown task or data that is missing or unusable.
    """
    preset = preset or get_task(task)
    name = get_task(task).name
    if name == "text":
        return load_text(name, data_dir, int(preset.host_options.get("context", TEXT_CONTEXT)), preset.epoch_windows)
    if name == "mnist1d":
        data = _load_mnist1d(seed, exact=preset.standardise == "exact")
    elif name == "cifar10":
        data = _load_cifar10(data_dir, download)
    else:  # a preset without a loader is a bug here, not bad input
        raise NotImplementedError(f"no data loader for task {name!r}")
    if limit is not None:
        data = attrs.evolve(data, **{s: Split(*(t[:limit].clone() for t in data.split(s))) for s in SPLITS})
    return data


def recorded_data(started: RunStarted) -> "TaskData | TextData":
    """The data of a logged run, loaded with its recorded config and preset to re-execute or resume it; `BadInput`
    when the text it recorded is not the text found now (another Python's standard library, a changed file)."""
    config = started.config
    try:
        data = load_task_data(config.task, config.data_seed, config.data_dir, preset=started.preset)
    except BadInput:
        if config.data_dir is None:
            raise
        raise BadInput(f"the run's data is not here: it was recorded with --data-dir {config.data_dir}, which cannot "
                       "be read now; re-run where that data is") from None
    was, now = started.corpus, getattr(data, "corpus", None)
    if was is not None and now is not None and now.sha256 != was.sha256:
        raise BadInput(f"the text corpus is not the run's: it read {plural(was.files, 'file')}, {was.bytes:,} bytes "
                       f"from {was.path} (sha256 {was.sha256[:12]}...), here {now.path} gives {plural(now.files, 'file')}, "
                       f"{now.bytes:,} bytes (sha256 {now.sha256[:12]}...); re-run where that text is")
    return data


def bits_per_char(data: Any, split: str, loss: float) -> float | None:
    """`split`'s mean loss in bits per character, for the text task's data (None for any other)."""
    return data.bits_per_char(split, loss) if isinstance(data, TextData) else None


def cache_dir() -> Path:
    """Where Esper caches generated data: `$ESPER_CACHE`, else `$XDG_CACHE_HOME/esper`, else `~/.cache/esper`."""
    if os.environ.get("ESPER_CACHE"):
        return Path(os.environ["ESPER_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "esper"


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`; a host tensor bound for CUDA goes through pinned memory without waiting for the copy, so
    a training step that draws on the host (a permutation, augmentation) never makes the host wait for the GPU."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


# ---- augmentation ------------------------------------------------------------------------------


def augment(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop (after zero-padding by `padding`) and random horizontal flip of each image in `x`.

    `x` is a batch `(N, C, H, W)`; the result has the same shape, on the same device. Zero is the
    mean pixel once inputs are standardised. Draws from `generator` only, so it is reproducible.
    """
    n, _, h, w = x.shape
    draw = {"generator": generator, "device": generator.device}
    top = torch.randint(0, 2 * padding + 1, (n,), **draw)
    left = torch.randint(0, 2 * padding + 1, (n,), **draw)
    flip = torch.randint(0, 2, (n,), **draw)
    top, left, flip = to_device(torch.stack([top, left, flip]), x.device)  # one copy, the same draws as three
    flip = flip.bool()
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = top[:, None] + torch.arange(h, device=x.device)  # (N, H)
    across = torch.arange(w, device=x.device)
    cols = left[:, None] + torch.where(flip[:, None], across.flip(0), across)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


# ---- mnist1d -----------------------------------------------------------------------------------


def _load_mnist1d(seed: int, exact: bool = True) -> TaskData:
    """The splits, standardised with the training split's moments: `exact` ones, or numpy's float32 ones (the
    preset's `standardise`)."""
    x, y, x_test, y_test = _mnist1d_arrays(seed)
    n_fit = len(y) - int(len(y) * MNIST1D_VAL_FRACTION)
    fit = x[:n_fit]
    mean, std = exact_moments(fit) if exact else (float(fit.mean()), float(fit.std()))

    def split(xs: np.ndarray, ys: np.ndarray) -> Split:
        inputs = (torch.tensor(xs, dtype=torch.float32) - mean) / std
        return Split(inputs.unsqueeze(1), torch.tensor(ys, dtype=torch.int64))

    return TaskData(
        task="mnist1d",
        train=split(x[:n_fit], y[:n_fit]),
        val=split(x[n_fit:], y[n_fit:]),
        test=split(x_test, y_test),
        num_classes=10,
    )


def exact_moments(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of `values`, each sum rounded once (`math.fsum`): the same bits whatever order
    a numpy version or a CPU's vector width adds them in. numpy's own reductions differ in the last bits between
    releases (1.26 and 2.x give float32 means 1e-9 apart), and so would every number a run computes from them."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    mean = math.fsum(flat.tolist()) / flat.size
    return mean, math.sqrt(math.fsum(np.square(flat - mean).tolist()) / flat.size)


@lru_cache(maxsize=8)
def _mnist1d_arrays(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`(x, y, x_test, y_test)` of MNIST-1D generated with `seed`: from disk when cached, else made here.

    The arrays are shared by every caller in the process; `_load_mnist1d` copies them.
    """
    version = importlib.metadata.version("mnist1d")  # the generator's code decides the data
    path = cache_dir() / f"mnist1d-{version}-f{_MNIST1D_CACHE_FORMAT}-seed{seed}.npz"
    arrays = _read_npz(path)
    if arrays is None:
        arrays = _generate_mnist1d(seed)
        _write_npz(path, arrays)
    return arrays


_KEYS = ("x", "y", "x_test", "y_test")


def _generate_mnist1d(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run the package's generator (pure numpy/scipy, no network), leaving the global RNGs as found."""
    from mnist1d.data import get_dataset_args, make_dataset  # ~1 s to import; skipped on a cache hit

    args = get_dataset_args()
    args.seed = seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:  # make_dataset reseeds and draws from Python's and NumPy's global generators
        made = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return (
        made["x"].astype(np.float32),
        made["y"].astype(np.int64),
        made["x_test"].astype(np.float32),
        made["y_test"].astype(np.int64),
    )


def _read_npz(path: Path) -> tuple[np.ndarray, ...] | None:
    """The cached arrays, or None when the file is absent, unreadable or not what we wrote."""
    try:
        with np.load(path, allow_pickle=False) as cached:
            arrays = tuple(cached[k] for k in _KEYS)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    x, y, x_test, y_test = arrays
    if x.ndim != 2 or len(x) != len(y) or x_test.ndim != 2 or len(x_test) != len(y_test):
        return None
    return arrays


def _write_npz(path: Path, arrays: tuple[np.ndarray, ...]) -> None:
    """Cache `arrays` at `path` atomically (concurrent runs never see half a file); best effort."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **dict(zip(_KEYS, arrays)))
        os.replace(tmp, path)
    except OSError:  # a read-only or full disk, or a cache path under a file, only costs the next process a regeneration
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


# ---- cifar10 -----------------------------------------------------------------------------------


CIFAR10_FOLDER = "cifar-10-batches-py"
"""The folder torchvision's CIFAR10 reads inside its root."""


def _load_cifar10(data_dir: str | os.PathLike[str] | None, download: bool) -> TaskData:
    root = Path(data_dir).expanduser() if data_dir is not None else cache_dir() / "cifar10"
    if root.name == CIFAR10_FOLDER and not (root / CIFAR10_FOLDER).is_dir():  # the data's folder, not its parent
        root = root.parent
    # A run given neither trains on what an earlier --download left in the cache: the run that downloaded it records
    # no --data-dir, and re-executing or resuming it must find the same data.
    if data_dir is None and not download and not (root / CIFAR10_FOLDER).is_dir():
        raise BadInput(f"cifar10 needs its data: give --data-dir, the folder holding {CIFAR10_FOLDER}, or --download")
    from torchvision.datasets import CIFAR10

    # the highest folder a download makes (torchvision makes every missing one): removed if the download fails
    made = next((folder for folder in reversed([root, *root.parents]) if not folder.exists()), None)
    try:
        train = CIFAR10(root, train=True, download=download)
        test = CIFAR10(root, train=False, download=download)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted" (files missing or checksums wrong)
        raise BadInput(
            f"no CIFAR-10 data in {root} (expected {root / CIFAR10_FOLDER} with verified checksums): "
            "give --data-dir, a folder holding it, or --download"
        ) from None
    except OSError as e:  # the download itself failed: offline, refused, disk full
        if made is not None:  # a failed download leaves nothing behind: the folders it made, a part-written archive
            shutil.rmtree(made, ignore_errors=True)
        reason = str(e).replace("\n", " ")
        raise BadInput(f"could not download CIFAR-10 into {root} ({reason}): give --data-dir, a folder holding it") from None
    x, y = _cifar10_tensors(train)
    n_fit = len(y) - int(len(y) * CIFAR10_VAL_FRACTION)
    return TaskData(
        task="cifar10",
        train=Split(x[:n_fit], y[:n_fit]),
        val=Split(x[n_fit:], y[n_fit:]),
        test=Split(*_cifar10_tensors(test)),
        num_classes=len(train.classes),
    )


def _cifar10_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised `(N, 3, 32, 32)` float32 images and int64 labels of a torchvision CIFAR10."""
    x = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # stored (N, H, W, C) uint8
    x = x.to(torch.float32).div_(255.0)
    x.sub_(torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)).div_(torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))
    return x, torch.tensor(dataset.targets, dtype=torch.int64)
