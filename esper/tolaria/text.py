"""The text task's data: a corpus of UTF-8 text, read as bytes, split by position, cut into windows.

The model reads bytes (256 ids, whatever the text's alphabet) and predicts each next byte; bits per character
are the bits it spends on a split's bytes over the characters those bytes encode (for ASCII text, bytes and
characters are the same; accuracy is next-byte accuracy).

* Default corpus: source files of the running Python's standard library, offline and the same for the same
  Python build (patch releases and distributions may differ): every `*.py` under `sysconfig`'s `stdlib` path in
  sorted order of their relative paths, without test folders, `site-packages` and generated files
  (`_sysconfigdata_*`), joined and cut at `STDLIB_BYTES`. `--data-dir FILE_OR_DIR`: a file, or every file of a
  folder (sorted, hidden ones left out), instead. The run records which (`Corpus`, in `RunStarted.corpus`) with
  its sha256, and re-execution refuses another corpus.
* Splits by position: the first bytes train, then validation, then test (`HELD_OUT_FRACTION` each, at most
  `HELD_OUT_BYTES`). Validation and test are read in order as consecutive windows of the host's context; an
  epoch of training is `windows` windows at positions drawn from the trainer's generator (the corpus is far
  larger than a short run reads).
"""

import hashlib
import math
import os
import sysconfig
from functools import lru_cache
from pathlib import Path

import attrs
import torch
import torch.nn.functional as F

from esper.errors import BadInput
from esper.leyline.events import Corpus

STDLIB_BYTES = 3 * 2**20
"""Size of the default corpus, cut from the standard library's sources."""
EXCLUDED_FOLDERS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
"""Folders of the standard library left out of the corpus: tests (much of it generated data) and third-party code."""
GENERATED_PREFIX = "_sysconfigdata_"
"""Files written when Python is built (paths of the build machine), left out."""
HELD_OUT_FRACTION = 0.05
HELD_OUT_BYTES = 64 * 2**10
"""Each of validation and test holds this share of the corpus, at most this many bytes."""
VOCAB = 256
"""Byte ids."""


