"""Starting a run: everything between what a user asks for and `execute`.

`RunRequest` is every setting of a new run, with its default, in one place: `esper run`'s options and a
`--config` TOML file both fill it (the command line over the file over the defaults). `plan_run` checks it,
resolves the config and the task preset (with any override of rates, batch size or host) and names the run;
`start` records it. The CLI parses and prints; benchmarks and scripts start runs the same way.

Under `torchrun` one run trains data-parallel (`esper.tolaria.ranks`): `join_ranks` finds this process's place,
rank 0 plans and starts the run inside `leading`, and every other rank `follow`s it.
"""

import contextlib
import re
import secrets
import tomllib
import warnings
from pathlib import Path
from typing import Any, Callable

import attrs
import msgspec
import torch

from esper.errors import BadInput, StoreFailed, exit_code_of, first_line, out_of_memory
from esper.kasmina import HOSTS, SCHEDULES, build_host, host_problem, preset_host
from esper.kasmina.blueprints import REPEAT, REPEAT_RULE, offered
from esper.leyline.config import (HeuristicConfig, LifecycleConfig, RunConfig, TaskPreset, SNAPSHOT_EVERY, commands_problem, every_problem,
                                  from_table, number_problem, recipe_problem)
from esper.leyline.events import RunFinished
from esper.leyline.stages import SeedStage
from esper.leyline.status import CLOSING, FINISHED
from esper.nissa.fmt import plural
from esper.nissa.files import check_writable
from esper.store import Reader, Workspace
from esper.store.recorder import new_store
from esper.tamiyo.controllers import POLICY_CONTROLLERS, Controller, check_controller, make_controller, seedless_note
from esper.tolaria import checkpoint, loop
from esper.tolaria.data import TaskData, data_problem, load_task_data
from esper.tolaria.loop import Batches, Progress, RunResult, StoreSink, check_seed, execute, resolve_config
from esper.tolaria.ranks import Ranks
from esper.tolaria.resumable import not_resumable, stopping_events
from esper.tolaria.tasks import get_task
from esper.tolaria.trainer import resolve_device

TELEMETRY = ("minimal", "standard", "diagnostic")


class RunRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every setting of a new run; None: the task preset's (or, for `max_params`, the policy's) value."""

    task: str | None = None
    """None: mnist1d, or for controller scratch the task of the run it is like."""
    controller: str = "heuristic"
    policy: str | None = None
    like: str | None = None
    epochs: int = 0
    seed: int | None = None
    """None: 0, or with `like` the like run's seed (a baseline paired with the run it is like)."""
    device: str = "cpu"
    precision: str | None = None
    data_dir: str | None = None
    download: bool = False
    telemetry: str = "standard"
    max_params: int | None = None
    anneal_epochs: int | None = None
    heuristic: dict[str, int | float] = {}
    commands_per_epoch: int = 1
    lifecycle: dict[str, int | float] = {}
    blend_schedule: str = "linear"
    lr: float | None = None
    seed_lr: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    host: str | None = None
    host_options: dict[str, int | float | bool] = {}
    blueprints: list[str] | None = None
    """The blueprints the controller may germinate, in the heuristic's order of rotation (None: the task's)."""
    snapshot_every: int = SNAPSHOT_EVERY
    checkpoint_every: int = 1
    tensorboard: str | None = None


FIELDS = tuple(f.name for f in msgspec.structs.fields(RunRequest))


