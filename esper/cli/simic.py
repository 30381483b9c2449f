"""`esper ppo` and `esper iql`: train a Tamiyo policy online over vectorized runs, or offline from logs."""

import json
import os
import secrets
from pathlib import Path
from typing import Optional

import typer

from esper.cli.app import WorkspaceOption, app, existing_workspace, handles_errors, say, writable_workspace
from esper.errors import BadInput, StoreFailed
from esper.simic.rewards import RewardConfig
from esper.store.workspace import RUNS_COLUMNS

DEFAULT_REWARD = RewardConfig()
RewardAccuracy = typer.Option(DEFAULT_REWARD.accuracy, "--reward-accuracy", help="Weight of the change in validation accuracy.")
RewardContribution = typer.Option(DEFAULT_REWARD.contribution, "--reward-contribution",
                                  help="Weight of a seed's contribution when it fossilizes.")
RewardParams = typer.Option(DEFAULT_REWARD.params, "--reward-params",
                            help="Weight of the parameter cost, log(params / host params): the accuracy/size trade-off.")
RewardTerminal = typer.Option(DEFAULT_REWARD.terminal, "--reward-terminal", help="Weight of the final validation accuracy.")
ParamBudget = typer.Option(DEFAULT_REWARD.param_budget, "--param-budget",
                           help="Parameters (host included) that cost nothing; --reward-params charges only growth "
                                "beyond them (0: no budget).")


def _rewards(accuracy: float, contribution: float, params: float, terminal: float, budget: int) -> RewardConfig:
    return RewardConfig(accuracy=accuracy, contribution=contribution, params=params, terminal=terminal, param_budget=budget)


RESUME_OPTIONS = {"out", "episodes", "workers", "resume", "as_json", "workspace"}
"""What `esper ppo --resume` takes from the command line (--workers changes no decision); every other setting is the
checkpoint's."""


