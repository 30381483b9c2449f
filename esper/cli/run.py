"""`esper run`: one morphogenetic training run, logged as events."""

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import typer

from esper.cli.app import (RayAddress, WorkspaceOption, app, existing_workspace, handles_errors, json_text,
                           option_source, path_option, say, writable_workspace)
from esper.cli.progress import EpochBars, epoch_lines
from esper.errors import BadInput, RunFailed
from esper.leyline.config import SNAPSHOT_EVERY, HeuristicConfig, LifecycleConfig, from_table, parse_knobs
from esper.leyline.events import STOPPED
from esper.nissa.fmt import plural
from esper.store import Workspace
from esper.tamiyo.controllers import CONTROLLERS, idle_heuristic

if TYPE_CHECKING:
    from esper.app.runs import RunRequest
    from esper.tolaria.loop import RunResult


@app.command()
@handles_errors
def run(
    ctx: typer.Context,
    task: str = typer.Option(None, "--task", help="mnist1d (default; with --like, the run's task), cifar10 or text."),
    controller: str = typer.Option(None, "--controller", help=f"One of: {', '.join(CONTROLLERS)} (default heuristic)."),
    policy: Optional[str] = path_option(None, "--policy", as_text=True, help="Policy file for --controller policy (greedy) or sampled (samples as in training, seeded by --seed)."),
    like: Optional[str] = typer.Option(None, "--like", help="For --controller scratch: the run whose final "
                                       "architecture to train from scratch, on its host, with its rates, weight decay, "
                                       "batch size and seed unless given."),
    epochs: int = typer.Option(None, "--epochs", help="Epoch budget (default, or 0: the task's preset, or the --like run's)."),
    seed: int = typer.Option(None, "--seed", help="Seed of initialisation and data order (default 0, or the --like run's)."),
    device: str = typer.Option(None, "--device", help="cpu (default), cuda or cuda:N (under torchrun: cpu or cuda)."),
    precision: str = typer.Option(
        None, "--precision", help="bf16, fp16 (with a gradient scaler) or fp32 autocast (default: bf16 on CUDA, fp32 on CPU)."),
    data_dir: Optional[str] = path_option(None, "--data-dir", as_text=True, help="Where cifar10 lives; for text, a UTF-8 file or folder "
                                           "to train on instead of the standard library's sources (hidden files and "
                                           "__pycache__ left out)."),
    download: bool = typer.Option(None, "--download", help="Download cifar10 into --data-dir if missing."),
    telemetry: str = typer.Option(None, "--telemetry", help="minimal, standard (default) or diagnostic."),
    max_params: Optional[int] = typer.Option(
        None, "--max-params", help="Hard cap on the model's size: a germination that would exceed it is refused "
        "(default: no cap; with --controller policy or sampled, the cap the policy was trained under)."),
    anneal_epochs: Optional[int] = typer.Option(
        None, "--anneal-epochs", help="Lower every learning rate towards 0 over the last N epochs "
        "(default: the task's, 5 on mnist1d, or all of a shorter run; 0: constant rates)."),
    heuristic: Optional[list[str]] = typer.Option(
        None, "--heuristic", help="A knob of the heuristic gardener, KEY=VALUE (repeatable), e.g. min_gain=1.0 to "
        "germinate as soon as the host has warmed up instead of on a plateau. Recorded in the run's config."),
    commands_per_epoch: int = typer.Option(
        None, "--commands-per-epoch", help="At most N commands after each epoch (default 1): the controller decides "
        "again after each command the lifecycle accepts, so the heuristic can germinate into several slots at once."),
    lifecycle: Optional[list[str]] = typer.Option(
        None, "--lifecycle", help="A timing, gate threshold or mechanic of the seed lifecycle, KEY=VALUE (repeatable), "
        "e.g. blend_epochs=1, or isolated_fraction=0.25 to train seeds in isolation on a quarter of each batch. "
        "Recorded in the run's config; replay judges the run by it."),
    blend_schedule: str = typer.Option(None, "--blend-schedule", help="How α rises while a seed blends: linear "
                                       "(default) or sigmoid."),
    lr: Optional[float] = typer.Option(None, "--lr", help="The host's learning rate (default: the task preset's)."),
    seed_lr: Optional[float] = typer.Option(None, "--seed-lr", help="The seeds' learning rate (default: the preset's)."),
    weight_decay: Optional[float] = typer.Option(
        None, "--weight-decay", help="L2 weight decay of the host's and the seeds' optimizers (default: the preset's, 0 on "
        "mnist1d)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Training batch size (default: the preset's)."),
    host: Optional[str] = typer.Option(None, "--host", help="The host network (default: the task's; cnn1d, resnet, paper_cnn, transformer)."),
    host_option: Optional[list[str]] = typer.Option(
        None, "--host-option", help="An option of the host's constructor, KEY=VALUE (repeatable), e.g. channels=24."),
    blueprint: Optional[list[str]] = typer.Option(
        None, "--blueprint", help="A blueprint the controller may germinate (repeatable; default: the task's), e.g. "
        "repeat on text: a copy of the transformer block before the slot, to grow by depth."),
    snapshot_every: int = typer.Option(
        None, "--snapshot-every", help=f"Store a snapshot of the run's state every N epochs (default {SNAPSHOT_EVERY}), "
        "beside its events, so readers need not fold the log from zero (0: none). Changes no event."),
    checkpoint_every: int = typer.Option(
        None, "--checkpoint-every", help="Save the run's whole training state (model, optimizers, every RNG) every N "
        "epochs (default 1; with --resume, the run's own) into the workspace's checkpoints/ folder, so that --resume can "
        "continue it (0: none)."),
    tensorboard: Optional[str] = path_option(
        None, "--tensorboard", as_text=True, help="Also write TensorBoard event files into this folder as the run trains."),
    resume: Optional[str] = typer.Option(
        None, "--resume", help="Continue an interrupted run (Ctrl-C, SIGTERM, killed, crashed) from its latest "
        "checkpoint, with its own config: the rest of it is appended to its log."),
    config_file: Optional[Path] = path_option(
        None, "--config", help="A TOML file of these settings (keys as the options, with _ for -; [heuristic], "
        "[lifecycle] and [host_options] tables; paths relative to the file's folder); options given here override it, "
        "a table's key by key."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved settings as TOML (with "
                                      "--json: one JSON object, the same keys) and exit."),
    seeds: Optional[str] = typer.Option(
        None, "--seeds", help="Train many seeds of this configuration at once on Ray, e.g. 0-19 or 0,3,5: one line "
        "per finished run, then mean ± sd of their results (extra: '.[ray]')."),
    ray_address: Optional[str] = RayAddress,
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object on stdout (with --seeds: "
                                 "one line per run as it ends, then a summary line)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Train one run on a task, growing it with the chosen controller; every step is an event."""
    from esper.app import runs  # torch: loaded when a run is asked for, not by every command

    given = _given(ctx)
    if resume is not None:
        _refuse_config_options(ctx)
        request = runs.request_from(None, given)
        every = request.checkpoint_every if "checkpoint_every" in given else None  # None: as the run did
        run_id, result = _resume(resume, every, request.snapshot_every, workspace)
        _print_result(run_id, result, as_json)
        return
    request = runs.request_from(config_file, given)
    if seeds is not None:
        _run_seeds(seeds, request, ctx, as_json, workspace, ray_address, config_file)
        return
    if ray_address is not None:
        raise BadInput("--ray-address is for --seeds (a single run trains here)")
    with _naming(config_file):
        ranks = runs.join_ranks(request)  # under torchrun: rank 0 runs what follows, the other ranks follow it
    if ranks is not None and not ranks.leader:
        runs.follow(ranks)
        return
    with runs.leading(ranks):
        with _naming(config_file):
            planned = runs.plan_run(request, Workspace.at(workspace))
        for note in planned.notes:
            say(f"note: {note}")
        if print_config:
            print(json_text(runs.resolved_settings(planned)) if as_json else runs.resolved_toml(planned).rstrip("\n"))
            return
        ws = writable_workspace(workspace)
        config = planned.config
        cap = f", at most {config.lifecycle.max_params:,} params" if config.lifecycle.max_params else ""
        annealed = min(config.anneal_epochs, config.epochs)
        anneal = f" (rates annealed over the last {plural(annealed, 'epoch')})" if annealed else ""
        where = f"{ranks.world} ranks on {config.device}" if ranks else config.device
        say(f"run {planned.run_id}: {config.task}, controller {config.controller}, seed {config.seed}, "
            f"{plural(config.epochs, 'epoch')}{anneal} on {where} ({config.precision}){cap}")
        _note_idle(config)
        result = _trained(ws, planned.run_id, lambda: runs.start(planned, ws, progress=epoch_lines(config.epochs),
                                                                 ranks=ranks, batches=EpochBars()))
    _print_result(planned.run_id, result, as_json)


NOT_SETTINGS = ("ctx", "resume", "config_file", "print_config", "as_json", "workspace", "seeds", "ray_address")


@contextlib.contextmanager
def _naming(config_file: Optional[Path]) -> Iterator[None]:
    """A setting refused in the block names the config file it may have come from (nothing without a file)."""
    try:
        yield
    except BadInput as exc:
        if config_file is None:
            raise
        raise type(exc)(f"{exc} (settings from config {config_file} and the command line)") from None


def _given(ctx: typer.Context) -> dict:
    """The settings named on the command line, as `RunRequest` keys and values."""
    given = {}
    for name, value in ctx.params.items():
        if name in NOT_SETTINGS or value is None or option_source(ctx, name) == "DEFAULT":
            continue
        if name in ("heuristic", "lifecycle"):
            struct = HeuristicConfig if name == "heuristic" else LifecycleConfig
            value = parse_knobs(struct, value, flag=f"--{name}")
            from_table(struct, value, f"--{name}")  # refused here, naming the flag, before any file is read
        elif name == "host_option":
            name, value = "host_options", _key_values(value, "--host-option")
        elif name == "blueprint":
            name = "blueprints"
        given[name] = value
    return given


def _key_values(items: list[str], flag: str) -> dict:
    """KEY=VALUE strings as a dict, each value an int, a float or a bool as it reads."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"{flag} {item!r}: expected KEY=VALUE")
        if key.strip() in out:  # the last would win without a word
            raise BadInput(f"{flag} {key.strip()} is given twice: give it once")
        text = text.strip()
        if text.lower() in ("true", "false"):
            out[key.strip()] = text.lower() == "true"
            continue
        for kind in (int, float):
            try:
                out[key.strip()] = kind(text)
                break
            except ValueError:
                continue
        else:
            raise BadInput(f"{flag} {item!r}: the value must be a number or true/false")
    return out


RESUME_OPTIONS = ("ctx", "resume", "checkpoint_every", "snapshot_every", "as_json", "workspace")
"""What `--resume` takes besides the run: how the rest of it is written and printed, never its config."""


def _refuse_config_options(ctx: typer.Context) -> None:
    flags = {p.name: p.opts[0] for p in ctx.command.params if p.opts}  # as typed: config_file is --config
    given = [flags[name] for name in ctx.params if name not in RESUME_OPTIONS
             and option_source(ctx, name) != "DEFAULT"]
    if given:
        board = ("; its TensorBoard files come from its log: esper export RUN --format tensorboard --out DIR"
                 if "--tensorboard" in given else "")
        raise BadInput(f"--resume continues the run with its own config: drop {', '.join(given)}{board}")


def _resume(run: str, checkpoint_every: Optional[int], snapshot_every: int, workspace: Optional[Path]):
    from esper.tolaria.resume import open_resumption

    ws = existing_workspace(workspace)
    resumption = open_resumption(ws, run, checkpoint_every, snapshot_every)

    def train() -> "RunResult":
        with resumption:
            for note in resumption.passed_over:
                say(f"note: passed over the checkpoint of {note}")
            say(resumption.describe())
            return resumption.train(progress=epoch_lines(resumption.session.config.epochs), batches=EpochBars())

    return resumption.run_id, _trained(ws, resumption.run_id, train)


def _trained(ws: Workspace, run_id: str, train: Callable[[], "RunResult"]) -> "RunResult":
    """`train()`'s result: one run trained (started or resumed) into its store in `ws`. A stop (Ctrl-C, SIGTERM) is
    judged by the run's log, read once the store is closed. Before `RunFinished` was stored, the stop ends the command
    (130, 143), saying how to resume the run where its log can go on (nothing for a run stopped before its first
    event). After it (the stop came as the run closed its writer), the run is over and whole: the command ends as the
    run did, with the result of the stored `RunFinished` (the numbers `train()` returns) and exit 0, so that a script
    gets the run it asked for, not a 130 that would send it to a `--resume` refusing a finished run."""
    from esper.app.runs import stopped

    try:
        return train()
    except KeyboardInterrupt:
        after = stopped(ws, run_id)
        if after.result is not None:
            say(f"note: run {run_id} had finished when the stop came: its result stands")
            return after.result
        if after.resumable:
            say(f"note: esper run --resume {run_id} continues the run")
        raise


@contextlib.contextmanager
def _says_how_to_resume(ws: Workspace, run_ids: list[str], finished: set[str]) -> Iterator[None]:
    """Ctrl-C or SIGTERM stops runs that `--resume` can continue if their logs can go on (`_trained`): say how,
    before the command's last line. `finished`: those that ended before the stop (filled in as they do)."""
    from esper.app.runs import stopped

    try:
        yield
    except KeyboardInterrupt:
        left = [run_id for run_id in run_ids if run_id not in finished and stopped(ws, run_id).resumable]
        if len(left) == 1:
            say(f"note: esper run --resume {left[0]} continues the run")
        elif left:
            say(f"note: esper run --resume RUN continues each run left unfinished: {', '.join(left)}")
        raise


def _note_idle(config) -> None:
    """A heuristic run too short to germinate anything is not refused (a baseline may want it), but said."""
    if config.controller == "heuristic" and (idle := idle_heuristic(config.heuristic, config.epochs)):
        say(f"note: {idle} (--heuristic warmup_epochs=N, --heuristic finish_epochs=N)")


def _print_result(run_id: str, result, as_json: bool) -> None:
    table = _closing_table(run_id, result)
    if as_json:
        for line in table.splitlines():
            say(line)
        print(json_text(_result_json(run_id, result)))
    else:
        print(table)


def _result_json(run_id: str, result) -> dict:
    """What `--json` prints of a finished run (one object per run with --seeds too)."""
    bits = {f"{split}_bits_per_char": getattr(result, f"{split}_bits_per_char") for split in ("val", "test")}
    return {"run_id": run_id, "val_accuracy": result.val_accuracy, "test_accuracy": result.test_accuracy,
            "params": result.params, "seeds": ended(result.seeds)} | {k: v for k, v in bits.items() if v is not None}


CULLED_BY_NOW = ("CULLED", "EMBARGOED", "DORMANT")
"""A culled seed's stage as the run ends: its slot under embargo, or free again."""


def ended(seeds: dict[str, int]) -> dict[str, int]:
    """How many seeds ended in each stage, a culled seed counted as CULLED whatever its slot has moved on to since
    (the closing table and `--json` alike)."""
    out: dict[str, int] = {}
    for stage, n in sorted(seeds.items()):
        stage = "CULLED" if stage in CULLED_BY_NOW else stage
        out[stage] = out.get(stage, 0) + n
    return out


def _stages(seeds: dict[str, int]) -> str:
    return ", ".join(f"{n} {stage.lower()}" for stage, n in ended(seeds).items()) or "no seeds"


def _closing_table(run_id: str, result) -> str:
    bits = result.test_bits_per_char
    return "\n".join([
        f"run {run_id}",
        f"  val accuracy   {result.val_accuracy * 100:.2f}%",
        f"  test accuracy  {result.test_accuracy * 100:.2f}%",
        *([f"  test bits/char {bits:.3f}"] if bits is not None else []),
        f"  params         {result.params:,}",
        f"  seeds          {_stages(result.seeds)}",
        f"  replay with    esper replay {run_id}",
    ])


def _run_seeds(text: str, request: "RunRequest", ctx: typer.Context, as_json: bool, workspace: Optional[Path],
               ray_address: Optional[str], config_file: Optional[Path]) -> None:
    """`--seeds`: every seed's run, a line (or JSON object) as each ends, then the summary; exit 1 if any failed."""
    from esper.app import seeds as fanout
    from esper.tolaria import cluster

    for name in ("seed", "print_config"):
        if option_source(ctx, name) != "DEFAULT":
            raise BadInput(f"--{name.replace('_', '-')} is for one run: drop it with --seeds")
    with _naming(config_file):
        planned = fanout.plan_seeds(request, fanout.parse_seeds(text), Workspace.at(workspace))
    if len(planned) > 1:
        cluster.check_reachable(ray_address)
    ws = writable_workspace(workspace)
    c = planned[0].config
    for note in planned[0].notes:  # every seed's run builds the same --like architecture
        say(f"note: {note}")
    if len(planned) == 1 and ray_address:  # one run trains in this process (`train_seeds`): no cluster to join
        say(f"note: one seed trains here, not on Ray: --ray-address {ray_address} is not used")
    where = "here" if len(planned) == 1 else f"on Ray at {ray_address}" if ray_address else "on Ray"
    say(f"seeds {text}: {len(planned)} run{'s' * (len(planned) > 1)} of {c.task}, controller {c.controller}, {c.epochs} "
        f"epoch{'s' * (c.epochs != 1)} on {c.device}, {where}")
    _note_idle(c)
    finished: set[str] = set()

    def on_done(run) -> None:
        if run.result is not None or run.error not in STOPPED:  # finished, or failed: nothing to resume
            finished.add(run.run_id)
        _print_seed_run(run, as_json)

    with _says_how_to_resume(ws, [p.run_id for p in planned], finished):
        done = fanout.train_seeds(planned, ws, on_done, ray_address)
    summary = fanout.summary(done)
    if as_json:
        for line in _seeds_table(text, summary).splitlines():
            say(line)
        print(json_text({"summary": summary}))
    else:
        print(_seeds_table(text, summary))
    if summary["failed"]:
        raise RunFailed(f"{summary['failed']} of {summary['runs']} runs failed (each log ends with RunFailed)")


def _print_seed_run(run, as_json: bool) -> None:
    if run.result is None:
        line = f"seed {run.seed:<4} {run.run_id}  failed: {run.error}"
    else:
        r = run.result
        line = (f"seed {run.seed:<4} {run.run_id}  test {r.test_accuracy * 100:6.2f}%  val {r.val_accuracy * 100:6.2f}%  "
                f"params {r.params:>7,}  {_stages(r.seeds)}")
    if not as_json:
        print(line, flush=True)
        return
    say(line)
    print(json_text(_result_json(run.run_id, run.result) if run.result else {"run_id": run.run_id, "error": run.error}),
          flush=True)


def _seeds_table(text: str, summary: dict) -> str:
    failed = f", {summary['failed']} failed" if summary["failed"] else ""
    return (f"seeds {text}: {summary['finished']} of {summary['runs']} finished{failed}\n"
            f"  test accuracy  {_mean_sd(summary['test_accuracy'], 100)} %\n"
            f"  val accuracy   {_mean_sd(summary['val_accuracy'], 100)} %\n"
            f"  params         {_mean_sd(summary['params'], digits=0)}")


def _mean_sd(stats: dict, scale: float = 1.0, digits: int = 2) -> str:
    """`mean ± sd` of a summary entry, scaled (100: percent); `-` without finished runs."""
    if stats["mean"] is None:
        return "-"
    text = f"{stats['mean'] * scale:,.{digits}f}"
    return text + (f" ± {stats['sd'] * scale:,.{digits}f}" if stats["sd"] is not None else "")
