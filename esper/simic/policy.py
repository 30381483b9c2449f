"""The policy network, its file, and the Tamiyo controller that runs it.

`PolicyNet` is a small feed-forward actor-critic: an actor trunk with three masked categorical heads
(operation; slot, read in the row of the chosen operation; blueprint, read in the row of the chosen
slot) and a separate critic. PPO trains both; IQL trains the actor and its value function becomes the
critic, so PPO can start from an IQL policy.

A policy file is `torch.save` of a plain dict (loadable with `weights_only=True`):
`format`, `version`, `algorithm` ("ppo" or "iql"), `spec` (the `FeatureSpec`), `hidden`, `reward` (the
`RewardConfig` it was trained with), `model` (the state dict) and, in a training checkpoint, `train`
(what resuming needs). `esper run --controller policy --policy PATH` loads it with
`load_policy_controller`.
"""

import hashlib
import math
from pathlib import Path
from typing import Any

import msgspec
import torch
from torch import nn

from esper.errors import BadInput, first_line
from esper.leyline.commands import Command
from esper.leyline.config import rate_problem
from esper.leyline.events import CheckpointSaved
from esper.nissa.files import atomic_write
from esper.simic.features import GERMINATE, OPS, FeatureSpec, action_mask, encode, task_of, to_command
from esper.simic.rewards import RewardConfig
from esper.tamiyo.observation import Observation

FORMAT = "esper-policy"
VERSION = 1
MASKED = -1e8
"""Logit of an illegal choice: its probability is exactly 0 and 0·log p stays finite."""


def check_training(learning_rate: float, gamma: float, hidden: int) -> None:
    """The settings PPO and IQL share, checked before any work (one line of `BadInput` each)."""
    if problem := rate_problem("learning_rate", learning_rate):  # past it Adam's step overflows: a crash, late
        raise BadInput(problem)
    if not 0.0 < gamma <= 1.0:
        raise BadInput(f"gamma must be in (0, 1], got {gamma}")
    if hidden < 1:
        raise BadInput(f"hidden must be at least 1, got {hidden}")


def _layer(n_in: int, n_out: int, std: float = math.sqrt(2)) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(layer.weight, std)
    nn.init.zeros_(layer.bias)
    return layer


