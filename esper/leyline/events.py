"""Everything that happens in a run, as immutable facts.

Each event is a frozen msgspec Struct with a pinned string tag (the `type` column of the log) and a
`schema_version`. The store derives its `epoch`, `seed_id` and `slot` columns from the attributes of
the same names, so an event that concerns a seed carries both.
"""

from typing import Any, Union

import msgspec

from esper.leyline.commands import Command
from esper.leyline.config import RunConfig, TaskPreset
from esper.leyline.upcast import Mapper, upcaster


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    schema_version: int = 1
    epoch: int | None = None


class Corpus(msgspec.Struct, frozen=True, kw_only=True):
    """The text a text-task run trained on (`esper.tolaria.text`): re-execution refuses another."""

    source: str
    """`stdlib` (the running Python's standard-library sources) or `data_dir` (the user's text)."""
    path: str
    """The standard library's folder, or the file or folder given."""
    files: int
    """How many files the corpus was read from."""
    bytes: int
    sha256: str
    """Of the corpus's bytes, as the run read them."""


class RunStarted(_Event, tag="RunStarted", kw_only=True):
    schema_version: int = 7
    config: RunConfig
    preset: TaskPreset
    """The task preset the run trained with, whole: re-execution trains with this one, not with today's."""
    versions: dict[str, str] = {}
    """What computed the run: `esper`, `torch`, torch's CPU instruction set (`cpu`, e.g. AVX2), Esper's CPU kernel
    set (`cpu_kernels`, e.g. portable: `esper/_kernels.py`), the CPU (`cpu_model`) and `numpy`. Informational:
    `--verify` reports a difference, and refuses up front to re-execute a CPU run in another kernel set."""
    host_params: int = 0
    slots: list[str] = []
    blueprints: list[str] = []
    seed_sizes: dict[str, dict[str, int]] = {}
    """Slot → blueprint → parameters a seed would add: what the lifecycle checks `max_params` against."""
    user_code: bool = False
    """The run trained a model and data from user code (`esper.fit`; `preset.host` names the model's class), which
    the log does not hold: it replays, but cannot be re-executed (`--verify`). False in logs written before it."""
    ranks: int = 1
    """Processes that trained the run data-parallel (`torchrun`), each on a shard of every batch; 1: one process.
    Re-execution and `--resume` run in one process, shard by shard as the ranks trained (`esper.tolaria.ranks`)."""
    threads: int = 0
    """The CPU threads torch computed with (each rank's, under `torchrun`); 0: not on CPU, or a log written before it.
    Re-execution and `--resume` on CPU use as many: a sum split over other threads rounds otherwise."""
    channels_last: bool = False
    """Whether the model's 2-D convolution weights were stored channels-last (CUDA): a layout, not a setting."""
    corpus: Corpus | None = None
    """The text of a text-task run (None for other tasks)."""


