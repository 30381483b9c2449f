"""Implicit Q-learning from event logs (Kostrikov, Nair & Levine 2021), discrete actions.

The dataset is any runs of the workspace (heuristic, random, PPO ...) replayed through the dataset
projection PPO also reads (`esper.simic.dataset`): (obs, action, reward, next obs, done) with the
legal-action masks of each state. Then, per gradient step on a random minibatch:

1. V: expectile regression of the target twin Q (min of the two) on the dataset's actions,
   L = |τ - 1(u < 0)| u² with u = Q̂(s, a) - V(s); τ > 0.5 leans towards the better actions seen;
2. Q: both heads regress r + γ (1 - done) V(s'); no maximum over actions, so no action outside the
   data is ever queried;
3. policy: advantage-weighted regression, -exp(β (Q̂(s, a) - V(s))) · log π(a | s), weights clipped;
4. Polyak-average the target Q.

Q outputs one value per flat action (`features.joint_index`); the policy is the same factored, masked
`PolicyNet` PPO trains, with V as its critic, so the result is an ordinary policy file PPO can start from.
"""

import contextlib
import math
import time
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from esper.errors import BadInput, EsperError
from esper.leyline.events import PolicyUpdated
from esper.nissa.fmt import plural
from esper.simic.dataset import Episode, batch
from esper.simic.config import IQLConfig
from esper.simic.features import FeatureSpec
from esper.simic.policy import PolicyNet, _layer, _trunk, check_training
from esper.tolaria.loop import Sink


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Mean of |τ - 1(u < 0)| · u² over u = `diff`."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


