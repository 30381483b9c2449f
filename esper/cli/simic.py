"""`esper ppo` and `esper iql`: train a Tamiyo policy online over vectorized runs, or offline from logs.

Every default comes from the learner's config struct (`esper.simic.config`); the jobs themselves are the
application layer's (`esper.app.learners`): this module parses and prints."""

from pathlib import Path
from typing import Optional

import typer

from esper.cli.app import (RayAddress, WorkspaceOption, app, existing_workspace, handles_errors, json_text,
                           option_source, path_option, say, writable_workspace)
from esper.errors import BadInput, StoreFailed
from esper.simic.config import IQLConfig, PPOConfig
from esper.simic.rewards import RewardConfig
from esper.store.workspace import RUNS_COLUMNS
from esper.tolaria.tasks import TASKS

PPO, IQL, REWARD = PPOConfig(), IQLConfig(), RewardConfig()
RewardAccuracy = typer.Option(REWARD.accuracy, "--reward-accuracy", help="Weight of the change in validation accuracy.")
RewardContribution = typer.Option(REWARD.contribution, "--reward-contribution",
                                  help="Weight of a seed's contribution when it fossilizes.")
RewardParams = typer.Option(REWARD.params, "--reward-params",
                            help="Weight of the parameter cost, log(params / host params): the accuracy/size trade-off.")
RewardTerminal = typer.Option(REWARD.terminal, "--reward-terminal", help="Weight of the final validation accuracy.")
ParamBudget = typer.Option(REWARD.param_budget, "--param-budget",
                           help="Parameters (host included) that cost nothing; --reward-params charges only growth "
                                "beyond them (0: no budget).")


def _devices(text: str) -> tuple[str, ...]:
    """The devices of `--devices`, in order; an empty name (`--devices ''`, `cpu,,cuda`) is bad input, not cpu."""
    devices = tuple(d.strip() for d in text.split(","))
    if not all(devices):
        raise BadInput(f"--devices {text!r} names an empty device: give comma-separated devices, e.g. cpu or cuda:0,cuda:1")
    return devices


def _rewards(accuracy: float, contribution: float, params: float, terminal: float, budget: int) -> RewardConfig:
    return RewardConfig(accuracy=accuracy, contribution=contribution, params=params, terminal=terminal, param_budget=budget)


RESUME_OPTIONS = {"out", "episodes", "workers", "ray_address", "resume", "as_json", "workspace"}
"""What `esper ppo --resume` takes from the command line (--workers changes no decision); every other setting is the
checkpoint's."""


def _refuse_changed_settings(ctx: typer.Context, cfg: PPOConfig, out: Path) -> None:
    """A setting given with --resume that is not the checkpoint's would silently not apply: say so rather than train
    on without it. One the job already has (the first command again, with --resume) is no change."""
    from esper.simic.ppo import checkpoint_config

    given = [name for name in ctx.params if name not in RESUME_OPTIONS and option_source(ctx, name) == "COMMANDLINE"]
    if not given or not out.is_file():  # no checkpoint: the job says so
        return
    job = checkpoint_config(out)
    changed = [f"--{name.replace('_', '-')}" for name in given if _setting(cfg, name) != _setting(job, name)]
    if changed:
        raise BadInput(f"--resume continues with the checkpoint's own settings; drop {', '.join(changed)} "
                       "(only --episodes and --workers change), or start a new job with --init")


def _setting(cfg: PPOConfig, name: str) -> object:
    """What the ppo option `name` sets in a job's config (an option that sets none, such as --init, is never the
    job's own)."""
    if name == "lr":
        return cfg.learning_rate
    if name == "param_budget" or name.startswith("reward_"):
        return getattr(cfg.reward, name.removeprefix("reward_"))
    return getattr(cfg, name, object())