def request_from(file: Path | None, given: dict[str, Any]) -> RunRequest:
    """The request of a TOML file (if any) with the `given` settings over it; a bad key or value is one line."""
    settings: dict[str, Any] = {}
    if file is not None:
        try:
            settings = tomllib.loads(Path(file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise BadInput(f"cannot read config {file}: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise BadInput(f"config {file} is not TOML: {exc}") from None
        unknown = [key for key in settings if key not in FIELDS]
        if unknown:
            raise BadInput(f"config {file}: unknown key {unknown[0]!r} (known: {', '.join(FIELDS)})")
        for key, value in _leaves(settings):
            if problem := number_problem(key, value):
                raise BadInput(f"config {file}: {problem}")
        settings = _paths_from(Path(file).absolute().parent, settings)
    for key, value in given.items():  # a table given (--heuristic K=V, ...) adds to the file's, key by key
        both = isinstance(value, dict) and isinstance(settings.get(key), dict)
        settings[key] = {**settings[key], **value} if both else value
    # the log names its files absolutely: replay --verify, --like and --resume find them from any folder
    settings = _paths_from(Path.cwd(), settings)
    try:
        return msgspec.convert(settings, RunRequest)
    except msgspec.ValidationError as exc:
        raise BadInput(f"{'config ' + str(file) if file else 'run settings'}: {_naming_entry(exc, settings)}") from None


PATH_KEYS = ("policy", "data_dir", "tensorboard")
"""The settings that name a file or folder: in a config file, relative to the file's folder; given as a flag,
relative to the working folder. A request holds them absolute."""


def _paths_from(folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` with each relative path (`PATH_KEYS`) made relative to `folder` instead of the working folder, so
    that a config file names the files beside it wherever it is run from; `~` is the home folder, as in a shell."""
    resolved = dict(settings)
    for key in PATH_KEYS:
        if isinstance(resolved.get(key), str) and resolved[key].strip():
            path = Path(resolved[key]).expanduser()
            resolved[key] = str(path if path.is_absolute() else folder / path)
    return resolved


def _naming_entry(exc: msgspec.ValidationError, settings: dict[str, Any]) -> str:
    """msgspec's message, with the key of a table's bad entry named: it says `$.heuristic[...]` for any of them."""
    text = str(exc)
    match = re.search(r"\$\.(\w+)\[\.\.\.\]", text)
    table = settings.get(match.group(1)) if match else None
    if not isinstance(table, dict):
        return text
    kind = next(f.type for f in msgspec.structs.fields(RunRequest) if f.name == match.group(1))
    for key, value in table.items():
        try:
            msgspec.convert({key: value}, kind)
        except msgspec.ValidationError:
            return text.replace(match.group(0), f"$.{match.group(1)}.{key}")
    return text


def _leaves(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Every value of a TOML table, its key dotted through the tables it is in (`heuristic.min_gain`)."""
    out = []
    for key, value in table.items():
        out += _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [(prefix + key, value)]
    return out


@attrs.frozen
class PlannedRun:
    """A run checked and resolved, ready to record: nothing is written before `start`."""

    run_id: str
    request: RunRequest
    config: RunConfig
    preset: TaskPreset
    controller: Controller
    data: TaskData
    notes: tuple[str, ...] = ()
    """What the caller should say before it records (the unsealed `--like` run whose architecture it builds)."""


def plan_run(request: RunRequest, ws: Workspace) -> PlannedRun:
    """Check every setting (one `BadInput` line for the first that is wrong) and resolve the run."""
    r = request
    architecture: list[tuple[str, str]] = []
    epochs, like, notes = r.epochs, r.like, _seedless_settings(r)
    if r.controller == "scratch":
        if like is None:
            raise BadInput("controller scratch needs --like RUN (like = RUN in a --config file): the run whose final "
                           "architecture to build")
        grew = final_architecture(ws, like, r.task)
        if r.max_params is not None and 0 < r.max_params < grew.params:  # refused before the run's header is printed
            raise BadInput(f"like {grew.run_id}: its architecture has {grew.params:,} parameters, over max_params "
                           f"{r.max_params:,}: drop --max-params or raise it")
        like, architecture, epochs = grew.run_id, grew.architecture, epochs or grew.config.epochs
        notes += (grew.unsealed,) if grew.unsealed else ()
        r = _as_grown(r, grew, epochs)
    elif like is not None:
        raise BadInput("--like RUN (like = RUN in a --config file) is for --controller scratch: the run whose architecture to build")
    if r.task is None:
        r = msgspec.structs.replace(r, task="mnist1d")
    if r.seed is None:
        r = msgspec.structs.replace(r, seed=0)
    _check_settings(r)
    knobs = from_table(HeuristicConfig, r.heuristic, "heuristic knobs")
    controller = make_controller(r.controller, r.seed, r.policy, knobs)
    max_params = r.max_params if r.max_params is not None else getattr(controller, "max_params", 0)
    lifecycle = msgspec.structs.replace(from_table(LifecycleConfig, r.lifecycle, "lifecycle knobs"), max_params=max_params)
    preset = preset_for(r)
    if hasattr(controller, "check_fits"):  # a trained policy: refused before anything is written if it cannot play here
        with torch.device("meta"):
            slots = preset_host(preset).slot_names
        controller.check_fits(slots, list(preset.blueprints), where=f"task {r.task}")
    config = resolve_config(RunConfig(
        task=r.task, controller=r.controller, seed=r.seed, epochs=epochs, device=r.device, precision=r.precision,
        policy=r.policy, like=like,
        data_dir=r.data_dir, telemetry=r.telemetry, architecture=architecture, blend_schedule=r.blend_schedule,
        lifecycle=lifecycle, heuristic=knobs, commands_per_epoch=r.commands_per_epoch, anneal_epochs=r.anneal_epochs,
    ), preset)
    if config.anneal_epochs > config.epochs:  # the cosine would start part-way down: its first epochs barely learn
        raise BadInput(f"anneal_epochs {config.anneal_epochs} is longer than the run's {plural(config.epochs, 'epoch')}:"
                       f" give at most {config.epochs} (the whole run)")
    resolve_device(r.device)
    if r.tensorboard is not None:
        check_writable(Path(r.tensorboard) / "run", "the TensorBoard folder")
    if r.checkpoint_every:
        checkpoint.check_folder(ws.root)
    data = load_task_data(r.task, config.data_seed, r.data_dir, download=r.download, preset=preset)  # bad input: no log
    _check_host_fits(preset, data, r.task)
    return PlannedRun(new_run_id(r.task, r.controller, r.seed), r, config, preset, controller, data, notes)


SEED_SETTINGS = {"seed_lr": None, "lifecycle": {}, "blend_schedule": "linear", "blueprints": None, "commands_per_epoch": 1}
"""The settings of how seeds train and blend, with their defaults: a controller that grows none has no use for them."""


def _seedless_settings(r: RunRequest) -> tuple[str, ...]:
    """A note when `r` sets how seeds train or blend for a controller that germinates none (static, scratch)."""
    given = [name for name, default in SEED_SETTINGS.items() if getattr(r, name) != default]
    if r.controller not in ("static", "scratch") or not given:
        return ()
    return (seedless_note(given, r.controller),)


def _as_grown(r: RunRequest, grew: "FinalArchitecture", epochs: int) -> RunRequest:
    """The request with the task and host `grew` grew on, and its recipe (rates, weight decay, batch size, anneal: at
    most the `epochs` scratch trains), seed and data wherever the request leaves them to the preset: the same
    architecture trained the same way on the same data, paired with the run. Another host is refused: the fossils
    were built for this one's shapes, and what scratch built would not be the architecture that grew."""
    p, c = grew.preset, grew.config
    anneal = c.anneal_epochs if c.anneal_epochs is None else min(c.anneal_epochs, epochs)  # None: an old log's
    if (r.host is not None or r.host_options) and ((r.host or p.host), dict(r.host_options)) != (p.host, p.host_options):
        options = ", ".join(f"{k}={v}" for k, v in p.host_options.items())
        raise BadInput(f"like {grew.run_id}: it grew on host {p.host}{f' ({options})' if options else ''}; scratch "
                       "builds its architecture on that host: drop --host and --host-option (host, host_options)")
    return msgspec.structs.replace(
        r, host=p.host, host_options=dict(p.host_options), lr=p.lr if r.lr is None else r.lr,
        seed_lr=p.seed_lr if r.seed_lr is None else r.seed_lr,
        weight_decay=p.weight_decay if r.weight_decay is None else r.weight_decay,
        batch_size=p.batch_size if r.batch_size is None else r.batch_size,
        seed=c.seed if r.seed is None else r.seed, data_dir=c.data_dir if r.data_dir is None else r.data_dir,
        task=c.task, anneal_epochs=anneal if r.anneal_epochs is None else r.anneal_epochs,
        blueprints=list(p.blueprints))  # what it builds must be among the run's blueprints


def _check_settings(r: RunRequest) -> None:
    check_controller(r.controller)  # first: the checks below name controllers, and would blame another option
    if r.telemetry not in TELEMETRY:
        raise BadInput(f"unknown telemetry profile {r.telemetry!r}: use {', '.join(TELEMETRY)}")
    check_seed(r.seed)
    if r.policy is not None and r.controller not in POLICY_CONTROLLERS:
        raise BadInput("--policy is for --controller policy or sampled")
    if r.heuristic and r.controller != "heuristic":
        raise BadInput("heuristic knobs are for controller heuristic only")
    if problem := commands_problem(r.commands_per_epoch):
        raise BadInput(problem)
    if "max_params" in r.lifecycle:
        raise BadInput("lifecycle knob max_params: the size cap is a setting of its own: --max-params N (in a config, "
                       "max_params = N at the top level)")
    if problem := data_problem(r.task, r.data_dir, r.download):
        raise BadInput(problem)
    if r.blend_schedule not in SCHEDULES:
        raise BadInput(f"unknown blend schedule {r.blend_schedule!r}: use {', '.join(SCHEDULES)}")
    for name in ("snapshot_every", "checkpoint_every"):
        if problem := every_problem(name, getattr(r, name)):
            raise BadInput(problem)
    if problem := recipe_problem(r.lr, r.seed_lr, r.weight_decay, r.batch_size):
        raise BadInput(problem)


def _check_host_fits(preset: TaskPreset, data: TaskData, task: str) -> None:
    """Refuse, before anything is written, a host that cannot train on the task's data: a forward pass and the
    loss of a few training examples must work and give the task's classes (a host option such as `channels=0`,
    a `length` or `num_classes` that is not the data's, a host made for another task)."""
    host = f"host {preset.host}" + "".join(f" {k}={v}" for k, v in preset.host_options.items())
    try:
        outputs = _outputs(lambda: preset_host(preset), data)
    except Exception as exc:
        if (memory := out_of_memory(exc)) is not None:  # the host can, this machine cannot
            raise BadInput(f"{host} is too big for this machine: {memory}") from None
        fit = [name for name in HOSTS if _trains_on(name, data)]
        hint = f" (hosts that do, with their default options: {', '.join(fit)})" if fit else ""
        raise BadInput(f"{host} cannot train on task {task}: {first_line(exc)}{hint}") from None
    if outputs != data.num_classes:
        raise BadInput(f"{host} gives {outputs} outputs, task {task} has {data.num_classes} classes")


def _outputs(build: Callable[[], torch.nn.Module], data: TaskData) -> int:
    """How many outputs the model that `build` makes gives for a few training examples (raises what building it,
    the model or the loss raises)."""
    x, y = data.examples(2)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch warns before it fails on some sizes (zero channels)
        output = build()(x)
        if output.shape[-1] == data.num_classes:
            data.loss(output, y)
    return output.shape[-1]


def _trains_on(host: str, data: TaskData) -> bool:
    """Whether built-in `host`, with its default options, takes the task's data and gives its classes."""
    try:
        return _outputs(lambda: build_host(host), data) == data.num_classes
    except Exception:
        return False


def preset_for(r: RunRequest) -> TaskPreset:
    """The task's preset with the request's overrides; the run records it whole (`RunStarted.preset`)."""
    preset = get_task(r.task)
    changes: dict[str, Any] = {k: getattr(r, k) for k in ("lr", "seed_lr", "weight_decay", "batch_size", "host")
                               if getattr(r, k) is not None}
    if r.host_options or "host" in changes:
        changes["host_options"] = dict(r.host_options)
    if r.blueprints is not None:
        changes["blueprints"] = tuple(r.blueprints)
    preset = msgspec.structs.replace(preset, **changes)
    if problem := host_problem(preset.host, preset.host_options):
        raise BadInput(problem)
    if r.blueprints is not None and (problem := blueprints_problem(preset)):
        raise BadInput(problem)
    return preset


def blueprints_problem(preset: TaskPreset) -> str | None:
    """Why the preset's blueprints cannot all grow in every slot of its host (None if they can): a controller may
    germinate any of them in any slot."""
    names = list(preset.blueprints)
    if not names:
        return "no blueprint given: give at least one (--blueprint NAME), or none for the task's"
    if (twice := next((name for name in names if names.count(name) > 1), None)) is not None:  # "" is a name too
        return f"blueprint {twice!r} is given twice: give it once"
    with torch.device("meta"):
        slots = list(preset_host(preset).slots.values())
    for slot in slots:
        fits = offered(slot.family, slot.repeats)
        if (misfit := next((name for name in names if name not in fits), None)) is not None:
            why = f": {REPEAT_RULE}" if misfit == REPEAT else ""
            return (f"blueprint {misfit!r} does not grow in slot {slot.name} of host {preset.host}{why} "
                    f"(its blueprints: {', '.join(fits)})")
    return None


def new_run_id(task: str, controller: str, seed: int) -> str:
    return f"{task}-{controller}-{seed}-{secrets.token_hex(3)}"


def start(planned: PlannedRun, ws: Workspace, progress: Progress | None = None, ranks: Ranks | None = None,
          batches: Batches | None = None) -> RunResult:
    """Record the run into its own store file of the workspace (with `ranks`: as rank 0 of a data-parallel run)."""
    r, path = planned.request, ws.store_path(planned.run_id)
    with new_store(path) as recorder:  # stopped before its RunStarted was stored (Ctrl-C as it started): no file
        store = StoreSink(recorder, planned.run_id, snapshot_every=r.snapshot_every)
        sink, board = _with_tensorboard(store, r.tensorboard, planned.run_id)
        try:
            return execute(planned.config, planned.controller, sink, progress=progress, data=planned.data,
                           preset=planned.preset, checkpoint_folder=checkpoint.folder_of(ws.root),
                           checkpoint_every=r.checkpoint_every, ranks=ranks, batches=batches)
        except StoreFailed as exc:
            # its RunStarted at least, and (in the same batch) the epoch-0 checkpoint where it writes any
            resumable = store.last_epoch is not None and r.checkpoint_every > 0
            raise exc.adding(then=f"run esper run --resume {planned.run_id}" if resumable else "run it again") from None
        finally:
            if board is not None:
                board.close()


@attrs.frozen
class Stopped:
    """A run as its log holds it once a stop (Ctrl-C, SIGTERM) ended the command that trained it."""

    result: RunResult | None
    """The numbers of its `RunFinished` when that was stored before the stop came: the run is over, whole."""
    resumable: bool
    """A checkpoint to go on from and nothing that ends the run for good: `esper run --resume` continues it."""


def stopped(ws: Workspace, run_id: str) -> Stopped:
    """How the run stands in its own store file of `ws` after a stop. A run with no event there (stopped before its
    first append: no file), or whose file cannot be read, has nothing to resume."""
    path = ws.store_path(run_id)
    if not path.exists():
        return Stopped(None, False)
    with Reader([path]) as reader:  # a file its writer still holds (another process's) is read from a copy
        events = stopping_events(reader, run_id)
    closing = [e for e in events if type(e) in CLOSING]
    last = closing[-1] if closing else None
    if isinstance(last, RunFinished):
        return Stopped(RunResult(last.val_accuracy, last.test_accuracy, last.params, last.seeds,
                                 last.val_bits_per_char, last.test_bits_per_char), False)
    return Stopped(None, not_resumable(run_id, events) is None)


def join_ranks(request: RunRequest) -> Ranks | None:
    """This process's place among the ranks `torchrun` started for one data-parallel run; None when it runs alone."""
    return Ranks.join(request.device)


@contextlib.contextmanager
def leading(ranks: Ranks | None):
    """The block is rank 0's part of a data-parallel run (nothing more when `ranks` is None): a failure in it,
    from a bad setting to a crash, stops the other ranks with its exit code; however it ends, the ranks part."""
    if ranks is None:
        yield
        return
    try:
        yield
        ranks.release()
    except BaseException as exc:
        ranks.stop(first_line(exc), exit_code_of(exc))
        raise
    finally:
        ranks.close()


def follow(ranks: Ranks) -> None:
    """A rank other than 0: carry out and train what rank 0 decides, until it ends the run."""
    try:
        loop.follow(ranks)
    finally:
        ranks.close()


def _with_tensorboard(store: StoreSink, folder: str | None, run_id: str):
    """The sink the run writes to: the store, and TensorBoard files of each batch once it is stored."""
    if folder is None:
        return store, None
    from esper.nissa.tensorboard import TensorBoardWriter

    board = TensorBoardWriter(Path(folder), run_id)

    class Both:
        held = store.held

        def append(self, batch: list) -> None:
            store.append(batch)
            board.write(batch)

    return Both(), board


def resolved_settings(planned: PlannedRun) -> dict[str, Any]:
    """The run's settings, the preset's values filled in: the keys of a `--config` file (None: not set)."""
    c, p, r = planned.config, planned.preset, planned.request
    return msgspec.structs.asdict(r) | {
        "epochs": c.epochs, "anneal_epochs": c.anneal_epochs, "max_params": c.lifecycle.max_params, "like": c.like,
        "precision": c.precision,
        "lr": p.lr, "seed_lr": p.seed_lr, "weight_decay": p.weight_decay, "batch_size": p.batch_size, "host": p.host, "host_options": p.host_options,
        "blueprints": list(p.blueprints),
        "heuristic": msgspec.to_builtins(c.heuristic) if r.controller == "heuristic" else {},
        "lifecycle": {k: v for k, v in msgspec.to_builtins(c.lifecycle).items() if k != "max_params"},
    }


def resolved_toml(planned: PlannedRun) -> str:
    """The run's settings as a `--config` file that starts the same run: the preset's values filled in."""
    lines, tables = [], []
    for key, value in resolved_settings(planned).items():
        if isinstance(value, dict):
            tables.append(f"\n[{key}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in value.items()))
        elif value is not None:
            lines.append(f"{key} = {_toml_value(value)}\n")
    return "".join(lines) + "".join(tables)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(_toml_value(v) for v in value)}]"
    return msgspec.json.encode(str(value)).decode()  # a JSON string is a TOML basic string


@attrs.frozen
class FinalArchitecture:
    """What a finished run grew: the architecture `--controller scratch --like RUN` builds up front."""

    run_id: str
    architecture: list[tuple[str, str]]
    """(slot, blueprint) of every fossil, in the order they fossilized."""
    config: RunConfig
    """The run's config: its epochs, seed, anneal and data are the baseline's defaults."""
    params: int
    """The grown model's size, the architecture's."""
    preset: TaskPreset
    """The preset it trained with: its host (and options) and recipe, the baseline's."""
    unsealed: str | None
    """The note to say when the run was written before hash chains (`Reader.read_checked`)."""


def final_architecture(ws: Workspace, like: str, task: str | None) -> FinalArchitecture:
    """What run `like`, a finished run of `task` (None: of any task), grew. Read with its chain checked and folded
    from zero (not from a snapshot, whose state no hash covers): the architecture a baseline builds is what the log,
    re-judged, says grew."""
    from esper.nissa.runstate import RunState

    with ws.reader() as reader:
        run_id = reader.resolve_run(like)
        checked = reader.read_checked(run_id)
        recorded, unsealed = checked.recorded, checked.unsealed
        state = RunState.fold(recorded)  # RunStarted first, or it raises
        resumable = reader.in_own_store(run_id) and not_resumable(run_id, [r.event for r in recorded]) is None
    if recorded[0].event.user_code:  # its model is the user's Python, which no command can build
        raise BadInput(f"like {run_id}: a run of your own model (esper.fit, task {state.config.task}); scratch builds "
                       "the architecture of a built-in host's run")
    if state.status != FINISHED:  # what had fossilized by its end would pass for an architecture that grew
        done = state.epochs[-1].epoch if state.epochs else 0
        fix = f": finish it first (esper run --resume {run_id})" if resumable else ""
        raise BadInput(f"like {run_id}: the run is {state.status} after epoch {done} of {state.config.epochs}; scratch "
                       f"builds the architecture of a finished run{fix}")
    if task is not None and state.config.task != task:
        raise BadInput(f"like {run_id}: a run of task {state.config.task}, not {task} (scratch builds an architecture "
                       f"on the task it grew on): drop --task (task in a --config file)")
    # Fossils in the order they fossilized; seeds built up front (epoch 0, `build` events) are among them. A log
    # written before `build` existed built its config's architecture without events: those come first.
    fossilized = sorted(
        (epoch, order, seed.slot, seed.blueprint)
        for order, seed in enumerate(state.garden.seeds.values())
        for epoch, stage in seed.history if stage is SeedStage.FOSSILIZED
    )
    unlogged = [] if state.garden.built else list(state.config.architecture)
    architecture = unlogged + [(slot, bp) for _, _, slot, bp in fossilized]
    return FinalArchitecture(run_id, [tuple(a) for a in architecture], state.config, state.finished.params,
                             recorded[0].event.preset, unsealed)