@attrs.frozen(eq=False)
class TextData:
    """A corpus's byte ids by split, cut into windows of `context` (the trainer's `TaskData` interface)."""

    task: str
    splits: dict[str, torch.Tensor]
    """Split → its bytes, one long sequence of uint8 (a corpus takes its own size in memory, not eight times it); a
    batch's windows are widened to the int64 ids an embedding takes."""
    context: int
    windows: int
    """Training windows per epoch."""
    corpus: Corpus
    chars: dict[str, int] = attrs.field(factory=dict)
    """Split → how many characters the bytes its windows predict encode (bits per character divides by it)."""
    num_classes: int = VOCAB

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.context,)

    def to(self, device: torch.device | str) -> "TextData":
        return attrs.evolve(self, splits={s: t.to(device) for s, t in self.splits.items()})

    def batches(self, split: str, batch_size: int, generator: torch.Generator | None = None, **_):
        """(x, y) batches of windows: x the ids, y the ids one position on. `train`: `windows` windows at random
        positions (from `generator`); `val`, `test`: the split's consecutive windows, in order."""
        ids = self.splits[split]
        if split == "train":
            if generator is None:
                raise ValueError("training windows are drawn at random: pass a torch.Generator")
            starts = torch.randint(0, len(ids) - self.context, (self.windows,), generator=generator)
        else:
            starts = torch.arange(0, len(ids) - self.context, self.context)
        offsets = torch.arange(self.context + 1)
        for i in range(0, len(starts), batch_size):
            window = ids[(starts[i:i + batch_size, None] + offsets).to(ids.device)].long()
            yield window[:, :-1], window[:, 1:]

    def steps(self, batch_size: int) -> int:
        return math.ceil(self.windows / batch_size)

    def examples(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `n` consecutive training windows (what the sharpness probe measures the loss on)."""
        ids = self.splits["train"]
        n = min(n, (len(ids) - 1) // self.context)
        window = ids[: n * self.context + 1].long()
        return window[:-1].view(n, self.context), window[1:].view(n, self.context)

    # What is measured on a batch of logits (B, T, 256) and next ids (B, T); every window has `context` positions,
    # so per-window means averaged over windows are per-position means.
    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.flatten(0, 1), y.flatten())

    def loss_sum(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(output, y) * len(y)

    def correct(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (output.argmax(-1) == y).float().mean(1).sum()

    def bits_per_char(self, split: str, loss: float) -> float:
        """Bits per character of `split` from its mean loss (nats per byte)."""
        predicted = (len(self.splits[split]) - 1) // self.context * self.context
        return loss / math.log(2) * predicted / max(self.chars[split], 1)


def load_text(task: str, data_dir: str | os.PathLike[str] | None, context: int, windows: int) -> TextData:
    """The text task's data: the standard library's sources, or the text at `data_dir` (a file or a folder);
    `windows` training windows per epoch (0: as many as the training split holds)."""
    raw, corpus = _corpus(None if data_dir is None else str(Path(data_dir).expanduser().resolve()))
    held_out = min(int(len(raw) * HELD_OUT_FRACTION), HELD_OUT_BYTES)
    if held_out < 2 * (context + 1):
        needed = 2 * (context + 1) / HELD_OUT_FRACTION
        raise BadInput(f"{corpus.path} holds {len(raw):,} bytes of text: the text task needs at least {needed:,.0f} "
                       f"(validation and test each take {HELD_OUT_FRACTION:.0%} of it, windows of {context})")
    ids = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    cut = len(raw) - 2 * held_out
    splits = {"train": ids[:cut], "val": ids[cut:cut + held_out], "test": ids[cut + held_out:]}
    chars = {name: _chars(part, context) for name, part in splits.items()}
    return TextData(task, splits, context, windows or cut // context, corpus, chars)


def _chars(ids: torch.Tensor, context: int) -> int:
    """Characters among the bytes that the split's windows predict: every byte but UTF-8 continuation bytes."""
    predicted = ids[1:1 + (len(ids) - 1) // context * context]
    return int(((predicted & 0xC0) != 0x80).sum())


def _corpus(path: str | None) -> tuple[bytes, Corpus]:
    """The corpus's bytes and its record: the standard library's (cached), or the text at `path` (read each time:
    a user's file may change between runs of one process)."""
    if path is None:
        return _stdlib_corpus()
    root = Path(path)
    if root.is_dir():  # hidden files and folders (.git) and Python's compiled bytecode are never the user's text
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not any(
            part.startswith(".") or part == "__pycache__" for part in p.relative_to(root).parts))
    elif root.is_file():
        files, root = [root.name], root.parent
    else:
        raise BadInput(f"--data-dir {path}: no such file or folder (give a UTF-8 text file or a folder of them)")
    raw = b"".join(_text(root / f) for f in files)
    return raw, Corpus(source="data_dir", path=path, files=len(files), bytes=len(raw),
                       sha256=hashlib.sha256(raw).hexdigest())


@lru_cache(maxsize=1)
def _stdlib_corpus() -> tuple[bytes, Corpus]:
    """The default corpus (the environments of a PPO job share one read)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root)
    raw = b"".join(_read(root / f) for f in files)
    if len(raw) < STDLIB_BYTES:
        raise BadInput(f"the standard library at {root} holds {len(raw):,} bytes of sources, fewer than the "
                       f"{STDLIB_BYTES:,} of the text task's corpus: pass --data-dir FILE_OR_DIR")
    raw = raw[:STDLIB_BYTES]
    return raw, Corpus(source="stdlib", path=str(root), files=_files_within(root, files, STDLIB_BYTES),
                       bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())


def stdlib_files(root: Path) -> list[str]:
    """The standard library's source files the corpus is cut from, as sorted relative paths."""
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in EXCLUDED_FOLDERS]  # never walk into site-packages
        relative = Path(folder).relative_to(root)
        found += [(relative / n).as_posix() for n in names if n.endswith(".py") and not n.startswith(GENERATED_PREFIX)]
    return sorted(found)


def _files_within(root: Path, files: list[str], limit: int) -> int:
    """How many of `files`, in order, the first `limit` bytes of their concatenation touch."""
    total = 0
    for count, f in enumerate(files, 1):
        total += (root / f).stat().st_size
        if total >= limit:
            return count
    return len(files)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None


def _text(path: Path) -> bytes:
    """A file's bytes, if it is UTF-8 text (no NUL bytes: those are binary files, though UTF-8 allows them)."""
    raw = _read(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path} is not UTF-8 text (byte {exc.start:,} cannot be decoded): the text task reads "
                       "UTF-8 text only") from None
    if b"\x00" in raw:
        raise BadInput(f"{path} holds NUL bytes: it is a binary file, not text (the text task reads UTF-8 text only)")
    return raw