def _trunk(n_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(_layer(n_in, hidden), nn.Tanh(), _layer(hidden, hidden), nn.Tanh())


class PolicyNet(nn.Module):
    def __init__(self, spec: FeatureSpec, hidden: int = 64):
        super().__init__()
        self.spec = spec
        s, b = spec.n_slots, spec.n_blueprints
        self.actor = _trunk(spec.obs_dim, hidden)
        self.op_head = _layer(hidden, len(OPS), std=0.01)
        self.slot_head = _layer(hidden, len(OPS) * s, std=0.01)
        self.blueprint_head = _layer(hidden, s * b, std=0.01)
        self.critic = nn.Sequential(_trunk(spec.obs_dim, hidden), _layer(hidden, 1, std=1.0))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def act(
        self,
        obs: torch.Tensor,
        mask: torch.Tensor,
        action: torch.Tensor | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Choose (or, given `action`, score) a factored action under the flat masks `mask` (N, mask_dim).

        Returns the action (N, 3), its log-probability (N,) and the entropy of the heads it used (N,)."""
        n, s, b = obs.shape[0], self.spec.n_slots, self.spec.n_blueprints
        rows = torch.arange(n)
        op_mask = mask[:, : len(OPS)]
        slot_masks = mask[:, len(OPS) : len(OPS) * (1 + s)].view(n, len(OPS), s)
        bp_masks = mask[:, len(OPS) * (1 + s) :].view(n, s, b)
        h = self.actor(obs)

        given = (lambda i: action[:, i]) if action is not None else (lambda i: None)
        op, lp, ent = _choose(self.op_head(h), op_mask, given(0), greedy, generator)
        slot_logits = self.slot_head(h).view(n, len(OPS), s)[rows, op]
        slot, lp_slot, ent_slot = _choose(slot_logits, slot_masks[rows, op], given(1), greedy, generator)
        bp_logits = self.blueprint_head(h).view(n, s, b)[rows, slot]
        bp_mask = bp_masks[rows, slot] & (op == GERMINATE)[:, None]
        bp, lp_bp, ent_bp = _choose(bp_logits, bp_mask, given(2), greedy, generator)
        return torch.stack([op, slot, bp], 1), lp + lp_slot + lp_bp, ent + ent_slot + ent_bp


def _choose(logits, mask, given, greedy, generator):
    """One masked categorical head. A row with no legal choice is a head the action does not use: it
    picks 0 and adds 0 to the log-probability and the entropy."""
    used = mask.any(-1)
    safe = mask.clone()
    safe[~used, 0] = True
    logp = torch.log_softmax(logits.masked_fill(~safe, MASKED), -1)
    if given is not None:
        choice = given
    elif greedy:
        choice = logp.argmax(-1)
    else:
        choice = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    choice = torch.where(used, choice, torch.zeros_like(choice))
    chosen = logp.gather(-1, choice[:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return choice, torch.where(used, chosen, 0.0), torch.where(used, entropy, 0.0)


# ---- the file ----------------------------------------------------------------------------------


def save_policy(
    path: str | Path, net: PolicyNet, algorithm: str, rewards: RewardConfig, hidden: int,
    train: dict[str, Any] | None = None, max_params: int = 0,
) -> None:
    """Write the policy file atomically (a reader never sees half a file). `max_params`: the parameter cap
    the policy was trained under, which `esper run` applies by default."""
    blob = {
        "format": FORMAT, "version": VERSION, "algorithm": algorithm, "spec": msgspec.to_builtins(net.spec),
        "hidden": hidden, "reward": msgspec.to_builtins(rewards), "max_params": max_params, "model": net.state_dict(),
    }
    if train is not None:
        blob["train"] = train
    atomic_write(Path(path), lambda tmp: torch.save(blob, tmp))


def saved(path: str | Path, update: int, sources: list[str] = ()) -> CheckpointSaved:
    """The learner's event for the policy file just written at `path`: its hash and size, so that the log says
    which file each update produced (and, for IQL, from which runs)."""
    data = Path(path).read_bytes()
    return CheckpointSaved(sha256=hashlib.sha256(data).hexdigest(), size=len(data), update=update,
                           path=str(Path(path).resolve()), sources=list(sources))


MESSAGE_CHARS = 120
"""How much of torch's own reason a refused policy file's line quotes."""


def reason(exc: BaseException) -> str:
    """What a library (torch, msgspec) said to refuse a file, to quote in one line: its first sentence, never more
    than `MESSAGE_CHARS` (cut at a word, marked …)."""
    sentence = first_line(exc).split(". ", 1)[0].rstrip(".")
    if len(sentence) <= MESSAGE_CHARS:
        return sentence
    return sentence[:MESSAGE_CHARS].rsplit(" ", 1)[0] + " …"


def read_policy_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{path} is a folder: give the path of a policy file")
    if not path.is_file():
        raise BadInput(f"no policy file {path} (write one with `esper ppo --out` or `esper iql --out`)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:  # the file itself: unreadable, a disk error
        raise BadInput(f"cannot read policy file {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # torch raises many kinds for a file that is not one of its pickles
        raise BadInput(f"{path} is not a policy file (torch cannot load it: {type(exc).__name__}: "
                       f"{reason(exc)})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise BadInput(f"{path} is not an Esper policy file")
    if blob.get("version") != VERSION:
        raise BadInput(f"{path} is a policy file of version {blob.get('version')}; this Esper reads version {VERSION}")
    return blob


def load_policy(path: str | Path) -> tuple[PolicyNet, dict[str, Any]]:
    """The network of a policy file, and the whole file's dict."""
    blob = read_policy_file(path)
    try:
        spec = msgspec.convert(blob["spec"], FeatureSpec)
        net = PolicyNet(spec, int(blob["hidden"]))
        net.load_state_dict(blob["model"])
    except (KeyError, RuntimeError, msgspec.ValidationError) as exc:
        raise BadInput(f"{path} is a damaged policy file ({type(exc).__name__}: {first_line(exc)})") from None
    if not weights_finite(net):  # a greedy policy of NaNs waits forever; a sampling one crashes
        raise BadInput(f"{path} holds a policy whose weights are not all finite numbers: the training that wrote "
                       "it diverged")
    net.eval()
    return net, blob


def weights_finite(net: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in net.parameters())


def rewards_of(blob: dict[str, Any]) -> RewardConfig:
    return msgspec.convert(blob.get("reward", {}), RewardConfig)


# ---- the controller ----------------------------------------------------------------------------


class PolicyController:
    """A trained policy as a Tamiyo controller: greedy (the most likely legal action of each head), or,
    given `sample_seed`, sampling each head as the policy did in training (controller `sampled`).

    After each `decide`, `decision_info` holds what `CommandIssued` records: the action's
    log-probability under the policy, the critic's value and the masks."""

    def __init__(self, net: PolicyNet, sample_seed: int | None = None, max_params: int = 0):
        self.net = net
        self.spec = net.spec
        self.max_params = max_params
        """The parameter cap the policy was trained under (0: none): the default cap of its runs."""
        self.generator = None if sample_seed is None else torch.Generator().manual_seed(sample_seed)
        self.name = "policy" if sample_seed is None else "sampled"
        self.decision_info: dict[str, Any] = {}

    def check_fits(self, slots: list[str], blueprints: list[str], where: str = "this run", fix: str = "") -> None:
        """`BadInput` unless the policy's heads index these slots and blueprints (a policy of another task). `fix`:
        what to do instead (default: the task's runs, or a policy trained for it with `esper ppo`)."""
        if tuple(slots) != self.spec.slots or tuple(blueprints) != self.spec.blueprints:
            task = task_of(self.spec)
            fix = fix or (f"it is {task}'s: add --task {task}, or train" if task else "train") + \
                " a policy on it (esper ppo --task ...)"
            raise BadInput(
                f"the policy was trained for slots {list(self.spec.slots)} and blueprints {list(self.spec.blueprints)}; "
                f"{where} has {list(slots)} and {list(blueprints)}: {fix}"
            )

    def decide(self, obs: Observation) -> Command:
        garden = obs.garden
        self.check_fits(garden.slots, garden.blueprints)
        mask = action_mask(garden, self.spec)
        x = torch.from_numpy(encode(obs, self.spec))[None]
        with torch.no_grad():
            action, log_prob, _ = self.net.act(x, torch.from_numpy(mask.flat())[None], greedy=self.generator is None,
                                               generator=self.generator)
            value = self.net.value(x)
        op, slot, bp = (int(v) for v in action[0])
        self.decision_info = {"log_prob": float(log_prob[0]), "value": float(value[0]), "mask": mask.to_log(self.spec)}
        return to_command(op, slot, bp, garden, self.spec)

    def rng_state(self) -> torch.Tensor | None:
        """What a checkpoint saves of this controller (`esper.tolaria.checkpoint`): a sampling policy's generator."""
        return None if self.generator is None else self.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def load_policy_controller(path: str, sample_seed: int | None = None) -> PolicyController:
    net, blob = load_policy(path)
    return PolicyController(net, sample_seed, max_params=int(blob.get("max_params", 0)))
