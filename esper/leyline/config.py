"""One frozen config per run, stored whole in `RunStarted`, so a run can be reproduced from its log alone."""

import math
from collections.abc import Iterable
from typing import Annotated, Any, TypeVar, get_args, get_origin

import msgspec

from esper.errors import BadInput

Knobs = TypeVar("Knobs", bound=msgspec.Struct)


class LifecycleConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Gate thresholds, timings and mechanics of the seed lifecycle. Recorded in `RunStarted`; replay re-checks gates
    with them."""

    min_training_epochs: int = 1
    """TRAINING → BLENDING needs at least this many epochs in TRAINING."""
    gradient_health_threshold: float = 0.3
    """TRAINING → BLENDING needs the seed's gradient health (0..1) at least this high."""
    blend_epochs: int = 2
    """α rises from 0 to 1 over this many epochs of BLENDING."""
    stability_window: int = 1
    """BLENDING → FOSSILIZED needs α = 1 for at least this many epochs."""
    regression_tolerance: float = 0.01
    """BLENDING → FOSSILIZED needs validation accuracy no lower than at blend start minus this."""
    auto_cull_contribution: float = -0.02
    """A blending seed whose contribution falls below this (accuracy fraction) is culled automatically."""
    auto_cull_patience: int = 2
    """... after this many epochs of α = 1 with the contribution still below it."""
    embargo_epochs: int = 2
    """A culled seed's slot refuses germination for this many epochs (EMBARGOED → DORMANT)."""
    max_params: int = 0
    """Germination is refused when the host, its fossils and its live seeds plus the new seed would exceed
    this many parameters (0: no cap). A hard budget: the final model can never be larger."""
    isolated_fraction: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0
    """A training seed's isolated pass runs on this fraction of each batch, its first examples (at least one).
    The pass reruns every layer after the seed's slot, so on a deep host it costs almost a training step: a
    fraction saves that share of it, for a noisier gradient while the seed trains. 1 (every run logged before
    this field): the whole batch."""


class HeuristicConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The rule-based gardener's knobs (`esper run --heuristic KEY=VALUE`). Recorded in `RunStarted`, so a
    run's log says which rule grew it."""

    warmup_epochs: int = 2
    """No germination before the host has trained this many epochs (it must stabilise first)."""
    plateau_epochs: int = 1
    """Germinate once validation accuracy has not beaten its best for this many epochs ..."""
    min_gain: float = 0.05
    """... or has gained less than this over the last two epochs (before three epochs are measured no gain is
    known, so the first germination comes as soon as `warmup_epochs` have passed)."""
    max_live_seeds: int = 2
    """At most this many seeds germinated, training or blending at once."""
    finish_epochs: int = 7
    """No germination when fewer epochs than this remain: the seed could not fossilize in time."""
    cull_contribution: float = -0.01
    """Cull a blending seed (α ≥ 0.5) whose contribution falls below this."""
    max_training_epochs: int = 6
    """Cull a training seed whose gate has not opened after this many epochs."""
    cull_penalty_epochs: int = 8
    """A blueprint culled within this many epochs is skipped when choosing what to germinate."""


def _overflows(text: str) -> bool:
    """Whether `text` is a number too large for a float (Python reads it as infinity, msgspec refuses it)."""
    try:
        return math.isinf(float(text))
    except ValueError:
        return False


SET_BY_OPTION = ("max_params",)
"""Fields of a knobs struct that an option of their own sets (`--max-params`), not `KEY=VALUE`: not listed as knobs."""


def from_knobs(struct: type[Knobs], items: Iterable[str], flag: str) -> Knobs:
    """`struct` from "KEY=VALUE" strings (`esper run --heuristic min_gain=1.0`); `BadInput` names a bad one."""
    return from_table(struct, parse_knobs(struct, items, flag), flag)


def parse_knobs(struct: type[Knobs], items: Iterable[str], flag: str) -> dict[str, Any]:
    """The fields of `struct` that "KEY=VALUE" strings name, each value of its field's type (no other check)."""
    fields = {f.name: _unconstrained(f.type) for f in msgspec.structs.fields(struct)}
    listed = [name for name in fields if name not in SET_BY_OPTION]
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise BadInput(f"{flag} {item!r}: expected KEY=VALUE with KEY one of {', '.join(listed)}")
        if key in values:  # the last would win without a word
            raise BadInput(f"{flag} {key} is given twice: give it once")
        try:
            values[key] = msgspec.convert(text.strip(), fields[key], strict=False)
        except msgspec.ValidationError:
            if fields[key] is float and _overflows(text):  # 1e400: a number, but past what a float holds
                raise BadInput(f"{flag} {item!r}: {key} must be a finite number") from None
            raise BadInput(f"{flag} {item!r}: {key} takes {fields[key].__name__} values") from None
    return values


