"""`fit`: train a grown model on the user's own batches and loss, logged exactly as `esper run` logs a task.

The run is an ordinary run in the workspace: `RunStarted` (its config, and a preset that holds the training
settings and names the model's class), every epoch, command, germination and transition, `RunFinished`; so
`esper replay`, `esper query`, `esper report` and IQL read it like any other. `RunStarted.user_code` says the
model and data came from user code, which the log does not hold: `esper replay --verify` cannot re-execute it.
"""

import os
import secrets
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs
import msgspec
import torch
import torch.nn.functional as F

from esper.errors import BadInput
from esper.kasmina import GrowableModel
from esper.kasmina.blueprints import REPEAT, REPEAT_RULE, offered
from esper.leyline.config import (BLUEPRINTS, SEQUENCE_BLUEPRINTS, HeuristicConfig, LifecycleConfig, RunConfig, TaskPreset,
                                  commands_problem, from_table, recipe_problem)
from esper.nissa.files import check_writable
from esper.store import Recorder, Workspace
from esper.store.schema import run_id_problem
from esper.tamiyo.controllers import POLICY_CONTROLLERS, check_controller, idle_heuristic, make_controller, seedless_note
from esper.tolaria.loop import Progress, StoreSink, check_seed, execute, resolve_config
from esper.tolaria.tasks import TASKS
from esper.tolaria.trainer import resolve_device
from esper.tolaria.userdata import Loss, Score, UserData, check_first_batch

Batches = Iterable | Callable[[], Iterable]


@attrs.frozen
class FitResult:
    run_id: str
    """The run's id in the workspace: `esper replay RUN_ID`, `esper report RUN_ID`."""
    val_accuracy: float
    """The score on `val` after the last epoch, 0..1."""
    test_accuracy: float | None
    """The score on `test` at the end, 0..1; None when no test batches were given."""
    params: int
    seeds: dict[str, int]
    """How many seeds ended in each stage."""


