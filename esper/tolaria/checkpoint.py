"""Checkpoints: a run's training state after an epoch, in a content-addressed file, so that `esper run --resume`
continues the run exactly as it would have gone on (DESIGN.md, Replay).

A checkpoint holds what the log cannot give back: the model's weights and buffers (a blending seed's progress
travels in its `state_dict`), every optimizer's state, every RNG state (torch's global CPU one, which draws a new
seed's weights; CUDA's on a GPU; the trainer's data-order generator; the controller's own, if it has one), fp16's
gradient scale, and,
to check it against the log, the stage of every seed. The lifecycle and the controller's observation are a fold
of the log up to the checkpoint's `CheckpointSaved`: resume folds them again (`Session.resumed`).

Writing costs the training loop only a copy of the state (`capture`, in the run's thread at the epoch's end);
`CheckpointWriter`, in the writer thread, serialises it, writes `<workspace>/checkpoints/<sha256>.pt` atomically
(temporary file, fsync, rename, fsync of the folder) and only then appends the epoch's batch with its
`CheckpointSaved` in it: a checkpoint the log names is on disk.
"""

import hashlib
import io
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any

import attrs
import torch

from esper.errors import EsperError, StoreFailed, first_line
from esper.leyline.events import CheckpointSaved, Event
from esper.leyline.garden import Garden
from esper.nissa.files import check_writable
from esper.store.failures import refusals
from esper.tolaria import crashpoints
from esper.tolaria.trainer import Trainer, load_optimizer_state

FORMAT = 1
"""What a checkpoint file holds; a file of another format is not used."""

FOLDER = "checkpoints"
"""The workspace's folder of checkpoint files."""


NAME = re.compile(r"[0-9a-f]{64}\.pt")
"""A checkpoint file's name: its bytes' sha256 (`path_of`)."""
PART = re.compile(r"\.[0-9a-f]{64}\.[0-9]+\.tmp")
"""A checkpoint file being written, by the process whose id it holds (`write`): what a kill mid-write leaves."""


def folder_of(workspace_root: Path) -> Path:
    return Path(workspace_root) / FOLDER


def path_of(folder: Path, sha256: str) -> Path:
    return folder / f"{sha256}.pt"


def check_folder(workspace_root: Path) -> None:
    """`BadInput` now, not at the first checkpoint, if the workspace's checkpoint folder cannot be made or written."""
    check_writable(folder_of(workspace_root) / "checkpoint", "the checkpoint folder")


@attrs.frozen
class Checkpoints:
    """A run's checkpointing: where the files go, every how many epochs (0: never), and the controller whose RNG
    state each one carries (None: a controller without randomness)."""

    folder: Path
    every: int
    controller: Any = None

    def due(self, epoch: int) -> bool:
        """Epoch 0 (the run as it starts, its scratch architecture built) counts: a run killed during its
        first epoch resumes too."""
        return self.every > 0 and epoch % self.every == 0


@attrs.frozen(eq=False)
class Captured:
    """A run's state after an epoch, copied off the live objects: training goes on while the writer saves it."""

    epoch: int
    state: dict[str, Any]
    every: int | None = None
    """The run's checkpoint interval, which its `CheckpointSaved` records (`Checkpoints.every`)."""


class UnusableCheckpoint(EsperError):
    """A checkpoint that cannot be resumed from; the message says why (missing, damaged ...)."""


def capture(epoch: int, trainer: Trainer, controller: Any, garden: Garden, every: int | None = None) -> Captured:
    rng_state = getattr(controller, "rng_state", None)
    state = {
        "format": FORMAT,
        "epoch": epoch,
        "model": trainer.model.state_dict(),
        "host_optimizer": trainer.host_optimizer.state_dict(),
        "seed_optimizers": {sid: opt.state_dict() for sid, opt in trainer.seed_optimizers.items()},
        "generator": trainer.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(trainer.device) if trainer.device.type == "cuda" else None,
        "controller_rng": rng_state() if rng_state is not None else None,
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "stages": _stages(garden),
    }
    return Captured(epoch, _packed(state), every)


_TENSOR = "__tensor__"
"""A packed state holds `(_TENSOR, i)` where its i-th tensor was."""


def _packed(state: dict[str, Any]) -> dict[str, Any]:
    """The state with its tensors copied into one flat CPU tensor per dtype. The copy is what lets training go on
    (a state dict shares the live tensors, which the next step changes in place), and a few large tensors
    serialise about four times faster than the hundred small ones of a model and its optimizers."""
    tensors: list[torch.Tensor] = []
    skeleton = _strip(state, tensors)
    dtypes = [str(t.dtype) for t in tensors]
    flat = {dtype: torch.cat([t.detach().to("cpu").reshape(-1) for t, d in zip(tensors, dtypes) if d == dtype])
            for dtype in dict.fromkeys(dtypes)}
    return {"skeleton": skeleton, "dtypes": dtypes, "shapes": [list(t.shape) for t in tensors], "flat": flat}