@upcaster("RunStarted", from_version=1)
def upcast_run_started_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v2 records the learning-rate anneal; every v1 run trained at constant rates."""
    data["config"] = {**data["config"], "anneal_epochs": 0}
    return data


@upcaster("RunStarted", from_version=2)
def upcast_run_started_v2_v3(data: dict[str, Any]) -> dict[str, Any]:
    """v3 records the task preset whole. A v2 run trained with its task's preset as it was before v3, a frozen
    copy of which follows (never today's presets: a changed preset must not change what an old log means)."""
    data["preset"] = dict(PRESETS_BEFORE_V3[data["config"]["task"]])
    data["versions"] = {}
    return data


@upcaster("RunStarted", from_version=3)
def upcast_run_started_v3_v4(data: dict[str, Any]) -> dict[str, Any]:
    """v4 records the precision; every v3 run computed in float32 (None would now mean bf16 on CUDA)."""
    data["config"] = {**data["config"], "precision": "fp32"}
    return data


@upcaster("RunStarted", from_version=4)
def upcast_run_started_v4_v5(data: dict[str, Any]) -> dict[str, Any]:
    """v5 records whether fossils keep their optimizer state; every v4 run started them afresh."""
    data["preset"] = {**data["preset"], "fossils_keep_state": False}
    return data


@upcaster("RunStarted", from_version=5)
def upcast_run_started_v5_v6(data: dict[str, Any]) -> dict[str, Any]:
    """v6 records how many epochs in a row a loss must stay over the divergence bound; a v5 run failed at the first."""
    data["preset"] = {**data["preset"], "divergence_epochs": 1}
    return data


@upcaster("RunStarted", from_version=6)
def upcast_run_started_v6_v7(data: dict[str, Any]) -> dict[str, Any]:
    """v7 measures validation again at the run's end; a v6 run reported its last epoch's."""
    data["preset"] = {**data["preset"], "validates_at_end": False}
    return data


PRESETS_BEFORE_V3: dict[str, dict[str, Any]] = {
    "mnist1d": {
        "name": "mnist1d", "host": "cnn1d", "batch_size": 128, "optimizer": "adam", "lr": 3e-3,
        "weight_decay": 0.0, "seed_lr": 3e-3, "epochs": 25, "momentum": 0.9, "cpu_threads": 1, "augment": False,
        "anneal_epochs": 5, "blueprints": ["conv_heavy", "conv_light", "depthwise", "attention", "norm"],
    },
    "cifar10": {
        "name": "cifar10", "host": "resnet", "batch_size": 128, "optimizer": "sgd", "lr": 0.05,
        "weight_decay": 5e-4, "seed_lr": 0.01, "epochs": 30, "momentum": 0.9, "cpu_threads": 0, "augment": True,
        "anneal_epochs": 0, "blueprints": ["conv_heavy", "conv_light", "depthwise", "attention", "norm"],
    },
}
"""The task presets every RunStarted before v3 was written with (frozen: never edit)."""


class SeedTelemetry(msgspec.Struct, frozen=True, kw_only=True):
    """What Tolaria measured of one live seed during an epoch."""

    seed_id: str
    alpha: float = 0.0
    gradient_health: float = 0.0
    """Scaled 0..1: finite, neither vanishing nor exploding gradient norms."""
    seed_loss: float | None = None
    """The seed's own training loss on the host's residual (TRAINING)."""
    contribution: float | None = None
    """Validation accuracy with the seed minus with its α forced to 0 (BLENDING)."""


class EpochEnded(_Event, tag="EpochEnded"):
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    params: int
    seeds: list[SeedTelemetry] = []
    diagnostics: dict[str, Any] = {}
    """Extra measurements of the telemetry profile (per-layer gradient norms, sharpness ...)."""
    val_bits_per_char: float | None = None
    """Text task: the validation loss in bits per character (None for other tasks)."""


class CommandIssued(_Event, tag="CommandIssued"):
    command: Command
    controller: str
    log_prob: float | None = None
    value: float | None = None
    mask: dict[str, list[bool]] | None = None
    """Legal-action masks per policy head, when a learned policy decided."""


class CommandRejected(_Event, tag="CommandRejected"):
    command: Command
    reason: str
    """The refusal in words, for people."""
    seed_id: str | None = None
    slot: str | None = None
    evidence: dict[str, Any] = {}
    """The refusal as data: `rule` (which rule refused: `unknown_slot`, `max_params`, `training_gate` ...) and
    the numbers it compared. Readers use this, never the wording of `reason`. Empty in logs written before it existed."""


class SeedGerminated(_Event, tag="SeedGerminated"):
    seed_id: str
    slot: str
    blueprint: str
    params: int


class SeedTransitioned(_Event, tag="SeedTransitioned"):
    seed_id: str
    slot: str
    from_stage: str
    to_stage: str
    trigger: str
    evidence: dict[str, Any] = {}
    """The numbers the gate compared (and the thresholds), or why the transition was forced."""


class CheckpointSaved(_Event, tag="CheckpointSaved"):
    """A state is on disk, written before this event was appended. In a training run: its state after `epoch`
    (model, optimizers, every RNG) in the workspace's content-addressed `checkpoints/<sha256>.pt`
    (`esper.tolaria.checkpoint`), what `esper run --resume` continues from. In a learner's stream (PPO, IQL): the
    policy file at `path` after `update`, with what `esper ppo --resume` needs, and the runs it learned from."""

    sha256: str
    """Of the file's bytes: it names the file and proves it unchanged."""
    size: int
    """The file's size in bytes."""
    update: int | None = None
    """A learner's update (None in a training run)."""
    path: str | None = None
    """A learner's policy file, as written (None in a training run: the file is `checkpoints/<sha256>.pt`)."""
    sources: list[str] = []
    """The runs a learner learned from, by id (IQL's dataset; PPO's episodes are in its own store)."""
    every: int | None = None
    """A training run's checkpoint interval (`--checkpoint-every`), which `--resume` keeps unless told otherwise;
    None in a learner's stream and in runs logged before it was recorded."""


class RunResumed(_Event, tag="RunResumed"):
    """`esper run --resume` continues the run here, after the last epoch the log holds (`epoch`), from the checkpoint
    of `checkpoint_epoch`; epochs between the two were trained again and matched the log, so they are not repeated."""

    epoch: int
    sha256: str
    """The checkpoint's (`CheckpointSaved.sha256`)."""
    checkpoint_epoch: int


class PolicyUpdated(_Event, tag="PolicyUpdated", kw_only=True):
    """One learner update (PPO or IQL) and its health numbers."""

    schema_version: int = 2
    update: int
    stats: dict[str, float | None] = {}
    """None where a number is undefined (JSON has no NaN), e.g. the explained variance of constant returns."""


@upcaster("PolicyUpdated", from_version=1)
def upcast_policy_updated_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v2 has v1's shape: the version marks a learner's stream written with hashes (`esper.store.chain`)."""
    return data


class RunFinished(_Event, tag="RunFinished"):
    """The run's end: every number of the model as the run leaves it, after the last epoch's commands (validation:
    since RunStarted v7, `TaskPreset.validates_at_end`; before, the last epoch's)."""

    val_accuracy: float
    test_accuracy: float | None
    """None for a user's run (`esper.fit`) given no test batches."""
    params: int
    seeds: dict[str, int] = {}
    """How many seeds ended in each stage."""
    val_bits_per_char: float | None = None
    test_bits_per_char: float | None = None
    """Text task: validation and test loss in bits per character (None for other tasks)."""


STOPPED = ("interrupted", "terminated")
"""The `RunFailed.error` of a run stopped from outside (Ctrl-C, SIGTERM), which `esper run --resume` continues."""


class RunFailed(_Event, tag="RunFailed"):
    error: str

    @property
    def interrupted(self) -> bool:
        """Stopped from outside (Ctrl-C: `interrupted`, SIGTERM: `terminated`), not by a failure of the run itself:
        the run may be resumed (`RunResumed`)."""
        return self.error in STOPPED


Event = Union[
    RunStarted,
    EpochEnded,
    CommandIssued,
    CommandRejected,
    SeedGerminated,
    SeedTransitioned,
    CheckpointSaved,
    RunResumed,
    PolicyUpdated,
    RunFinished,
    RunFailed,
]
EVENT_TYPES: tuple[type, ...] = Event.__args__

_encoder = msgspec.json.Encoder()
_mapper = Mapper(Event)


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(payload: bytes | str) -> Event:
    """A stored payload as its event; one older than its class is upcast first (`esper.leyline.upcast`)."""
    return _mapper.decode(payload)


def type_name(event: Event) -> str:
    return type(event).__struct_config__.tag