def fit(
    model: GrowableModel, train: Batches, val: Batches, *, test: Batches | None = None,
    loss: Loss = F.cross_entropy, score: Score | None = None, epochs: int = 10, controller: str = "heuristic",
    heuristic: HeuristicConfig | Mapping | None = None, lifecycle: LifecycleConfig | Mapping | None = None,
    commands_per_epoch: int = 1, blueprints: Sequence[str] | None = None, optimizer: str = "adam", lr: float = 1e-3,
    seed_lr: float | None = None, weight_decay: float = 0.0,
    momentum: float = 0.9, seed: int = 0, task: str = "user", device: str | torch.device | None = None,
    precision: str | None = None, policy: str | os.PathLike | None = None, workspace: str | None = None, progress: Progress | None = None,
) -> FitResult:
    """Grow `model` (from `esper.grow`) for `epochs` on `train`, deciding with `controller` after each epoch.

    `train`, `val`, `test`: (x, y) batches, each a collection or a function returning them; `x` is the model's
    input, or a tuple or list of its inputs (`model(*x)`, as `esper.grow` takes its example; a DataLoader collates a
    dataset's tuples into lists); `y` its targets, one tensor or several (a tuple or list, as `loss` and `score`
    take them); every tensor of a batch holds one row per example. `loss(model(x), y)` is a batch's mean loss;
    `score(model(x), y)` the fraction of a batch the model gets right, which the gates and controllers read as
    accuracy (default: top-1 accuracy of logits `(B, classes)` against class indices).
    `controller`: heuristic, static, random, or policy or sampled (then `policy`: the file `esper ppo`/`esper iql`
    saved, played greedily or sampling; refused with any other controller). `heuristic`: the knobs of the heuristic
    controller (refused with any other), `lifecycle` the lifecycle's timings, thresholds and size
    cap (`max_params`, 0 for none; where `lifecycle` does not give it, a policy plays under the cap it was trained
    with): each a config struct or a dict of its fields; with controller static, which germinates nothing, the seeds'
    settings are warned about. `commands_per_epoch`: how many commands the
    controller may issue after an epoch, each on what the last left (`esper run --commands-per-epoch`).
    `blueprints`: what controllers may germinate (default: every blueprint of the slots' families, the largest
    first; `repeat`, growth by depth, only when named: a copy of the block before a slot, where that block maps its
    one input to an output of the same shape; one block deeper when the block holds its residual, `x + f(x)`). `optimizer` ("adam" or "sgd"), `lr`,
    `weight_decay`, `momentum` train the host; `seed_lr` (default `lr`) the seeds. `seed` seeds the run's
    randomness; `device` (default: the model's) is where it trains, at `precision` (fp32, bf16 or fp16 autocast of
    the forward passes; default bf16 on CUDA, fp32 on CPU, as `esper run --precision`); `progress(epoch, stats, projection, issued)`
    is called after each epoch, once for each command issued. `task` names the run's task in the log;
    `workspace`: the folder of the event log (default `$ESPER_WORKSPACE`, else `./runs`).

    The model is trained in place and keeps its seeds as the run leaves them: fossilized seeds are part of it,
    a seed still blending adds its output at the α it reached, and a seed still training adds nothing. Bad
    input raises `BadInput` before anything is written; a heuristic that cannot germinate in `epochs` (see its
    `warmup_epochs` and `finish_epochs`) is warned about.
    """
    if not isinstance(model, GrowableModel):
        raise BadInput("esper.fit trains a grown model: esper.grow(model, slots=[...], example=x) first")
    check_controller(controller)  # first: the checks below name controllers, and would blame another argument
    if controller == "scratch":  # it builds another run's final architecture, which only `esper run --like` names
        raise BadInput("controller 'scratch' rebuilds a built-in run (esper run --like); use heuristic, static, random "
                       "or policy")
    if policy is not None and controller not in POLICY_CONTROLLERS:  # as `esper run --policy` refuses it
        raise BadInput(f"policy is for controller 'policy' or 'sampled', not {controller!r}: drop policy, or add "
                       "controller='policy'")
    if policy is not None and not isinstance(policy, (str, os.PathLike)):
        raise BadInput(f"policy: the path of a policy file, not {type(policy).__name__}")
    policy = None if policy is None else os.fspath(policy)  # the log names it as text
    if grown := [f"{seed.seed_id} in slot {slot.name} ({seed.stage.value})" for slot in model.slots.values()
                 for seed in slot.seeds()]:
        raise BadInput(f"the model already holds seeds ({', '.join(grown)}): esper.fit grows a model from its host "
                       "alone; grow a fresh one with esper.grow")
    if heuristic is not None and controller != "heuristic":  # as `esper run --heuristic` refuses them
        raise BadInput(f"heuristic knobs are for controller 'heuristic' only, not {controller!r}: drop heuristic")
    knobs = _knobs(HeuristicConfig, heuristic, "heuristic")
    capped = isinstance(lifecycle, LifecycleConfig) or (isinstance(lifecycle, Mapping) and "max_params" in lifecycle)
    seed_settings = _seed_settings_given(lifecycle, commands_per_epoch, blueprints, seed_lr)
    lifecycle = _knobs(LifecycleConfig, lifecycle, "lifecycle")
    _check_numbers(epochs=epochs, seed=seed, commands_per_epoch=commands_per_epoch, lr=lr, seed_lr=seed_lr,
                   weight_decay=weight_decay, momentum=momentum)
    if problem := commands_problem(commands_per_epoch):
        raise BadInput(problem)
    run_id = f"{task}-{controller}-{seed}-{secrets.token_hex(3)}"
    if why := run_id_problem(run_id):  # the run's store file is named after it: checked before it is made
        raise BadInput(f"task {task!r} cannot name a run ({run_id}): {why}")
    _check_dtypes(model)
    preset = _preset(model, task, epochs, blueprints, optimizer, lr, seed_lr, weight_decay, momentum)
    data = UserData(train, val, test, loss, score)
    splits = ("train", "val") if test is None else ("train", "val", "test")
    for split in splits:
        if data.holds_nothing(split):
            raise BadInput(f"{split} holds no batches")
    device = str(device or next(model.parameters()).device)  # a torch.device too
    resolve_device(device)
    for split in splits:
        check_first_batch(model, data, split)
    brain = make_controller(controller, seed, policy, knobs)
    if hasattr(brain, "check_fits"):  # a trained policy: refused here if it cannot play on this model, not mid-run
        brain.check_fits(model.slot_names, list(preset.blueprints), where="this model", fix="learn a policy from "
                         f"esper.fit runs of this model (esper iql --task {task})")
    if not capped and (cap := getattr(brain, "max_params", 0)):  # a policy plays under its training's cap, as in esper run
        if cap < model.param_count():
            raise BadInput(f"the policy was trained under max_params {cap:,}, below the model's own "
                           f"{model.param_count():,} parameters: give lifecycle={{'max_params': N}} (0: no cap)")
        lifecycle = msgspec.structs.replace(lifecycle, max_params=cap)
    config = resolve_config(RunConfig(task=task, controller=controller, seed=seed, epochs=epochs, device=device,
                                      precision=precision, policy=policy, heuristic=knobs, lifecycle=lifecycle,
                                      commands_per_epoch=commands_per_epoch, anneal_epochs=0),
                            preset, model.param_count())
    if controller == "heuristic" and (idle := idle_heuristic(knobs, epochs)):
        warnings.warn(f"{idle} (lower the knobs warmup_epochs or finish_epochs)", stacklevel=2)
    if controller == "static" and seed_settings:
        warnings.warn(seedless_note(seed_settings, controller), stacklevel=2)
    ws = Workspace.at(workspace)
    check_writable(ws.root / "store.duckdb", what="workspace")
    with Recorder(ws.store_path(run_id)) as recorder:
        result = execute(config, brain, StoreSink(recorder, run_id), progress=progress, data=data, preset=preset,
                         model=model)
    return FitResult(run_id, result.val_accuracy, result.test_accuracy, result.params, result.seeds)


