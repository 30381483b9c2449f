"""`fit`: train a grown model on the user's own batches and loss, logged exactly as `esper run` logs a task.

The run is an ordinary run in the workspace: `RunStarted` (its config, and a preset that holds the training
settings and names the model's class), every epoch, command, germination and transition, `RunFinished`; so
`esper replay`, `esper query`, `esper report` and IQL read it like any other. `RunStarted.user_code` says the
model and data came from user code, which the log does not hold: `esper replay --verify` cannot re-execute it.
"""

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs
import torch.nn.functional as F

from esper.errors import BadInput
from esper.kasmina import BLUEPRINTS as FAMILIES
from esper.kasmina import GrowableModel
from esper.leyline.config import (BLUEPRINTS, SEQUENCE_BLUEPRINTS, HeuristicConfig, LifecycleConfig, RunConfig, TaskPreset,
                                  from_table)
from esper.nissa.files import check_writable
from esper.store import Recorder, Workspace
from esper.tamiyo.controllers import make_controller
from esper.tolaria.loop import Progress, StoreSink, execute, resolve_config
from esper.tolaria.tasks import TASKS
from esper.tolaria.userdata import Loss, Score, UserData, check_targets

Batches = Iterable | Callable[[], Iterable]


@attrs.frozen
class FitResult:
    run_id: str
    """The run's id in the workspace: `esper replay RUN_ID`, `esper report RUN_ID`."""
    val_accuracy: float
    test_accuracy: float
    """The score on `test` (on `val` when no test batches were given), 0..1."""
    params: int
    seeds: dict[str, int]
    """How many seeds ended in each stage."""


def fit(
    model: GrowableModel, train: Batches, val: Batches, *, test: Batches | None = None,
    loss: Loss = F.cross_entropy, score: Score | None = None, epochs: int = 10, controller: str = "heuristic",
    heuristic: HeuristicConfig | Mapping = HeuristicConfig(), lifecycle: LifecycleConfig = LifecycleConfig(),
    blueprints: Sequence[str] | None = None, optimizer: str = "adam", lr: float = 1e-3, seed_lr: float | None = None, weight_decay: float = 0.0,
    momentum: float = 0.9, seed: int = 0, task: str = "user", device: str | None = None,
    policy: str | None = None, workspace: str | None = None, progress: Progress | None = None,
) -> FitResult:
    """Grow `model` (from `esper.grow`) for `epochs` on `train`, deciding with `controller` after each epoch.

    `train`, `val`, `test`: (x, y) batches, each a collection or a function returning them; `loss(model(x), y)`
    is a batch's mean loss; `score(model(x), y)` the fraction of a batch the model gets right, which the gates
    and controllers read as accuracy (default: top-1 accuracy against class indices). `heuristic`: the knobs
    of the heuristic controller (a `HeuristicConfig` or a dict of them). `blueprints`: what controllers may
    germinate (default: every blueprint of the slots' families, the largest first). `optimizer` ("adam" or "sgd"), `lr`,
    `weight_decay`, `momentum` train the host; `seed_lr` (default `lr`) the seeds. `task` names the run's
    task in the log; `workspace`: the folder of the event log (default `$ESPER_WORKSPACE`, else `./runs`).
    The model is trained in place. Bad input raises `BadInput` before anything is written.
    """
    if not isinstance(model, GrowableModel):
        raise BadInput("esper.fit trains a grown model: esper.grow(model, slots=[...], example=x) first")
    if controller == "scratch":  # it builds another run's final architecture, which only `esper run --like` names
        raise BadInput("controller 'scratch' rebuilds a built-in run (esper run --like); use heuristic, static, random "
                       "or policy")
    knobs = _knobs(heuristic)
    preset = _preset(model, task, epochs, blueprints, optimizer, lr, seed_lr, weight_decay, momentum)
    data = UserData(train, val, val if test is None else test, loss, score)
    first = next(iter(data.batches("val")), None)
    if first is None:
        raise BadInput("val holds no batches: the gates and controllers need a validation score")
    check_targets(first[1], score)
    device = device or str(next(model.parameters()).device)
    config = resolve_config(RunConfig(task=task, controller=controller, seed=seed, epochs=epochs, device=device,
                                      policy=policy, heuristic=knobs, lifecycle=lifecycle, anneal_epochs=0),
                            preset, model.param_count())
    brain = make_controller(controller, seed, policy, knobs)
    ws = Workspace.at(workspace)
    check_writable(ws.root / "store.duckdb", what="workspace")
    run_id = f"{task}-{controller}-{seed}-{secrets.token_hex(3)}"
    with Recorder(ws.store_path(run_id)) as recorder:
        result = execute(config, brain, StoreSink(recorder, run_id), progress=progress, data=data, preset=preset,
                         model=model)
    return FitResult(run_id, result.val_accuracy, result.test_accuracy, result.params, result.seeds)


def _knobs(heuristic: HeuristicConfig | Mapping) -> HeuristicConfig:
    if isinstance(heuristic, HeuristicConfig):
        return heuristic
    if not isinstance(heuristic, Mapping):
        raise BadInput(f"heuristic: a HeuristicConfig or a dict of its knobs, not {type(heuristic).__name__}")
    return from_table(HeuristicConfig, dict(heuristic), "heuristic")


def _preset(model: GrowableModel, task: str, epochs: int, blueprints: Sequence[str] | None, optimizer: str, lr: float,
            seed_lr: float | None, weight_decay: float, momentum: float) -> TaskPreset:
    """The run's training settings, recorded whole in `RunStarted` like a built-in task's preset."""
    if task in TASKS:
        raise BadInput(f"task {task!r} is a built-in task's name: name your run's task otherwise (task='...')")
    if epochs < 1:
        raise BadInput(f"epochs must be at least 1, got {epochs}")
    if optimizer not in ("adam", "sgd"):
        raise BadInput(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    seed_lr = lr if seed_lr is None else seed_lr
    if not (lr > 0 and seed_lr > 0 and weight_decay >= 0):
        raise BadInput(f"learning rates must be positive and weight decay not negative (lr={lr}, seed_lr={seed_lr}, "
                       f"weight_decay={weight_decay})")
    host = type(model.host)
    offered = {b for slot in model.slots.values() for b in FAMILIES[slot.family]}
    if blueprints is None:
        ranked = SEQUENCE_BLUEPRINTS if offered <= set(SEQUENCE_BLUEPRINTS) else BLUEPRINTS
        blueprints = [b for b in ranked if b in offered] + sorted(offered - set(ranked))
    elif isinstance(blueprints, str) or not blueprints or not set(blueprints) <= offered:
        raise BadInput(f"blueprints: a list drawn from {', '.join(sorted(offered))}; got {blueprints!r}")
    return TaskPreset(name=task, host=f"{host.__module__}.{host.__qualname__}", batch_size=0, optimizer=optimizer,
                      lr=lr, weight_decay=weight_decay, seed_lr=seed_lr, epochs=epochs, blueprints=tuple(blueprints),
                      momentum=momentum)
