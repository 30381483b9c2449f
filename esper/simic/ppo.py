"""PPO over vectorized morphogenetic training runs (Schulman et al. 2017, in the manner of CleanRL's ppo.py).

One update, top to bottom:
1. play `n_envs` episodes in lock-step (`esper.simic.env.VecEnv`), sampling the policy's masked
   heads; every decision is a `CommandIssued` carrying the action's log-probability, the value estimate
   and the masks, appended to this job's store file. With `workers` > 1 the episodes are split over as
   many Ray tasks, each writing a store file of its own, which changes no decision (`esper.simic.rollout`);
2. read those episodes back from the store and build the batch with the dataset projection IQL uses
   (`esper.simic.dataset`): what PPO learns from is exactly what is on disk;
3. GAE(γ, λ) advantages and returns from the logged values; the runs of one update share their seed,
   so each advantage is taken relative to the other runs' at the same epoch (`centre_per_step`);
4. a few epochs of minibatch updates of the clipped objective, value loss and entropy bonus, with
   gradient clipping and an early stop when the approximate KL passes `target_kl`;
5. log `PolicyUpdated` (approx_kl, clipfrac, explained variance, entropy, environment steps/s, reward
   components and weights, whether the actor was frozen for the critic's warm-up) and write the
   checkpoint, which is also the policy file;
6. with `select_every`: every that many updates (and once before the first), play the greedy policy on
   the job's fixed selection runs (on the workers too) and keep the best-scoring policy as the file's
   policy (checkpoint selection); the checkpoint still resumes from the latest weights.

Episodes of update u train with run seed `TRAIN_SEEDS + 100_000 * seed + u`, selection run i with
`TRAIN_SEEDS + 100_000 * seed + SELECT_OFFSET + i`: seeds below 1000 are never trained on or selected
with, so evaluations on them are on unseen runs.
"""

import contextlib
import copy
import hashlib
import math
import secrets
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import attrs
import msgspec
import numpy as np
import torch
import torch.nn.functional as F

from esper.errors import BadInput, EsperError
from esper.leyline.config import LifecycleConfig, RunConfig
from esper.leyline.events import PolicyUpdated
from esper.nissa.fmt import plural
from esper.simic.dataset import Episode, batch, replay_episode
from esper.simic.env import configs_round_robin
from esper.simic.features import FeatureSpec, spec_for_task, task_of
from esper.simic.policy import PolicyNet, reason, check_training, load_policy, save_policy, saved, weights_finite
from esper.simic.config import PPOConfig
from esper.simic.rewards import COMPONENTS, RewardConfig
from esper.simic.rollout import Players, RayPlayers, episode_generators, open_players
from esper.store import Workspace
from esper.store.recorder import Recorded, new_store, signals_held
from esper.tolaria import cluster
from esper.tolaria.data import load_task_data
from esper.tolaria.loop import StoreSink, resolve_config
from esper.tolaria.tasks import get_task
from esper.tolaria.trainer import resolve_device

TRAIN_SEEDS = 1000
SELECT_OFFSET = 90_000
"""Offset of the selection runs' seeds in a job's block of 100,000 run seeds (the rollouts count up from 0)."""
MAX_JOB_SEED = 1_000_000
"""A job's run seeds (`TRAIN_SEEDS + 100_000 * seed + ...`) stay below `esper.tolaria.loop.MAX_SEED`."""


# ---- 2.–3. the batch, advantages -------------------------------------------------------------------


def read_batch(runs: Sequence[tuple[str, Sequence[Recorded]]], spec: FeatureSpec,
               rewards: RewardConfig) -> tuple[list[Episode], dict[str, torch.Tensor]]:
    """The episodes just played, as their stores hold them ((run id, records) each), through the dataset projection."""
    episodes = [replay_episode(records, spec, rewards, run_id) for run_id, records in runs]
    episodes = [e for e in episodes if len(e)]
    if not episodes:
        raise BadInput("no episode finished a single step: nothing to learn from (are epochs at least 1?)")
    b = batch(episodes)
    b["step"] = torch.from_numpy(np.concatenate([np.arange(len(e)) for e in episodes]))
    b["last"] = b["step"] == torch.from_numpy(np.concatenate([np.full(len(e), len(e) - 1) for e in episodes]))
    return episodes, b