def _check_dtypes(model: GrowableModel) -> None:
    """Esper trains float32 weights (lower precision comes from autocast, `device`'s default); its seeds and
    telemetry are float32 too."""
    others = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                     if p.is_floating_point() and p.dtype != torch.float32})
    if others:
        raise BadInput(f"the model has {', '.join(others)} parameters and esper.fit trains float32 weights: "
                       "model.float() converts them (and pass float32 inputs)")


def _check_numbers(**given) -> None:
    """Every count a whole number (epochs, seed: a seed from 0 as `esper run --seed` takes) and every rate a
    number, before anything compares them: a float of epochs or a text rate would otherwise be recorded or reach
    torch."""
    for name, value in given.items():
        whole = name in ("epochs", "seed", "commands_per_epoch")
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            if not (name == "seed_lr" and value is None):
                raise BadInput(f"{name} must be {'a whole number' if whole else 'a number'}, got {value!r}")
    check_seed(given["seed"])


def _seed_settings_given(lifecycle, commands_per_epoch: int, blueprints, seed_lr) -> list[str]:
    """The settings of how seeds train and blend that a call gave."""
    given = {"lifecycle": lifecycle is not None, "commands_per_epoch": commands_per_epoch != 1,
             "blueprints": blueprints is not None, "seed_lr": seed_lr is not None}
    return [name for name, set_here in given.items() if set_here]


def _knobs(struct: type, given, name: str):
    """`given` as the config struct `struct`: itself, built from a dict of its fields, or (None) the defaults."""
    if given is None:
        return struct()
    if isinstance(given, struct):
        return given
    if not isinstance(given, Mapping):
        raise BadInput(f"{name}: a {struct.__name__} or a dict of its knobs, not {type(given).__name__}")
    return from_table(struct, dict(given), name)


def _blueprints_problem(blueprints, fits: set[str]) -> str | None:
    """What is wrong with the `blueprints` a user named, given those the model's slots can grow; None if nothing."""
    listed = isinstance(blueprints, Sequence) and not isinstance(blueprints, str)  # an iterator would be read up once
    if listed and REPEAT in blueprints and REPEAT not in fits:
        return f"blueprints: repeat grows in no slot of this model: {REPEAT_RULE}"
    if not listed or not blueprints or not set(blueprints) <= fits:
        return f"blueprints: a list drawn from {', '.join(sorted(fits))}; got {blueprints!r}"
    return None


def _preset(model: GrowableModel, task: str, epochs: int, blueprints: Sequence[str] | None, optimizer: str, lr: float,
            seed_lr: float | None, weight_decay: float, momentum: float) -> TaskPreset:
    """The run's training settings, recorded whole in `RunStarted` like a built-in task's preset."""
    if not isinstance(task, str) or not task:
        raise BadInput(f"task names the run's task in the log: a non-empty text, got {task!r}")
    if task in TASKS:
        raise BadInput(f"task {task!r} is a built-in task's name: name your run's task otherwise (task='...')")
    if epochs < 1:
        raise BadInput(f"epochs must be at least 1, got {epochs}")
    if optimizer not in ("adam", "sgd"):
        raise BadInput(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    seed_lr = lr if seed_lr is None else seed_lr
    if problem := recipe_problem(lr, seed_lr, weight_decay):
        raise BadInput(problem)
    if optimizer == "sgd" and not 0 < momentum < 1:  # Nesterov's momentum, which torch requires above 0
        raise BadInput(f"momentum must be above 0 and below 1 for sgd, got {momentum}")
    host = type(model.host)
    fits = {b for slot in model.slots.values() for b in offered(slot.family, slot.repeats)}
    if blueprints is None:  # a copy of a block grows only where named: it changes what the model is, not its width
        built = fits - {REPEAT}
        ranked = SEQUENCE_BLUEPRINTS if built <= set(SEQUENCE_BLUEPRINTS) else BLUEPRINTS
        blueprints = [b for b in ranked if b in built] + sorted(built - set(ranked))
    elif problem := _blueprints_problem(blueprints, fits):
        raise BadInput(problem)
    return TaskPreset(name=task, host=f"{host.__module__}.{host.__qualname__}", batch_size=0, optimizer=optimizer,
                      lr=lr, weight_decay=weight_decay, seed_lr=seed_lr, epochs=epochs, blueprints=tuple(blueprints),
                      momentum=momentum)