def _unconstrained(kind: Any) -> Any:
    """A field's type without its bounds (`Annotated[float, Meta(le=1)]` → float): a value is read as its type
    here, and `from_table` checks the bounds, naming them."""
    return get_args(kind)[0] if get_origin(kind) is Annotated else kind


def number_problem(name: str, value: Any) -> str | None:
    """Why `value` cannot be the setting `name` (None if it can): a JSON log holds no NaN or infinity (they would
    come back as null), and an integer must fit in 64 bits (torch seeds with it, the store holds it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return f"{name} {value} does not fit in 64 bits"
    return None


SNAPSHOT_EVERY = 10
"""Epochs between two snapshots of a run's state (`StoreSink.snapshot_every`, `esper run --snapshot-every`)."""


def every_problem(name: str, value: int) -> str | None:
    """Why `value` cannot be `name`, a number of epochs between two snapshots or checkpoints (None if it can)."""
    return f"{name} must be 0 (none) or a number of epochs, got {value}" if value < 0 else None


def commands_problem(value: int) -> str | None:
    """Why `value` cannot be `RunConfig.commands_per_epoch` (None if it can). `esper run`, `esper.fit` and
    `benchmarks/results.py` all check with it."""
    return f"commands_per_epoch must be at least 1, got {value}" if value < 1 else None


VERIFY_TOLERANCE = 1e-4
"""Largest deviation `--verify` accepts in a logged number: relative to its magnitude, absolute below 1
(decisions are always exact)."""

MAX_RATE = 1e3
"""The largest learning rate a run takes. Past it no training learns anything, and near float32's limit the
optimizer's step overflows (a crash, not the divergence a merely too-large rate is reported as)."""


def rate_problem(name: str, value: float) -> str | None:
    """Why `value` cannot be the learning rate `name` (None if it can)."""
    if not (math.isfinite(value) and 0 < value <= MAX_RATE):
        return f"{name} must be a positive number up to {MAX_RATE:g}, got {value}"
    return None


def decay_problem(value: float) -> str | None:
    """Why `value` cannot be the optimizers' L2 weight decay (None if it can); bounded as rates are."""
    if not (math.isfinite(value) and 0 <= value <= MAX_RATE):
        return f"weight_decay must be 0 or a positive number up to {MAX_RATE:g}, got {value}"
    return None


def recipe_problem(lr: float | None = None, seed_lr: float | None = None, weight_decay: float | None = None,
                   batch_size: int | None = None) -> str | None:
    """Why no run can train at this recipe (None if one can), the first bad part named; a part that is None is left
    to the preset and not checked. `esper run`, `esper.fit` and the benchmarks' grids all check with it."""
    for name, rate in (("lr", lr), ("seed_lr", seed_lr)):
        if rate is not None and (problem := rate_problem(name, rate)):
            return problem
    if weight_decay is not None and (problem := decay_problem(weight_decay)):
        return problem
    if batch_size is not None and batch_size < 1:
        return f"batch_size must be at least 1, got {batch_size}"
    return None


def from_table(struct: type[Knobs], values: dict[str, Any], where: str) -> Knobs:
    """`struct` from a dict of its fields (a `--config` file's table); `BadInput` names a bad one. Its counts
    (every int knob: epochs, seeds, parameters) cannot be negative, and a JSON log holds no NaN or infinity."""
    try:
        config = msgspec.convert(values, struct, strict=False)
    except msgspec.ValidationError as exc:
        if "- at `$." in str(exc):  # a knob's value, which the message names: the list would be noise
            raise BadInput(f"{where}: {exc}") from None
        names = ", ".join(f.name for f in msgspec.structs.fields(struct))
        raise BadInput(f"{where}: {exc} (knobs: {names})") from None
    for key, value in msgspec.structs.asdict(config).items():
        if problem := number_problem(key, value):
            raise BadInput(f"{where}: {problem}")
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise BadInput(f"{where}: {key} cannot be negative, got {value}")
    return config


class RunConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything that determines a run. With the recorded commands it re-executes the run exactly (CPU)."""

    task: str = "mnist1d"
    controller: str = "heuristic"
    seed: int = 0
    epochs: int = 0
    """0 means the task preset's epoch budget."""
    device: str = "cpu"
    policy: str | None = None
    """Path of a trained Simic policy (controller `policy`)."""
    policy_sha256: str | None = None
    """The sha256 of that policy file's bytes when the run started (controllers `policy` and `sampled`; filled in by
    `resolve_config`): re-executing or resuming the run with another file is refused."""
    like: str | None = None
    """Run id whose final architecture the `scratch` controller builds up front."""
    data_dir: str | None = None
    data_seed: int = 42
    """Seed of the generated dataset (mnist1d): fixed by default so runs of any seed see the same data."""
    telemetry: str = "standard"
    blend_schedule: str = "linear"
    """How α rises during BLENDING: `linear` or `sigmoid`."""
    architecture: list[tuple[str, str]] = []
    """(slot, blueprint) of seeds built into the host before training (the `scratch` baseline)."""
    lifecycle: LifecycleConfig = LifecycleConfig()
    heuristic: HeuristicConfig = HeuristicConfig()
    """The knobs of controller `heuristic` (the other controllers ignore them)."""
    commands_per_epoch: int = 1
    """At most this many commands after each epoch: after a command the lifecycle accepts, other than `Wait`, the
    controller decides again on the observation it left (so the heuristic can germinate into every free slot, or
    advance every seed whose gate is open, at once). 1, one decision an epoch: every run logged before this field."""
    anneal_epochs: int | None = None
    """The last N epochs scale every learning rate (host and seeds) down a half cosine towards 0; None
    means the task preset's. Logs written before this field existed ran at constant rates: they read as 0."""
    precision: str | None = None
    """The forward passes' arithmetic: `bf16` or `fp16` autocast (fp16 with a gradient scaler) or `fp32`; None means
    the device's default (bf16 on CUDA, fp32 on CPU). Logs written before this field existed ran in fp32."""


