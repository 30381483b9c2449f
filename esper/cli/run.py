"""`esper run`: one morphogenetic training run, logged as events."""

import json
import secrets
import sys
from pathlib import Path
from typing import Optional

import typer

from esper.cli.app import WorkspaceOption, app, existing_workspace, handles_errors, say, writable_workspace
from esper.errors import BadInput, StoreFailed
from esper.leyline.config import LifecycleConfig, RunConfig
from esper.leyline.stages import SeedStage
from esper.store import Recorder, Workspace
from esper.tamiyo.controllers import CONTROLLERS, heuristic_config, make_controller
from esper.tamiyo.observation import ObservationProjection
from esper.tolaria import checkpoint
from esper.tolaria.data import load_task_data
from esper.tolaria.loop import SNAPSHOT_EVERY, StoreSink, execute, resolve_config
from esper.tolaria.resume import open_resumption
from esper.tolaria.trainer import EpochStats, resolve_device


@app.command()
@handles_errors
def run(
    ctx: typer.Context,
    task: str = typer.Option("mnist1d", "--task", help="mnist1d (default) or cifar10."),
    controller: str = typer.Option("heuristic", "--controller", help=f"One of: {', '.join(CONTROLLERS)}."),
    policy: Optional[str] = typer.Option(None, "--policy", help="Policy file for --controller policy (greedy) or sampled (samples as in training, seeded by --seed)."),
    like: Optional[str] = typer.Option(None, "--like", help="For --controller scratch: the run whose final architecture to train from scratch."),
    epochs: int = typer.Option(0, "--epochs", help="Epoch budget (default: the task's preset, or the --like run's)."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and data order."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where cifar10 lives."),
    download: bool = typer.Option(False, "--download", help="Download cifar10 into --data-dir if missing."),
    telemetry: str = typer.Option("standard", "--telemetry", help="minimal, standard or diagnostic."),
    max_params: Optional[int] = typer.Option(
        None, "--max-params", help="Hard cap on the model's size: a germination that would exceed it is refused "
        "(default: no cap; with --controller policy or sampled, the cap the policy was trained under)."),
    anneal_epochs: Optional[int] = typer.Option(
        None, "--anneal-epochs", help="Lower every learning rate towards 0 over the last N epochs "
        "(default: the task's, 5 on mnist1d; 0: constant rates)."),
    heuristic: Optional[list[str]] = typer.Option(
        None, "--heuristic", help="A knob of the heuristic gardener, KEY=VALUE (repeatable), e.g. min_gain=1.0 to "
        "germinate as soon as the host has warmed up instead of on a plateau. Recorded in the run's config."),
    snapshot_every: int = typer.Option(
        SNAPSHOT_EVERY, "--snapshot-every", help="Store a snapshot of the run's state every N epochs, beside its "
        "events, so readers need not fold the log from zero (0: none). Changes no event."),
    checkpoint_every: int = typer.Option(
        1, "--checkpoint-every", help="Save the run's whole training state (model, optimizers, every RNG) every N "
        "epochs into the workspace's checkpoints/ folder, so that --resume can continue it (0: none)."),
    resume: Optional[str] = typer.Option(
        None, "--resume", help="Continue an interrupted run (Ctrl-C, SIGTERM, killed, crashed) from its latest "
        "checkpoint, with its own config: the rest of it is appended to its log."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the result on stdout."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Train one run on a task, growing it with the chosen controller; every step is an event."""
    if snapshot_every < 0:
        raise BadInput(f"--snapshot-every must be 0 (no snapshots) or a number of epochs, got {snapshot_every}")
    if checkpoint_every < 0:
        raise BadInput(f"--checkpoint-every must be 0 (no checkpoints) or a number of epochs, got {checkpoint_every}")
    if resume is not None:
        _refuse_config_options(ctx)
        run_id, result = _resume(resume, checkpoint_every, snapshot_every, workspace)
        _print_result(run_id, result, as_json)
        return
    ws = Workspace.at(workspace)
    architecture: list[tuple[str, str]] = []
    if controller == "scratch":
        if like is None:
            raise BadInput("--controller scratch needs --like RUN (the run whose final architecture to build)")
        like, architecture, like_epochs = _final_architecture(ws, like)
        epochs = epochs or like_epochs
    elif like is not None:
        raise BadInput("--like only makes sense with --controller scratch")
    if telemetry not in ("minimal", "standard", "diagnostic"):
        raise BadInput(f"unknown telemetry profile {telemetry!r}: use minimal, standard or diagnostic")
    if policy is not None and controller not in ("policy", "sampled"):
        raise BadInput("--policy is for --controller policy or sampled")
    if heuristic and controller != "heuristic":
        raise BadInput("--heuristic sets the knobs of --controller heuristic only")
    knobs = heuristic_config(heuristic or [])
    brain = make_controller(controller, seed, policy, knobs)
    if max_params is None:  # a trained policy brings the cap it learned under
        max_params = getattr(brain, "max_params", 0)
    config = resolve_config(RunConfig(
        task=task, controller=controller, seed=seed, epochs=epochs, device=device, policy=policy, like=like,
        data_dir=data_dir, telemetry=telemetry, architecture=architecture,
        lifecycle=LifecycleConfig(max_params=max_params), heuristic=knobs, anneal_epochs=anneal_epochs,
    ))
    resolve_device(device)
    data = load_task_data(task, config.data_seed, data_dir, download=download)  # bad input fails before any log exists
    ws = writable_workspace(workspace)
    run_id = f"{task}-{controller}-{seed}-{secrets.token_hex(3)}"
    cap = f", at most {max_params:,} params" if max_params else ""
    annealed = min(config.anneal_epochs, config.epochs)
    anneal = f" (rates annealed over the last {annealed})" if annealed else ""
    say(f"run {run_id}: {task}, controller {controller}, seed {seed}, {config.epochs} epochs{anneal} on {device}{cap}")
    with Recorder(ws.store_path(run_id)) as recorder:
        sink = StoreSink(recorder, run_id, snapshot_every=snapshot_every)
        try:
            result = execute(config, brain, sink, progress=_progress(config.epochs), data=data,
                             checkpoint_folder=checkpoint.folder_of(ws.root), checkpoint_every=checkpoint_every)
        except StoreFailed as exc:
            stored = sink.last_epoch is not None  # its RunStarted at least
            raise exc.adding(then=f"run esper run --resume {run_id}" if stored else "run it again") from None
    _print_result(run_id, result, as_json)


RESUME_OPTIONS = ("resume", "checkpoint_every", "snapshot_every", "as_json", "workspace")
"""What `--resume` takes besides the run: how the rest of it is written and printed, never its config."""


def _refuse_config_options(ctx: typer.Context) -> None:
    given = [f"--{name.replace('_', '-')}" for name in ctx.params if name not in RESUME_OPTIONS
             and getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"]
    if given:
        raise BadInput(f"--resume continues the run with its own config: drop {', '.join(given)}")


def _resume(run: str, checkpoint_every: int, snapshot_every: int, workspace: Optional[Path]):
    with open_resumption(existing_workspace(workspace), run, checkpoint_every, snapshot_every) as resumption:
        for note in resumption.passed_over:
            say(f"note: passed over the checkpoint of {note}")
        say(resumption.describe())
        result = resumption.train(progress=_progress(resumption.session.config.epochs))
    return resumption.run_id, result


def _print_result(run_id: str, result, as_json: bool) -> None:
    table = _closing_table(run_id, result)
    if as_json:
        say(table)
        print(json.dumps({"run_id": run_id, "val_accuracy": result.val_accuracy, "test_accuracy": result.test_accuracy,
                          "params": result.params, "seeds": result.seeds}))
    else:
        print(table)


def _progress(total: int):
    def report(epoch: int, stats: EpochStats, projection: ObservationProjection, issued) -> None:
        live = [s for s in projection.garden.seeds.values() if s.stage.value in ("GERMINATED", "TRAINING", "BLENDING")]
        seeds = ", ".join(
            f"{s.seed_id}:{s.blueprint} {s.stage.value.lower()}" + (f" α={s.telemetry.alpha:.2f}" if s.stage is SeedStage.BLENDING and s.telemetry else "")
            for s in live
        ) or "-"
        cmd = type(issued.command).__name__
        say(f"[{epoch:>3}/{total}] val {stats.val_accuracy * 100:5.1f}%  loss {stats.train_loss:.3f}  "
            f"params {stats.params:>7,}  seeds {seeds}  → {cmd}")

    return report


def _closing_table(run_id: str, result) -> str:
    stages = ", ".join(f"{n} {stage.lower()}" for stage, n in sorted(result.seeds.items())) or "no seeds"
    return (
        f"run {run_id}\n"
        f"  val accuracy   {result.val_accuracy * 100:6.2f}%\n"
        f"  test accuracy  {result.test_accuracy * 100:6.2f}%\n"
        f"  params         {result.params:,}\n"
        f"  seeds          {stages}\n"
        f"  replay with    esper replay {run_id}"
    )


def _final_architecture(ws: Workspace, like: str) -> tuple[str, list[tuple[str, str]], int]:
    """The run id, fossilized (slot, blueprint) in fossilization order, and epoch budget of run `like`. Read
    with its chain checked and folded from zero (not from a snapshot, whose state no hash covers): the
    architecture a baseline builds is what the log, re-judged, says grew."""
    from esper.nissa.runstate import RunState

    with ws.reader() as reader:
        run_id = reader.resolve_run(like)
        reader.check_run(run_id)
        state = RunState.fold(reader.read_run(run_id))
    # Fossils in the order they fossilized; seeds built up front (epoch 0, `build` events) are among them. A log
    # written before `build` existed built its config's architecture without events: those come first.
    fossilized = sorted(
        (epoch, order, seed.slot, seed.blueprint)
        for order, seed in enumerate(state.garden.seeds.values())
        for epoch, stage in seed.history if stage is SeedStage.FOSSILIZED
    )
    unlogged = [] if state.garden.built else list(state.config.architecture)
    architecture = unlogged + [(slot, bp) for _, _, slot, bp in fossilized]
    return run_id, [tuple(a) for a in architecture], state.config.epochs