def _refuse_ignored_settings(ctx: typer.Context) -> None:
    """A setting given with --resume would silently not apply: say so rather than train on without it."""
    given = [f"--{name.replace('_', '-')}" for name in ctx.params  # by the source's name: typer may bundle its click
             if name not in RESUME_OPTIONS and getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"]
    if given:
        raise BadInput(f"--resume continues with the checkpoint's own settings; drop {', '.join(given)} "
                       "(only --episodes and --workers change), or start a new job with --init")


def _output(out: Path) -> Path:
    """The policy file's path, checked before any training: it must be writable."""
    from esper.nissa.files import check_writable

    if os.path.isdir(out):
        raise BadInput(f"--out {out} is a folder; give the policy file's path, e.g. {out / 'policy.pt'}")
    return check_writable(out)


@app.command()
@handles_errors
def ppo(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="Policy file to write (also the checkpoint, after every update)."),
    task: str = typer.Option("mnist1d", "--task", help="Task of the training runs."),
    n_envs: int = typer.Option(4, "--n-envs", help="Runs in lock-step per update."),
    episodes: int = typer.Option(8, "--episodes", help="Episodes (training runs) in all."),
    epochs: int = typer.Option(0, "--epochs", help="Epochs per episode (default: the task's preset)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the policy and of the runs' seeds."),
    devices: str = typer.Option("cpu", "--devices", help="Comma-separated devices, used round-robin (cpu, cuda, cuda:N)."),
    workers: int = typer.Option(1, "--workers", help="Processes that play each update's episodes (a CPU run trains "
                                "on one thread: give the cores you can spare). Changes no decision, only the time."),
    telemetry: str = typer.Option("minimal", "--telemetry", help="Telemetry profile of the runs."),
    lr: float = typer.Option(5e-4, "--lr", help="Adam learning rate."),
    hidden: int = typer.Option(64, "--hidden", help="Width of the policy's hidden layers."),
    update_epochs: int = typer.Option(4, "--update-epochs", help="Passes over each batch."),
    minibatches: int = typer.Option(4, "--minibatches", help="Minibatches per pass."),
    ent_coef: float = typer.Option(0.01, "--ent-coef", help="Entropy bonus."),
    target_kl: float = typer.Option(0.03, "--target-kl", help="Early-stop KL per update (0: none)."),
    gamma: float = typer.Option(0.99, "--gamma", help="Discount per epoch."),
    reward_accuracy: float = RewardAccuracy,
    reward_contribution: float = RewardContribution,
    reward_params: float = RewardParams,
    reward_terminal: float = RewardTerminal,
    param_budget: int = ParamBudget,
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this policy file (e.g. written by `esper iql`)."),
    init_temperature: float = typer.Option(1.0, "--init-temperature", help="With --init: divide the starting "
                                           "policy's logits by this (same greedy choices, flatter sampling: more exploration)."),
    critic_warmup: int = typer.Option(0, "--critic-warmup",
                                      help="First updates that train only the critic (useful with --init)."),
    max_params: int = typer.Option(0, "--max-params", help="Hard cap on the runs' size: germinations that would "
                                   "exceed it are masked (0: none). The policy file keeps it for `esper run`."),
    select_every: int = typer.Option(0, "--select-every", help="Checkpoint selection: every N updates (and before "
                                     "the first) score the greedy policy on --select-runs runs; --out keeps the best (0: the latest)."),
    select_runs: int = typer.Option(4, "--select-runs", help="Runs of their own seeds that score the greedy policy."),
    resume: bool = typer.Option(False, "--resume", help="Continue the checkpoint at --out up to --episodes in all."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the result on stdout."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Train a policy with PPO over vectorized morphogenetic training runs; every episode is logged."""
    from esper.simic.ppo import PPOConfig, train

    out = _output(out)
    if resume and not out.is_file():
        raise BadInput(f"--resume: no checkpoint at {out}")
    if resume:
        _refuse_ignored_settings(ctx)
        if getattr(ctx.get_parameter_source("episodes"), "name", "") != "COMMANDLINE":
            episodes = 0  # on to the total the job was started with
    cfg = PPOConfig(
        task=task, n_envs=n_envs, episodes=episodes, epochs=epochs, seed=seed,
        devices=tuple(d.strip() for d in devices.split(",") if d.strip()) or ("cpu",), telemetry=telemetry,
        learning_rate=lr, hidden=hidden, update_epochs=update_epochs, minibatches=minibatches, ent_coef=ent_coef,
        target_kl=target_kl or None, gamma=gamma,
        reward=_rewards(reward_accuracy, reward_contribution, reward_params, reward_terminal, param_budget),
        critic_warmup=critic_warmup, init_temperature=init_temperature, max_params=max_params,
        select_every=select_every, select_runs=select_runs, workers=workers,
    )
    try:
        result = train(cfg, out, writable_workspace(workspace), init=init, resume=resume, progress=say)
    except StoreFailed as exc:  # what one episode's log held matters not: --resume plays its update again
        again = f"run esper ppo --out {out} --resume" if out.is_file() else "run it again"
        raise exc.adding(held="", then=again) from None
    stats = result["stats"]
    if as_json:
        print(json.dumps({k: v for k, v in result.items() if k != "stats"} | {"last_update": stats}))
        return
    lines = [f"policy {out}", f"  updates        {result['updates']}", f"  episodes       {result['episodes']}",
             f"  last return    {stats.get('return', float('nan')):+.4f}",
             f"  last val acc   {stats.get('val_accuracy', float('nan')) * 100:6.2f}%",
             f"  episodes       runs {result['runs']} in {result['store']}"]
    if result["kept_update"] is not None:
        lines.append(f"  kept policy    after update {result['kept_update']} (best greedy return on the selection runs)")
        lines.append(f"  selection runs {result['runs'].removesuffix('-u*')}-select-*")
    print("\n".join(lines + [f"  run it with    {_run_it(task, out)}"]))


@app.command()
@handles_errors
def iql(
    out: Path = typer.Option(..., "--out", help="Policy file to write."),
    steps: int = typer.Option(10_000, "--steps", help="Gradient steps."),
    runs: Optional[str] = typer.Option(
        None, "--runs",
        help=f"SQL condition choosing runs, over the columns of the `runs` view ({', '.join(RUNS_COLUMNS)}); "
             "e.g. \"controller IN ('heuristic', 'random')\". Default: every run of --task.",
    ),
    task: str = typer.Option("mnist1d", "--task", help="Task whose runs make the dataset."),
    batch_size: int = typer.Option(256, "--batch-size", help="Transitions per gradient step."),
    lr: float = typer.Option(3e-4, "--lr", help="Adam learning rate."),
    expectile: float = typer.Option(0.7, "--expectile", help="τ of the value's expectile regression."),
    temperature: float = typer.Option(3.0, "--temperature", help="β of the advantage weights."),
    gamma: float = typer.Option(0.99, "--gamma", help="Discount per epoch."),
    hidden: int = typer.Option(64, "--hidden", help="Width of the hidden layers."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and sampling."),
    reward_accuracy: float = RewardAccuracy,
    reward_contribution: float = RewardContribution,
    reward_params: float = RewardParams,
    reward_terminal: float = RewardTerminal,
    param_budget: int = ParamBudget,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the result on stdout."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Train a policy offline with IQL from the runs in the workspace (heuristic, random, PPO ...)."""
    from esper.simic.dataset import select_runs, workspace_episodes
    from esper.simic.features import spec_for_run, spec_for_task
    from esper.simic.iql import IQLConfig, check, train
    from esper.tolaria.tasks import TASKS
    from esper.simic.policy import save_policy, saved
    from esper.store import Recorder
    from esper.store.recorder import remove_if_empty
    from esper.tolaria.loop import StoreSink

    out = _output(out)
    cfg = IQLConfig(task=task, steps=steps, batch_size=batch_size, learning_rate=lr, expectile=expectile,
                    temperature=temperature, gamma=gamma, hidden=hidden, seed=seed,
                    reward=_rewards(reward_accuracy, reward_contribution, reward_params, reward_terminal, param_budget))
    check(cfg)
    spec = spec_for_task(task) if task in TASKS else None
    ws = existing_workspace(workspace)
    with ws.reader() as reader:
        for note in reader.notes:
            say(f"note: {note}")
        run_ids = select_runs(reader, runs, task)
        if spec is None and run_ids:  # a task of user code (`esper.fit`): its first run says what grew
            spec = spec_for_run(reader.read_run(run_ids[0])[0].event)
        episodes, notes = workspace_episodes(reader, run_ids, spec, cfg.reward)
    for note in notes:
        say(f"note: skipped {note}")
    if not episodes:
        raise BadInput(f"no usable runs of {task} in {ws.root}" + (f" where {runs}" if runs else "") +
                       ": the dataset is empty (check --runs and --task)")
    say(f"iql: dataset of {len(episodes)} runs from {ws.root}" + (f" where {runs}" if runs else ""))
    learner_id = f"iql-{secrets.token_hex(3)}"
    store = ws.store_path(learner_id)
    try:
        with Recorder(store) as recorder:
            sink = StoreSink(recorder, learner_id)
            net, result = train(cfg, spec, episodes, sink=sink, progress=say)
            save_policy(out, net, "iql", cfg.reward, cfg.hidden)
            sink.append([saved(out, steps, sources=[e.run_id for e in episodes])])  # which file, from which runs
    except BaseException:  # stopped before its first update was logged: no empty store is left in the workspace
        remove_if_empty(store)
        raise
    summary = {"out": str(out), "learner": learner_id, "runs": result["runs"], "transitions": result["transitions"],
               "seconds": result["seconds"], "last": result["stats"]}
    if as_json:
        print(json.dumps(summary))
        return
    print(f"policy {out}\n  runs           {result['runs']}\n  transitions    {result['transitions']}\n"
          f"  steps          {steps}\n  run it with    {_run_it(task, out)}")


def _run_it(task: str, out: Path) -> str:
    """The command that runs a trained policy on its task."""
    return "esper run " + ("" if task == "mnist1d" else f"--task {task} ") + f"--controller policy --policy {out}"