def advantages(b: dict[str, torch.Tensor], net: PolicyNet, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over a batch of whole episodes laid end to end. Values are the ones logged while playing; an
    episode cut short (its run failed) bootstraps from the critic's value of its next observation."""
    reward, value, done, last = b["reward"], b["value"], b["done"].float(), b["last"]
    with torch.no_grad():
        bootstrap = net.value(b["next_obs"])
    next_value = torch.where(last, bootstrap, torch.roll(value, -1)) * (1.0 - done)
    delta = reward + gamma * next_value - value
    adv = torch.zeros_like(reward)
    running = torch.zeros(())
    for t in reversed(range(len(reward))):
        running = delta[t] + gamma * lam * (0.0 if last[t] else 1.0) * running
        adv[t] = running
    return adv, adv + value


def centre_per_step(adv: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Each advantage minus the mean advantage of the other episodes at the same step (leave-one-out).

    The episodes of one update are runs of the same seed: the same initial weights and data order. A
    seed's luck moves all their returns together, and the critic, which sees one run, cannot tell luck
    from a good choice; the other episodes at the same epoch can. Their advantages do not depend on this
    episode's actions, so the policy gradient stays unbiased. A step that one episode alone reached keeps
    its advantage."""
    out = adv.clone()
    for t in step.unique():
        rows = step == t
        n = int(rows.sum())
        if n > 1:
            out[rows] = adv[rows] - (adv[rows].sum() - adv[rows]) / (n - 1)
    return out


# ---- 4. the update ---------------------------------------------------------------------------------


def ppo_loss(net: PolicyNet, mb: dict[str, torch.Tensor], cfg: PPOConfig,
             actor: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate, value loss and entropy bonus of one minibatch (keys of `read_batch` plus
    `advantages`, `returns`); with `actor` False the value loss alone (the critic's warm-up)."""
    _, new_log_prob, entropy = net.act(mb["obs"], mb["mask"], action=mb["action"])
    new_value = net.value(mb["obs"])
    log_ratio = new_log_prob - mb["log_prob"]
    ratio = log_ratio.exp()
    adv = mb["advantages"]
    if cfg.norm_adv and len(adv) > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
    v_loss = 0.5 * F.mse_loss(new_value, mb["returns"])
    entropy_mean = entropy.mean()
    loss = cfg.vf_coef * v_loss
    if actor:
        loss = loss + pg_loss - cfg.ent_coef * entropy_mean
    with torch.no_grad():
        stats = {
            "approx_kl": ((ratio - 1) - log_ratio).mean(),
            "clipfrac": ((ratio - 1).abs() > cfg.clip_coef).float().mean(),
            "policy_loss": pg_loss.detach(), "value_loss": v_loss.detach(), "entropy": entropy_mean.detach(),
        }
    return loss, stats


def update(net: PolicyNet, optimizer: torch.optim.Optimizer, b: dict[str, torch.Tensor], cfg: PPOConfig,
           generator: torch.Generator, actor: bool = True) -> dict[str, float]:
    """Minibatch passes over batch `b` (with `advantages` and `returns`); the update's health numbers.
    With `actor` False only the critic learns."""
    n = len(b["reward"])
    size = max(1, math.ceil(n / cfg.minibatches))
    totals: dict[str, float] = {}
    count = 0
    for _ in range(cfg.update_epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, size):
            mb = {k: v[order[start : start + size]] for k, v in b.items()}
            loss, stats = ppo_loss(net, mb, cfg, actor)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
            optimizer.step()
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            count += 1
            last_kl = float(stats["approx_kl"])
        if cfg.target_kl is not None and last_kl > cfg.target_kl:
            break
    out = {k: v / count for k, v in totals.items()}
    out["approx_kl"] = last_kl  # the KL at the end of the update, the one the early stop judged
    out["passes"] = float(count)
    returns, values = b["returns"], b["value"]
    var = float(returns.var()) if n > 1 else 0.0
    out["explained_variance"] = float("nan") if var == 0.0 else 1.0 - float((returns - values).var()) / var
    return out


# ---- 5. the job --------------------------------------------------------------------------------------


def make_net(spec: FeatureSpec, hidden: int, seed: int) -> PolicyNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PolicyNet(spec, hidden)


def soften(net: PolicyNet, temperature: float) -> None:
    """Divide every head's logits by `temperature` (scale the heads' last layers): the same argmax, a flatter
    distribution for temperature > 1."""
    with torch.no_grad():
        for head in (net.op_head, net.slot_head, net.blueprint_head):
            head.weight.div_(temperature)
            head.bias.div_(temperature)


def train(
    cfg: PPOConfig, out: Path, workspace: Workspace, init: Path | None = None, resume: bool = False,
    progress: Callable[[str], None] = lambda line: None, deadline: float | None = None, ray_address: str | None = None,
) -> dict[str, Any]:
    """Run PPO to `cfg.episodes` episodes, checkpointing into `out` after every update; with `cfg.workers` > 1 the
    episodes are played on Ray (started here, or joined at `ray_address`). With `deadline`
    (a `time.perf_counter()` value), stop early rather than start an update that would end after it (the
    first update always runs). With `cfg.select_every`, `out`'s policy is the kept one, and the last update
    is always scored; the deadline leaves room for that (the starting policy's score is not counted)."""
    start_update, episodes_done, kept = 0, 0, None
    if resume:
        cfg, state = _resume_state(out, cfg)
        _check_logged(out, workspace)
        start_update, episodes_done = state["update"], state["episodes"]
    check_config(cfg)
    if cfg.workers > 1:
        cluster.check_reachable(ray_address)  # before the learner's store is made
    updates = start_update + math.ceil((cfg.episodes - episodes_done) / cfg.n_envs)  # after a partial one too
    if cfg.select_every and updates > SELECT_OFFSET:  # as played: a resumed job's partial update adds one
        raise BadInput(f"a selecting job plays at most {SELECT_OFFSET:,} updates (its rollouts' seeds would reach "
                       "its selection runs')")
    if cfg.init_temperature != 1.0 and init is None and not resume:
        raise BadInput("init_temperature softens a starting policy: give one to start from (--init)")
    net = make_net(spec_for_task(cfg.task), cfg.hidden, cfg.seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, eps=1e-5)
    generator = torch.Generator().manual_seed(cfg.seed)
    if resume:
        with _restoring(out):
            net.load_state_dict(state["model"])
            kept = _kept_state(out, state)
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
        progress(f"resuming {out} after update {start_update} ({episodes_done} episodes)")
    elif init is not None:
        _start_from(net, init, cfg, progress)
    data = load_task_data(cfg.task, RunConfig().data_seed)
    # the file holding the weights the next update plays, which its runs name (`played_by`); --init's softened: none
    holder = out if resume else (init if cfg.init_temperature == 1.0 else None)
    tag = secrets.token_hex(3)
    learner_id = f"ppo-{tag}"
    store = workspace.store_path(learner_id)
    where = ", ".join(cfg.devices) + (f", split over {cfg.workers} Ray workers" if cfg.workers > 1 else "")
    progress(f"ppo {learner_id}: {cfg.task}, {plural(cfg.episodes, 'episode')}, "
             f"{plural(min(cfg.n_envs, cfg.episodes - episodes_done), 'env')} "
             f"in lock-step on {where}; store {store}")
    if cfg.critic_warmup >= updates:
        progress(f"note: the critic warm-up ({plural(cfg.critic_warmup, 'update')}) covers every update of this job "
                 f"({updates}), so the actor stays as it started: more than {cfg.critic_warmup * cfg.n_envs} episodes train it "
                 "(--episodes, or --resume later)")
    stats: dict[str, float] = {}
    # a job refused or stopped before its first update (Ray not joined, say) leaves no empty store
    with new_store(store) as recorder, open_players(cfg.workers, cfg.task, cfg.hidden, data, recorder, workspace,
                                                   learner_id, cfg.devices, ray_address) as players:
        learner = StoreSink(recorder, learner_id)

        def save_and_log(update: int, stats: dict[str, float]) -> None:
            """Write the checkpoint, then append the event that records it with the update's PolicyUpdated, as one
            step: a stop between the two would leave a file its log does not know, which no resume accepts, in
            place of the one the log knew."""
            with signals_held():
                _save(out, cfg, net, kept, optimizer, generator, store, update, episodes_done)
                learner.append([PolicyUpdated(update=update, stats=stats), saved(out, update)])

        last_update_s = last_select_s = 0.0
        if cfg.select_every and kept is None:  # the starting policy is the first candidate
            select_started = time.perf_counter()
            kept, selected = select_checkpoint(kept, net, start_update, cfg, players, tag, progress)
            save_and_log(start_update, selected)
            holder = out
            last_select_s = time.perf_counter() - select_started
        updates_done = start_update
        for u in range(start_update, updates):
            update_started = time.perf_counter()
            n = min(cfg.n_envs, cfg.episodes - episodes_done)
            stats = learn(u, n, cfg, net, optimizer, generator, players, tag, holder)
            episodes_done += n
            stats["episodes"] = float(episodes_done)
            last_update_s = time.perf_counter() - update_started
            progress(_line(u + 1, updates, stats) + ("  (critic warm-up: actor frozen)" if stats["actor_frozen"] else ""))
            due = cfg.select_every > 0 and (u + 1) % cfg.select_every == 0
            # room for this update's selection, then another update and its selection (any may be the last)
            time_up = deadline is not None and (
                time.perf_counter() + (due + 1) * last_select_s + last_update_s > deadline)
            if cfg.select_every and (due or time_up or u + 1 == updates):  # the last update is always scored
                select_started = time.perf_counter()
                kept, selected = select_checkpoint(kept, net, u + 1, cfg, players, tag, progress)
                stats |= selected
                last_select_s = time.perf_counter() - select_started
            save_and_log(u + 1, stats)
            holder, updates_done = out, u + 1
            if time_up and u + 1 < updates:
                progress(f"time is up after update {u + 1} ({episodes_done} episodes)")
                break
    episode_stores = str(store) if cfg.workers == 1 else str(workspace.store_path(f"{learner_id}-w*"))
    return {"out": str(out), "store": str(store), "episode_stores": episode_stores, "learner": learner_id,
            "runs": f"{cfg.task}-ppo-{tag}-u*", "updates": updates_done,
            "episodes": episodes_done, "stats": stats,
            "kept_update": kept.update if kept else None}


def _start_from(net: PolicyNet, init: Path, cfg: PPOConfig, progress: Callable[[str], None]) -> None:
    """`net` (new, of the job's task and width) takes the weights of the policy file `init`, its logits softened by
    `cfg.init_temperature`; a policy of another task or width is refused."""
    start, _ = load_policy(init)
    if start.spec != net.spec or start.actor[0].out_features != cfg.hidden:
        trained = f"task {task}" if (task := task_of(start.spec)) else "a model of your own"
        raise BadInput(f"{init} was trained for {trained}, hidden {start.actor[0].out_features}; this job has task "
                       f"{cfg.task}, hidden {cfg.hidden}")
    net.load_state_dict(start.state_dict())
    soften(net, cfg.init_temperature)
    progress(f"starting from the policy in {init}" + (f", its logits divided by {cfg.init_temperature:g}"
                                                        if cfg.init_temperature != 1.0 else ""))


def learn(u: int, n: int, cfg: PPOConfig, net: PolicyNet, optimizer: torch.optim.Optimizer, generator: torch.Generator,
          players: Players | RayPlayers, tag: str, holder: Path | None) -> dict[str, float]:
    """Update u (from 0): play `n` episodes, read them back, update the policy; the update's stats. `holder` is the
    file that holds the weights `net` has now (None: none does), which the episodes' runs name (`played_by`)."""
    base = resolve_config(RunConfig(task=cfg.task, controller="ppo", seed=TRAIN_SEEDS + 100_000 * cfg.seed + u,
                                    epochs=cfg.epochs, telemetry=cfg.telemetry, **played_by(holder),
                                    lifecycle=LifecycleConfig(max_params=cfg.max_params)))
    run_ids = [f"{cfg.task}-ppo-{tag}-u{u + 1:04d}-e{i}" for i in range(n)]
    started = time.perf_counter()
    live, records = players.play(configs_round_robin(base, n, cfg.devices), run_ids, net,
                                 episode_generators(cfg.seed, u, range(n)))
    played = time.perf_counter() - started
    episodes, b = read_batch(list(zip(run_ids, records)), net.spec, cfg.reward)
    b["advantages"], b["returns"] = advantages(b, net, cfg.gamma, cfg.gae_lambda)
    if cfg.shared_baseline:
        b["advantages"] = centre_per_step(b["advantages"], b["step"])
    frozen = u < cfg.critic_warmup
    stats = update(net, optimizer, b, cfg, generator, actor=not frozen)
    if not weights_finite(net):  # the file keeps the last finite policy (or none): a NaN one would decide nothing
        raise EsperError(f"PPO diverged at update {u + 1} (the policy's weights are not finite); its policy was not "
                         f"saved: try a lower --lr (now {cfg.learning_rate:g}) or smaller --reward-* weights")
    stats |= _episode_stats(episodes)
    return stats | {"env_steps_per_s": live.steps / played, "learning_rate": cfg.learning_rate,
                    "actor_frozen": float(frozen)} | cfg.reward.stats()


def played_by(holder: Path | None) -> dict[str, str]:
    """How a rollout run names the policy that plays it, as a run of controller `policy` names its file: the absolute
    path and sha256 of the file holding its weights when the episode starts. That is the job's checkpoint of the last
    update (its `CheckpointSaved` has the same hash; a selecting job's file holds them as `latest`), or the --init file
    before the first. A policy no file holds (a new job's first update: freshly initialised, or --init's softened) is
    named by none; the run id names its job. Re-execution needs neither: `--verify` replays the logged commands."""
    if holder is None:
        return {}
    return {"policy": str(holder.resolve()), "policy_sha256": hashlib.sha256(holder.read_bytes()).hexdigest()}


def _save(out: Path, cfg: PPOConfig, net: PolicyNet, kept: "Kept | None", optimizer: torch.optim.Optimizer,
          generator: torch.Generator, store: Path, update: int, episodes: int) -> None:
    """The checkpoint after `update`: the policy (the kept one when selecting) and what resuming needs."""
    training = {"config": msgspec.to_builtins(cfg), "update": update, "episodes": episodes,
                "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "store": str(store)}
    if kept is not None:  # the file's policy is the kept one; resuming continues from the latest weights
        training |= {"latest": net.state_dict(), "kept": {"update": kept.update, "failed": kept.failed, "score": kept.score}}
    save_policy(out, kept.net if kept else net, "ppo", cfg.reward, cfg.hidden, train=training, max_params=cfg.max_params)


def _episode_stats(episodes: list[Episode]) -> dict[str, float]:
    """Means over the update's episodes: `return` (weighted), `return.<component>` (each component's
    unweighted sum), final `val_accuracy` and `params`."""
    out = {"return": float(np.mean([e.reward.sum() for e in episodes]))}
    for j, name in enumerate(COMPONENTS):
        out[f"return.{name}"] = float(np.mean([e.components[:, j].sum() for e in episodes]))
    finished = [e for e in episodes if e.final_val_accuracy is not None]
    if finished:
        out["val_accuracy"] = float(np.mean([e.final_val_accuracy for e in finished]))
        out["params"] = float(np.mean([e.final_params for e in finished]))
    return out


def _line(u: int, updates: int, s: dict[str, float]) -> str:
    return (f"update {u}/{updates}  episodes {s['episodes']:.0f}  return {s['return']:+.3f}  "
            f"val {s.get('val_accuracy', float('nan')) * 100:5.1f}%  params {s.get('params', float('nan')):,.0f}  "
            f"kl {s['approx_kl']:.4f}  clipfrac {s['clipfrac']:.3f}  ev {s['explained_variance']:+.2f}  "
            f"entropy {s['entropy']:.3f}  {s['env_steps_per_s']:.1f} env-steps/s")


def check_config(cfg: PPOConfig) -> None:
    """Refuse (`BadInput`) a PPO config no job can run: what `ppo_job` checks before anything is written."""
    if cfg.n_envs < 1 or cfg.episodes < 1:
        raise BadInput(f"n_envs and episodes must be at least 1 (got {cfg.n_envs} and {cfg.episodes})")
    if cfg.epochs < 0:
        raise BadInput(f"epochs must not be negative (0: the task preset's), got {cfg.epochs}")
    if cfg.minibatches < 1 or cfg.update_epochs < 1:
        raise BadInput("minibatches and update_epochs must be at least 1")
    if cfg.workers < 1:
        raise BadInput(f"workers must be at least 1, got {cfg.workers}")
    if cfg.workers > 1:
        cluster.need_ray(f"{cfg.workers} workers")  # before anything is written
        if any(d.startswith("cuda:") for d in cfg.devices):
            raise BadInput("with several workers, Ray gives each its share of a GPU: use device cuda, not cuda:N")
    if not cfg.init_temperature > 0:
        raise BadInput(f"init_temperature must be positive, got {cfg.init_temperature}")
    if cfg.critic_warmup < 0:
        raise BadInput(f"critic_warmup must not be negative, got {cfg.critic_warmup}")
    if not 0 <= cfg.seed < MAX_JOB_SEED:
        raise BadInput(f"seed must be between 0 and {MAX_JOB_SEED - 1:,}, got {cfg.seed} (run seeds below "
                       f"{TRAIN_SEEDS} are for evaluation, and a job's run seeds are {TRAIN_SEEDS} + 100,000 × seed + ...)")
    if cfg.select_every < 0:
        raise BadInput(f"select_every must not be negative, got {cfg.select_every}")
    if cfg.select_every and not 1 <= cfg.select_runs <= 100_000 - SELECT_OFFSET:
        raise BadInput(f"select_runs must be between 1 and {100_000 - SELECT_OFFSET:,}, got {cfg.select_runs}")
    check_training(cfg.learning_rate, cfg.gamma, cfg.hidden)
    if cfg.ent_coef < 0 or (cfg.target_kl is not None and cfg.target_kl < 0):
        raise BadInput(f"ent_coef and target_kl must not be negative (got {cfg.ent_coef} and {cfg.target_kl})")
    if cfg.telemetry not in ("minimal", "standard", "diagnostic"):
        raise BadInput(f"unknown telemetry profile {cfg.telemetry!r}: use minimal, standard or diagnostic")
    for device in cfg.devices:
        resolve_device(device)
    spec_for_task(cfg.task)
    if get_task(cfg.task).name == "cifar10":
        raise BadInput("esper ppo plays its episodes on data Esper makes or ships (mnist1d, text): cifar10 needs "
                       "--data-dir, which ppo does not take")
    resolve_config(RunConfig(task=cfg.task, lifecycle=LifecycleConfig(max_params=cfg.max_params)))  # the cap's checks


def _check_logged(out: Path, workspace: Workspace) -> None:
    """Resume only from a checkpoint as its job logged it (`CheckpointSaved`): a file whose bytes no learner stream
    recorded for its path was changed since. A file written before checkpoints were logged has no record to miss."""
    if not workspace.root.is_dir():
        return
    with workspace.reader() as reader:
        logged = {row[0] for row in reader.con.execute(
            "SELECT payload->>'$.sha256' FROM events WHERE type = 'CheckpointSaved' AND (payload->>'$.path') = ?",
            [str(out.resolve())]).fetchall()}
    if logged and hashlib.sha256(out.read_bytes()).hexdigest() not in logged:
        raise BadInput(f"cannot resume: {out} is not a checkpoint its job logged in {workspace.root} (its sha256 is in no "
                       "CheckpointSaved for this path): it was changed since, or a job resumed in another workspace "
                       "wrote it (resume with that one's --workspace)")


def checkpoint_config(out: Path) -> PPOConfig:
    """The config of the job whose checkpoint `out` is."""
    with _restoring(out):
        return msgspec.convert(_training_state(out)[0]["config"], PPOConfig)


@contextlib.contextmanager
def _restoring(out: Path) -> Iterator[None]:
    """A training state that cannot be read back (a key missing, a value of another type or shape) is the file's
    fault, one line: its checksum guards it only in the workspace whose log recorded the file."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, msgspec.ValidationError) as exc:
        raise BadInput(f"{out} holds a damaged training state, which cannot be resumed ({type(exc).__name__}: "
                       f"{reason(exc)})") from None


def _training_state(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint's training state and the whole file; `BadInput` for a policy file that holds none."""
    _, blob = load_policy(out)
    state = blob.get("train")
    if state is None:
        raise BadInput(f"{out} holds a policy but no training state (it was not written by `esper ppo`)")
    return state, blob


def _resume_state(out: Path, cfg: PPOConfig) -> tuple[PPOConfig, dict[str, Any]]:
    """The checkpoint's config (with this call's episode total, 0 for the job's own, and workers, which change no
    decision) and training state (its counts read as integers, its model the latest weights)."""
    state, blob = _training_state(out)
    with _restoring(out):
        old = msgspec.convert(state["config"], PPOConfig)
        state = dict(state, model=state.get("latest", blob["model"]), update=int(state["update"]),
                     episodes=int(state["episodes"]))
    episodes = cfg.episodes or old.episodes  # 0: to the job's own total
    if episodes <= state["episodes"]:
        raise BadInput(f"cannot resume: {out} has played {state['episodes']} of its {old.episodes} episodes; episodes "
                       f"is the total to reach, so ask for more than {state['episodes']}")
    return msgspec.structs.replace(old, episodes=episodes, workers=cfg.workers), state



# ---- 6. checkpoint selection -------------------------------------------------------------------------


@attrs.define
class Kept:
    """The policy a selecting job's file holds: the best greedy score so far, and after which update."""

    update: int
    failed: int
    """Selection runs of this policy that failed: a policy whose runs fail never beats one whose runs finish."""
    score: float
    """Mean return over the selection runs (a failed run's return stops where it failed)."""
    net: PolicyNet

    def beaten_by(self, failed: int, score: float) -> bool:
        return (failed, -score) < (self.failed, -self.score)  # ties keep the older policy


def selection_seed(cfg: PPOConfig, i: int) -> int:
    return TRAIN_SEEDS + 100_000 * cfg.seed + SELECT_OFFSET + i


def greedy_score(net: PolicyNet, cfg: PPOConfig, players: Players | RayPlayers, tag: str,
                 update: int) -> dict[str, float]:
    """`select.*` stats of the greedy policy on the job's selection runs: mean return (the score), final
    validation accuracy and params. The runs are the same every time, so two scores compare two policies on
    equal runs; they are logged like any other run (controller `policy`) and played on the job's workers."""
    configs = [resolve_config(RunConfig(task=cfg.task, controller="policy", seed=selection_seed(cfg, i), epochs=cfg.epochs,
                                        telemetry=cfg.telemetry, device=cfg.devices[i % len(cfg.devices)],
                                        lifecycle=LifecycleConfig(max_params=cfg.max_params)))
               for i in range(cfg.select_runs)]
    run_ids = [f"{cfg.task}-ppo-{tag}-select-u{update:04d}-r{i}" for i in range(cfg.select_runs)]
    results, records = players.play_greedy(configs, run_ids, net, cfg.max_params)
    returns = [float(replay_episode(rows, net.spec, cfg.reward, r).reward.sum()) for r, rows in zip(run_ids, records)]
    finished = [r for r in results if r is not None]
    stats = {"select.return": float(np.mean(returns)), "select.failed": float(cfg.select_runs - len(finished))}
    if finished:
        stats["select.val_accuracy"] = float(np.mean([r.val_accuracy for r in finished]))
        stats["select.params"] = float(np.mean([r.params for r in finished]))
    return stats


def select_checkpoint(kept: Kept | None, net: PolicyNet, update: int, cfg: PPOConfig, players: Players | RayPlayers,
                      tag: str, progress: Callable[[str], None]) -> tuple[Kept, dict[str, float]]:
    """Score `net` (the policy after `update`) and keep it if it beats the kept one; the policy kept now,
    and the `select.*` stats for the update's `PolicyUpdated`."""
    stats = greedy_score(net, cfg, players, tag, update)
    failed, score = int(stats.get("select.failed", 0)), stats["select.return"]
    if kept is None or kept.beaten_by(failed, score):
        kept = Kept(update, failed, score, _copy_without_grads(net))
    progress(_select_line(stats, cfg.select_runs, kept))
    return kept, stats | {"select.kept_update": float(kept.update)}


def _copy_without_grads(net: PolicyNet) -> PolicyNet:
    """A copy of the policy to keep: played and saved only, so without the live net's gradients."""
    kept = copy.deepcopy(net)
    kept.zero_grad(set_to_none=True)
    return kept


def _select_line(stats: dict[str, float], runs: int, kept: Kept) -> str:
    failed = int(stats.get("select.failed", 0))
    return (f"  greedy on {plural(runs, 'selection run')}: return {stats['select.return']:+.3f}  "
            + (f"({failed} failed)  " if failed else "") +
            f"val {stats.get('select.val_accuracy', float('nan')) * 100:5.1f}%  "
            f"params {stats.get('select.params', float('nan')):,.0f}  -> keeping update {kept.update}")


def _kept_state(out: Path, state: dict[str, Any]) -> Kept | None:
    """The kept policy of a selecting job's checkpoint (None for a job that does not select)."""
    if "kept" not in state:
        return None
    net, _ = load_policy(out)
    return Kept(int(state["kept"]["update"]), int(state["kept"]["failed"]), float(state["kept"]["score"]), net)