BLUEPRINTS: tuple[str, ...] = ("conv_heavy", "conv_light", "depthwise", "attention", "norm")
"""Every convolutional seed blueprint Kasmina offers, in a stable order: the order the heuristic rotates through,
the highest-capacity seed first (growth pays most when the big seed arrives early)."""
SEQUENCE_BLUEPRINTS: tuple[str, ...] = ("mlp", "attention", "lowrank", "norm")
"""The blueprints of (B, T, D) activations, in the same kind of order."""


class TaskPreset(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How one task trains by default."""

    name: str
    """The task's name, as given to `esper run --task` (or to `esper.fit`)."""
    host: str
    """Name of the Kasmina host model: `cnn1d` for 1-D signals, `resnet` for images; for a run of `esper.fit`, the
    class of the user's model (`module.Class`)."""
    batch_size: int
    """Examples per training batch (evaluation may use larger batches); 0 for a run of `esper.fit`, whose batches
    are the user's."""
    optimizer: str
    """Host optimizer: `adam` or `sgd` (with `momentum`, Nesterov)."""
    lr: float
    """Host learning rate."""
    weight_decay: float
    """L2 weight decay of the host optimizer (also applied to the seeds' optimizer)."""
    seed_lr: float
    """Learning rate of the seeds' own optimizer (same kind as the host's) while they train in isolation."""
    epochs: int
    """Default epoch budget, used when a run asks for 0 epochs."""
    host_options: dict[str, int | float | bool] = {}
    """Keyword arguments of the host's constructor (`esper run --host-option channels=24`); none: its defaults."""
    blueprints: tuple[str, ...] = BLUEPRINTS
    """Blueprints a controller may germinate on this task."""
    momentum: float = 0.9
    """SGD momentum; unused by `adam`."""
    cpu_threads: int = 0
    """Torch threads on CPU (0: torch's default). Tiny models run fastest on one thread: more threads
    only add synchronisation, and on a busy machine they make each step several times slower."""
    augment: bool = False
    """Whether the trainer applies `esper.tolaria.data.augment` (random crop + flip) to training batches."""
    epoch_windows: int = 0
    """Text task: training windows (of the host's `context`) per epoch, at random positions of the corpus; unused
    by the other tasks, whose epoch is one pass over their training split."""
    standardise: str = "float32"
    """How mnist1d's signals are standardised (unused by the other tasks): "exact", with the training split's mean
    and deviation from correctly rounded sums, the same bits with any numpy on any machine; or "float32", with
    numpy's float32 reductions, whose last bits change with numpy's version: how runs logged before "exact" were
    made, and how they re-execute (their logged presets have no such field)."""
    fossils_keep_state: bool = True
    """Whether a fossilized seed's parameters keep their seed optimizer's state (Adam's moments, SGD's momentum)
    when they join the host optimizer. False: they start afresh there, as every run logged before this field
    trained (RunStarted v4 and older read as False)."""
    divergence_epochs: int = 3
    """Epochs in a row a finite training loss must stay over 10 times the median of the epochs before it for the run
    to fail as diverged (`esper.tolaria.trainer.divergence`; a loss that is not finite fails it at once). One such
    epoch alone is a spike the run may recover from. Runs logged before this field (RunStarted v5
    and older) failed at the first such epoch, and re-execute so (1)."""
    validates_at_end: bool = True
    """Whether `RunFinished`'s validation accuracy and loss are measured on the model as the run ends, after the
    controller's commands of the last epoch, as its test accuracy and size are. Runs logged before this field
    (RunStarted v6 and older) reported the last epoch's validation, measured before those commands, and
    re-execute so: a cull or a fossilization then left their end describing two models."""
    anneal_epochs: int = 0
    """Default of `RunConfig.anneal_epochs`: the run's last N epochs lower every learning rate towards 0
    (0: constant). Without it the final accuracy is whatever the last epoch's steps left: on mnist1d it
    moved 3.4 points on average between the last two epochs."""