class TwinQ(nn.Module):
    def __init__(self, spec: FeatureSpec, hidden: int):
        super().__init__()
        self.q1 = nn.Sequential(_trunk(spec.obs_dim, hidden), _layer(hidden, spec.n_actions, std=1.0))
        self.q2 = nn.Sequential(_trunk(spec.obs_dim, hidden), _layer(hidden, spec.n_actions, std=1.0))

    def forward(self, obs: torch.Tensor, joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = joint[:, None]
        return self.q1(obs).gather(1, index).squeeze(1), self.q2(obs).gather(1, index).squeeze(1)


def iql_step(net: PolicyNet, q: TwinQ, q_target: TwinQ, optimizers: dict[str, torch.optim.Optimizer],
             mb: dict[str, torch.Tensor], cfg: IQLConfig) -> dict[str, float]:
    """One gradient step of V, Q and the policy on minibatch `mb`, then the target update."""
    with torch.no_grad():
        target_q = torch.min(*q_target(mb["obs"], mb["joint"]))
    value = net.value(mb["obs"])
    v_loss = expectile_loss(target_q - value, cfg.expectile)
    optimizers["v"].zero_grad()
    v_loss.backward()
    optimizers["v"].step()

    with torch.no_grad():
        backup = mb["reward"] + cfg.gamma * (1.0 - mb["done"].float()) * net.value(mb["next_obs"])
    q1, q2 = q(mb["obs"], mb["joint"])
    q_loss = F.mse_loss(q1, backup) + F.mse_loss(q2, backup)
    optimizers["q"].zero_grad()
    q_loss.backward()
    optimizers["q"].step()

    with torch.no_grad():
        advantage = target_q - value.detach()
        weight = torch.exp(cfg.temperature * advantage).clamp(max=cfg.max_weight)
    _, log_prob, entropy = net.act(mb["obs"], mb["mask"], action=mb["action"])
    pi_loss = -(weight * log_prob).mean()
    optimizers["pi"].zero_grad()
    pi_loss.backward()
    optimizers["pi"].step()

    with torch.no_grad():
        for p, tp in zip(q.parameters(), q_target.parameters()):
            tp.mul_(1.0 - cfg.tau).add_(p, alpha=cfg.tau)
    return {
        "value_loss": v_loss.item(), "q_loss": q_loss.item(), "policy_loss": pi_loss.item(),
        "advantage": advantage.mean().item(), "weight": weight.mean().item(), "entropy": entropy.mean().item(),
        "log_prob": log_prob.mean().item(),
    }


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Train on one CPU thread, then restore the process's setting. The networks are a few 64-wide layers on
    batches of 256: more intra-op threads gain nothing and, when another process holds a core, wait on it
    (benchmarks/iql.py, 2-core machine: one thread 1.1× two when idle, 16.6× with one core busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check(cfg: IQLConfig) -> None:
    """`BadInput` for settings IQL cannot train with (before any data is read)."""
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise BadInput(f"steps and batch_size must be at least 1 (got {cfg.steps} and {cfg.batch_size})")
    if not 0.0 < cfg.expectile < 1.0:
        raise BadInput(f"expectile must be inside (0, 1), got {cfg.expectile}")
    if not cfg.temperature > 0:
        raise BadInput(f"temperature must be positive, got {cfg.temperature}")
    if cfg.seed < 0:
        raise BadInput(f"seed must not be negative, got {cfg.seed}")
    if cfg.log_every < 0:
        raise BadInput(f"log_every must be 0 (the last step's only) or a number of steps, got {cfg.log_every}")
    check_training(cfg.learning_rate, cfg.gamma, cfg.hidden)


def learners(cfg: IQLConfig, spec: FeatureSpec) -> tuple[PolicyNet, TwinQ, TwinQ, dict[str, torch.optim.Optimizer]]:
    """The policy (V is its critic), twin Q, its target and their optimizers, initialised from `cfg.seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = PolicyNet(spec, cfg.hidden)
        q = TwinQ(spec, cfg.hidden)
    q_target = TwinQ(spec, cfg.hidden)
    q_target.load_state_dict(q.state_dict())
    q_target.requires_grad_(False)
    actor = [p for name, p in net.named_parameters() if not name.startswith("critic.")]
    optimizers = {
        "v": torch.optim.Adam(net.critic.parameters(), lr=cfg.learning_rate),
        "q": torch.optim.Adam(q.parameters(), lr=cfg.learning_rate),
        "pi": torch.optim.Adam(actor, lr=cfg.learning_rate),
    }
    return net, q, q_target, optimizers


@one_thread()
def train(
    cfg: IQLConfig, spec: FeatureSpec, episodes: list[Episode], sink: Sink | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> tuple[PolicyNet, dict[str, Any]]:
    """Train on `episodes`; a `PolicyUpdated` per `log_every` steps, and one for the last, goes to `sink`.
    Returns the policy."""
    check(cfg)
    if not episodes:
        raise BadInput("no usable runs for IQL: the dataset is empty (check the runs filter and the task)")
    data = batch(episodes)
    n = len(data["reward"])
    net, q, q_target, optimizers = learners(cfg, spec)
    generator = torch.Generator().manual_seed(cfg.seed)
    progress(f"iql: {plural(len(episodes), 'run')}, {plural(n, 'transition')}, {plural(cfg.steps, 'step')} "
             f"(expectile {cfg.expectile}, temperature {cfg.temperature})")
    sums: dict[str, float] = {}
    started = last_log = time.perf_counter()
    logged = 0
    stats: dict[str, float] = {}
    for step in range(1, cfg.steps + 1):
        index = torch.randint(0, n, (cfg.batch_size,), generator=generator)
        out = iql_step(net, q, q_target, optimizers, {k: v[index] for k, v in data.items()}, cfg)
        if lost := [k for k, v in out.items() if not math.isfinite(v)]:
            raise EsperError(f"IQL diverged at step {step} ({', '.join(lost)} not finite); no policy was saved: "
                             f"try a lower --lr (now {cfg.learning_rate:g})")
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + v
        if (cfg.log_every and step % cfg.log_every == 0) or step == cfg.steps:
            count, logged = step - logged, step
            now = time.perf_counter()
            stats = {k: v / count for k, v in sums.items()}
            stats |= {"steps_per_s": count / max(now - last_log, 1e-9), "transitions": float(n),
                      "runs": float(len(episodes)), "step": float(step)} | cfg.reward.stats()
            sums, last_log = {}, now
            if sink is not None:
                sink.append([PolicyUpdated(update=step, stats=stats)])
            progress(f"step {step}/{cfg.steps}  v {stats['value_loss']:.4f}  q {stats['q_loss']:.4f}  "
                     f"pi {stats['policy_loss']:.4f}  adv {stats['advantage']:+.4f}  entropy {stats['entropy']:.3f}  "
                     f"{stats['steps_per_s']:.0f} steps/s")
    net.eval()
    return net, {"transitions": n, "runs": len(episodes), "seconds": time.perf_counter() - started, "stats": stats}