@app.command()
@handles_errors
def ppo(
    ctx: typer.Context,
    out: Path = path_option(..., "--out", help="Policy file to write (also the checkpoint, after every update)."),
    task: str = typer.Option(PPO.task, "--task", help="Task of the training runs."),
    n_envs: int = typer.Option(PPO.n_envs, "--n-envs", help="Runs in lock-step per update."),
    episodes: int = typer.Option(PPO.episodes, "--episodes", help="Episodes (training runs) in all."),
    epochs: int = typer.Option(PPO.epochs, "--epochs", help="Epochs per episode (default: the task's preset)."),
    seed: int = typer.Option(PPO.seed, "--seed", help="Seed of the policy and of the runs' seeds."),
    devices: str = typer.Option(",".join(PPO.devices), "--devices", help="Comma-separated devices, used round-robin (cpu, cuda, cuda:N)."),
    workers: int = typer.Option(PPO.workers, "--workers", help="Ray workers that play each update's episodes (a CPU run "
                                "trains on one thread: give the cores you can spare). Changes no decision, only the time."),
    ray_address: Optional[str] = RayAddress,
    telemetry: str = typer.Option(PPO.telemetry, "--telemetry", help="Telemetry profile of the runs."),
    lr: float = typer.Option(PPO.learning_rate, "--lr", help="Adam learning rate."),
    hidden: int = typer.Option(PPO.hidden, "--hidden", help="Width of the policy's hidden layers."),
    update_epochs: int = typer.Option(PPO.update_epochs, "--update-epochs", help="Passes over each batch."),
    minibatches: int = typer.Option(PPO.minibatches, "--minibatches", help="Minibatches per pass over the collected "
                                    "transitions (at most one per transition)."),
    ent_coef: float = typer.Option(PPO.ent_coef, "--ent-coef", help="Entropy bonus."),
    target_kl: float = typer.Option(PPO.target_kl or 0.0, "--target-kl", help="Early-stop KL per update (0: none)."),
    gamma: float = typer.Option(PPO.gamma, "--gamma", help="Discount per epoch."),
    reward_accuracy: float = RewardAccuracy,
    reward_contribution: float = RewardContribution,
    reward_params: float = RewardParams,
    reward_terminal: float = RewardTerminal,
    param_budget: int = ParamBudget,
    init: Optional[Path] = path_option(None, "--init", help="Start from this policy file (e.g. written by `esper iql`)."),
    init_temperature: float = typer.Option(PPO.init_temperature, "--init-temperature", help="With --init: divide the starting "
                                           "policy's logits by this (same greedy choices, flatter sampling: more exploration)."),
    critic_warmup: int = typer.Option(PPO.critic_warmup, "--critic-warmup",
                                      help="First updates that train only the critic (useful with --init)."),
    max_params: int = typer.Option(PPO.max_params, "--max-params", help="Hard cap on the runs' size: germinations that would "
                                   "exceed it are masked (0: none). The policy file keeps it for `esper run`."),
    select_every: int = typer.Option(PPO.select_every, "--select-every", help="Checkpoint selection: every N updates (and before "
                                     "the first) score the greedy policy on --select-runs runs; --out keeps the best (0: the latest)."),
    select_runs: int = typer.Option(PPO.select_runs, "--select-runs", help="Runs of their own seeds that score the greedy policy."),
    resume: bool = typer.Option(False, "--resume", help="Continue the checkpoint at --out up to --episodes in all."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the result on stdout."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Train a policy with PPO over vectorized morphogenetic training runs; every episode is logged."""
    from esper.app.learners import ppo_job

    if not resume and out.is_file():  # a trained policy is never replaced by a forgotten --resume
        raise BadInput(f"{out} already exists: if it is an esper ppo checkpoint, --resume continues its job; for a new "
                       "job give another --out or remove that file")
    if resume and option_source(ctx, "episodes") != "COMMANDLINE":
        episodes = 0  # on to the total the job was started with
    cfg = PPOConfig(
        task=task, n_envs=n_envs, episodes=episodes, epochs=epochs, seed=seed,
        devices=_devices(devices), telemetry=telemetry,
        learning_rate=lr, hidden=hidden, update_epochs=update_epochs, minibatches=minibatches, ent_coef=ent_coef,
        target_kl=target_kl or None, gamma=gamma,
        reward=_rewards(reward_accuracy, reward_contribution, reward_params, reward_terminal, param_budget),
        critic_warmup=critic_warmup, init_temperature=init_temperature, max_params=max_params,
        select_every=select_every, select_runs=select_runs, workers=workers,
    )
    if resume:
        _refuse_changed_settings(ctx, cfg, out)
    if ray_address is not None and workers <= 1:
        raise BadInput("--ray-address is for --workers N with N > 1 (one worker plays here, without Ray)")
    if option_source(ctx, "select_runs") == "COMMANDLINE" and not select_every and not resume:  # (with --resume, the checkpoint's settings are checked above)
        raise BadInput("--select-runs is how many runs checkpoint selection plays: turn selection on with "
                       "--select-every N")
    try:
        result = ppo_job(cfg, out, writable_workspace(workspace), init=init, resume=resume, progress=say,
                         ray_address=ray_address)
    except StoreFailed as exc:  # what one episode's log held matters not: --resume plays its update again
        again = f"run esper ppo --out {out} --resume" if out.is_file() else "run it again"
        raise exc.adding(held="", then=again) from None
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the checkpoint of the last whole update is there to go on from
        if out.is_file():
            say(f"note: esper ppo --out {out} --resume continues the job (its update under way is played again)")
        raise
    stats = result["stats"]
    if as_json:
        print(json_text({k: v for k, v in result.items() if k != "stats"} | {"last_update": stats}))
        return
    lines = [f"policy {out}", f"  updates        {result['updates']}", f"  episodes       {result['episodes']}",
             f"  last return    {stats.get('return', float('nan')):+.4f}",
             f"  last val acc   {stats.get('val_accuracy', float('nan')) * 100:6.2f}%",
             f"  episode runs   {result['runs']} in {result['episode_stores']}"]
    if result["kept_update"] is not None:
        lines.append(f"  kept policy    after update {result['kept_update']} (best greedy return on the selection runs)")
        lines.append(f"  selection runs {result['runs'].removesuffix('-u*')}-select-*")
    print("\n".join(lines + [f"  run it with    {_run_it(task, out)}"]))


@app.command()
@handles_errors
def iql(
    out: Path = path_option(..., "--out", help="Policy file to write."),
    steps: int = typer.Option(IQL.steps, "--steps", help="Gradient steps."),
    runs: Optional[str] = typer.Option(
        None, "--runs",
        help=f"SQL condition choosing runs, over the columns of the `runs` view ({', '.join(RUNS_COLUMNS)}); "
             "e.g. \"controller IN ('heuristic', 'random')\"; it narrows the runs of --task. Default: every run of it.",
    ),
    task: str = typer.Option(IQL.task, "--task", help="Task whose runs make the dataset."),
    batch_size: int = typer.Option(IQL.batch_size, "--batch-size", help="Transitions per gradient step."),
    lr: float = typer.Option(IQL.learning_rate, "--lr", help="Adam learning rate."),
    expectile: float = typer.Option(IQL.expectile, "--expectile", help="τ of the value's expectile regression."),
    temperature: float = typer.Option(IQL.temperature, "--temperature", help="β of the advantage weights."),
    gamma: float = typer.Option(IQL.gamma, "--gamma", help="Discount per epoch."),
    hidden: int = typer.Option(IQL.hidden, "--hidden", help="Width of the hidden layers."),
    seed: int = typer.Option(IQL.seed, "--seed", help="Seed of initialisation and sampling."),
    reward_accuracy: float = RewardAccuracy,
    reward_contribution: float = RewardContribution,
    reward_params: float = RewardParams,
    reward_terminal: float = RewardTerminal,
    param_budget: int = ParamBudget,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the result on stdout."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Train a policy offline with IQL from the runs in the workspace (heuristic, random, PPO ...)."""
    from esper.app.learners import iql_job

    if out.is_file():  # as for ppo: a policy (or a PPO job's checkpoint, which resumes it) is never replaced
        raise BadInput(f"{out} already exists: give another --out, or remove that file")
    cfg = IQLConfig(task=task, steps=steps, batch_size=batch_size, learning_rate=lr, expectile=expectile,
                    temperature=temperature, gamma=gamma, hidden=hidden, seed=seed,
                    reward=_rewards(reward_accuracy, reward_contribution, reward_params, reward_terminal, param_budget))
    summary = iql_job(cfg, out, existing_workspace(workspace), runs, progress=say)
    if as_json:
        print(json_text(summary))
        return
    print(f"policy {out}\n  runs           {summary['runs']}\n  transitions    {summary['transitions']}\n"
          f"  steps          {steps}\n  run it with    {_run_it(task, out)}")


def _run_it(task: str, out: Path) -> str:
    """The command (or, for a task of the user's own model, the call) that runs a trained policy on its task."""
    if task not in TASKS:
        return f"esper.fit(..., task={task!r}, controller='policy', policy={str(out)!r})"
    return "esper run " + ("" if task == "mnist1d" else f"--task {task} ") + f"--controller policy --policy {out}"