def _strip(value: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return (_TENSOR, len(tensors) - 1)
    if isinstance(value, dict):
        return {k: _strip(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_strip(v, tensors) for v in value)
    return value


def _unpacked(packed: dict[str, Any]) -> dict[str, Any]:
    tensors: dict[int, torch.Tensor] = {}
    for dtype, flat in packed["flat"].items():
        index = [i for i, d in enumerate(packed["dtypes"]) if d == dtype]
        shapes = [packed["shapes"][i] for i in index]
        for i, shape, piece in zip(index, shapes, flat.split([math.prod(shape) for shape in shapes])):
            tensors[i] = piece.view(shape).clone()
    return _filled(packed["skeleton"], tensors)


def _filled(value: Any, tensors: dict[int, torch.Tensor]) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == _TENSOR:
        return tensors[value[1]]
    if isinstance(value, dict):
        return {k: _filled(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_filled(v, tensors) for v in value)
    return value


def _stages(garden: Garden) -> dict[str, str]:
    return {sid: seed.stage.value for sid, seed in garden.seeds.items()}


def write(folder: Path, captured: Captured) -> CheckpointSaved:
    """Serialise, write atomically under the bytes' sha256 and return the event that names the file. Writing a
    file that exists already rewrites the same bytes (and mends a damaged copy)."""
    buffer = io.BytesIO()
    torch.save(captured.state, buffer)
    data = buffer.getvalue()
    sha256 = hashlib.sha256(data).hexdigest()
    path = path_of(folder, sha256)
    if path.is_dir():  # not Esper's (`esper gc` leaves it): rename would fail with IsADirectoryError
        raise StoreFailed(f"{path} is a folder, where a checkpoint file goes", "move it away")
    with refusals(path):  # a full disk or a read-only workspace is the run's store failing, said as such
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{sha256}.{os.getpid()}.tmp"
        try:
            _write_synced(tmp, data, captured.epoch)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _sync_folder(folder)  # the rename itself is durable
    crashpoints.reach("checkpoint-written", captured.epoch)
    return CheckpointSaved(epoch=captured.epoch, sha256=sha256, size=len(data), every=captured.every)


def _write_synced(path: Path, data: bytes, epoch: int) -> None:
    with open(path, "wb") as f:
        f.write(data)
        crashpoints.reach("checkpoint-write", epoch)
        f.flush()
        os.fsync(f.fileno())


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@attrs.define
class CheckpointWriter:
    """A sink in front of another, in the writer thread: writes the checkpoint a batch carries (a `Captured`)
    and appends the batch with its `CheckpointSaved` in that place."""

    sink: Any
    folder: Path

    def append(self, batch: list[Event | Captured]) -> None:
        try:
            events = [write(self.folder, item) if isinstance(item, Captured) else item for item in batch]
        except StoreFailed as exc:
            held = getattr(self.sink, "held", None)
            raise exc.adding(held=held() if held else "") from exc
        self.sink.append(events)
        if events:
            crashpoints.reach("appended", events[-1].epoch or 0)


def read(folder: Path, saved: CheckpointSaved) -> dict[str, Any]:
    """The state a `CheckpointSaved` names, if its file is there, unchanged and of this format."""
    try:
        data = path_of(folder, saved.sha256).read_bytes()
    except FileNotFoundError:
        raise UnusableCheckpoint("missing") from None
    except OSError as exc:
        raise UnusableCheckpoint(f"unreadable ({exc.strerror or exc})") from None
    if hashlib.sha256(data).hexdigest() != saved.sha256:
        raise UnusableCheckpoint("damaged (its bytes no longer match their hash)")
    try:
        packed = torch.load(io.BytesIO(data), weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise UnusableCheckpoint(f"unreadable ({first_line(exc)})") from None
    skeleton = packed.get("skeleton") if isinstance(packed, dict) else None
    if not isinstance(skeleton, dict) or skeleton.get("format") != FORMAT:  # before its tensors are laid out as ours
        raise UnusableCheckpoint(f"not a checkpoint of format {FORMAT}")
    try:
        state = _unpacked(packed)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise UnusableCheckpoint(f"unreadable ({first_line(exc)})") from None
    if state.get("epoch") != saved.epoch:
        raise UnusableCheckpoint(f"holds epoch {state.get('epoch')}, not {saved.epoch}")
    return state


def restore(state: dict[str, Any], trainer: Trainer, controller: Any, garden: Garden) -> None:
    """Set a trainer (whose model the log's events up to the checkpoint have grown: the same seeds, optimizers
    and parameter order) and the controller to the checkpoint's state."""
    if state["stages"] != _stages(garden):
        raise UnusableCheckpoint("its seeds are not where the log has them at that epoch")
    if set(state["seed_optimizers"]) != set(trainer.seed_optimizers):
        raise UnusableCheckpoint("its seed optimizers are not those of the log's training seeds")
    try:
        trainer.model.load_state_dict(state["model"])
        load_optimizer_state(trainer.host_optimizer, state["host_optimizer"])
        for sid, optimizer in trainer.seed_optimizers.items():
            load_optimizer_state(optimizer, state["seed_optimizers"][sid])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise UnusableCheckpoint(f"does not fit the model the log grew ({first_line(exc)})") from None
    trainer.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], trainer.device)
    if state["controller_rng"] is not None:
        controller.set_rng_state(state["controller_rng"])
    if state.get("scaler") is not None and trainer.scaler is not None:  # files written before fp16 have none
        trainer.scaler.load_state_dict(state["scaler"])
