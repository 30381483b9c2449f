"""PPO's rollouts: an update's episodes played with the stochastic policy, in this process or on Ray
(and checkpoint selection's greedy runs, the same way).

Every episode samples its actions from a generator of its own, seeded by (job seed, update, episode),
each decision is computed for its episode alone, and lock-step changes no event (`esper.simic.env`): so
an episode is the same whichever process plays it and beside whichever others. That lets `RayPlayers` split
an update's episodes over Ray tasks (`PPOConfig.workers`) and change only the wall time: on CPU a run trains
on one thread, so one process leaves the other cores idle. (The same decisions and training; the logged
log-probabilities and values may differ in their last digits, as BLAS can sum in another order in another
process.) Share k of every update is written to the store file `<job>-w<k>` of the workspace: its one writer.
"""

import contextlib
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import numpy as np
import torch

from esper.leyline.config import RunConfig
from esper.simic.env import VecEnv, play
from esper.simic.features import action_mask, encode, spec_for_task, to_command
from esper.simic.policy import PolicyController, PolicyNet
from esper.store import Recorder, Workspace
from esper.store.recorder import Recorded
from esper.tolaria import cluster
from esper.tolaria.data import TaskData
from esper.tolaria.loop import RunResult, StoreSink


@attrs.define
class LiveRollout:
    """What the agent saw and did while playing, per environment (the test compares it with the log). No reward:
    the agent is given none while it plays; PPO reads each step's from the log (`esper.simic.dataset`)."""

    obs: list[list[np.ndarray]]
    mask: list[list[np.ndarray]]
    action: list[list[np.ndarray]]
    log_prob: list[list[float]]
    value: list[list[float]]
    steps: int = 0

    @classmethod
    def empty(cls, n: int) -> "LiveRollout":
        return cls(*([[] for _ in range(n)] for _ in range(5)))


def episode_generators(seed: int, update: int, episodes: Sequence[int]) -> list[torch.Generator]:
    """The sampling generator of each episode of `update` (from 0) of a job seeded `seed`."""
    seeds = (np.random.SeedSequence([seed, update, i]).generate_state(1, np.uint64)[0] for i in episodes)
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def collect(vec: VecEnv, net: PolicyNet, generators: Sequence[torch.Generator]) -> LiveRollout:
    """Play every environment of `vec` to the end with the stochastic policy, environment i sampling with
    `generators[i]`. Each decision is computed for its environment alone, so that its numbers do not
    depend on which other environments share the batch."""
    spec, n = net.spec, len(vec)
    live = LiveRollout.empty(n)
    with vec:
        while not vec.done:
            observations = vec.step_epoch()
            commands: list[Any] = [None] * n
            infos: list[dict[str, Any]] = [{} for _ in range(n)]
            for i, obs in enumerate(observations):
                if obs is None:
                    continue
                mask = action_mask(obs.garden, spec)
                x = torch.from_numpy(encode(obs, spec))[None]
                m = torch.from_numpy(mask.flat())[None]
                with torch.no_grad():
                    action, log_prob, _ = net.act(x, m, generator=generators[i])
                    value = net.value(x)
                op, slot, bp = (int(a) for a in action[0])
                commands[i] = to_command(op, slot, bp, obs.garden, spec)
                infos[i] = {"log_prob": float(log_prob[0]), "value": float(value[0]), "mask": mask.to_log(spec)}
                live.obs[i].append(x[0].numpy())
                live.mask[i].append(m[0].numpy())
                live.action[i].append(action[0].numpy())
                live.log_prob[i].append(float(log_prob[0]))
                live.value[i].append(float(value[0]))
                live.steps += 1
            vec.decide(commands, "ppo", infos)
        vec.finish()
    return live


class Players:
    """Plays an update's episodes in this process, into the job's own store (`workers` 1). Each call returns
    what it played and every run's events as the store holds them: what PPO learns from is what is on disk."""

    def __init__(self, data: TaskData, recorder: Recorder):
        self.data, self.recorder = data, recorder

    def __enter__(self) -> "Players":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    def play(self, configs: Sequence[RunConfig], run_ids: Sequence[str], net: PolicyNet,
             generators: Sequence[torch.Generator]) -> tuple[LiveRollout, list[list[Recorded]]]:
        """Play `configs` to the end in lock-step with the stochastic policy (PPO's rollout)."""
        live = collect(VecEnv(configs, self._sinks(run_ids), self.data), net, generators)
        return live, [self.recorder.read(r) for r in run_ids]

    def play_greedy(self, configs: Sequence[RunConfig], run_ids: Sequence[str], net: PolicyNet,
                    max_params: int) -> tuple[list[RunResult | None], list[list[Recorded]]]:
        """Play each of `configs` alone with the greedy policy (checkpoint selection: the runs have seeds of
        their own, so they cannot share lock-step), one after another; each run's result (None: it failed)."""
        controller = PolicyController(net, max_params=max_params)
        results = [play(VecEnv([config], [sink], self.data), [controller])[0]
                   for config, sink in zip(configs, self._sinks(run_ids))]
        return results, [self.recorder.read(r) for r in run_ids]

    def _sinks(self, run_ids: Sequence[str]) -> list[StoreSink]:
        return [StoreSink(self.recorder, r) for r in run_ids]


class RayPlayers:
    """Plays an update's episodes as Ray tasks of one episode each, `workers` at a time (`esper.tolaria.cluster`):
    each next episode starts on the first worker to finish, so an update's episodes, which differ several times
    over in compute (the policy grows some runs and not others), even out over the workers. The k-th of the
    `workers` places writes the workspace's store file `<name>-w<k>`. Ctrl-C or SIGTERM cancels the tasks: their
    runs end with `RunFailed` in those files (`esper ppo --resume` plays that update again)."""

    def __init__(self, workers: int, task: str, hidden: int, data: TaskData, workspace: Workspace, name: str,
                 devices: Sequence[str] = ("cpu",), address: str | None = None):
        self.hidden, self.workers = hidden, workers
        self.stores = [str(workspace.store_path(f"{name}-w{k}").absolute()) for k in range(workers)]
        self._session = contextlib.ExitStack()
        try:
            self.ray = self._session.enter_context(cluster.connected(f"--workers {workers}", address))
            cluster.check_shared(self.ray, workspace.root.absolute())
            self.data = self.ray.put(data)  # once: every task reads the same copy
            device = next((d for d in devices if d.startswith("cuda")), "cpu")
            self._play = cluster.remote(self.ray, _play_episode, device)
            self._play_greedy = cluster.remote(self.ray, _play_greedy_episode, device)
            # each worker loads what an episode needs before the first update, as a process pool's would: the
            # first update's rollouts are then timed like any other's
            ready = cluster.remote(self.ray, _ready)
            cluster.gather(self.ray, workers, lambda i, place: ready.remote(task))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "RayPlayers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def play(self, configs: Sequence[RunConfig], run_ids: Sequence[str], net: PolicyNet,
             generators: Sequence[torch.Generator]) -> tuple[LiveRollout, list[list[Recorded]]]:
        state = self.ray.put(_weights(net))
        played = self._each(self._play, len(configs), lambda i: (
            configs[i], run_ids[i], state, self.hidden, generators[i].get_state()))
        merged, records = LiveRollout.empty(len(configs)), []
        for i, (live, episode_records) in enumerate(played):
            records.append(episode_records)
            for field in ("obs", "mask", "action", "log_prob", "value"):
                getattr(merged, field)[i] = getattr(live, field)[0]
            merged.steps += live.steps
        return merged, records

    def play_greedy(self, configs: Sequence[RunConfig], run_ids: Sequence[str], net: PolicyNet,
                    max_params: int) -> tuple[list[RunResult | None], list[list[Recorded]]]:
        state = self.ray.put(_weights(net))
        played = self._each(self._play_greedy, len(configs), lambda i: (
            configs[i], run_ids[i], state, self.hidden, max_params))
        return [result for result, _ in played], [episode_records for _, episode_records in played]

    def _each(self, job: Any, n: int, arguments: Callable[[int], tuple]) -> list[Any]:
        """`job(data, store of its place, *arguments(i))` for episodes i = 0..n-1, as Ray tasks, `workers` at a
        time; their answers in order."""
        return cluster.gather(self.ray, n, lambda i, place: job.remote(self.data, self.stores[place], *arguments(i)),
                              at_once=self.workers)


def open_players(workers: int, task: str, hidden: int, data: TaskData, recorder: Recorder, workspace: Workspace,
                 name: str, devices: Sequence[str] = ("cpu",), address: str | None = None) -> Players | RayPlayers:
    """Where a job's episodes are played: here with one worker (Ray is never started), else on Ray."""
    if workers <= 1:
        return Players(data, recorder)
    return RayPlayers(workers, task, hidden, data, workspace, name, devices, address)


def _weights(net: PolicyNet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def _ready(task: str) -> None:
    """A Ray task that readies a worker for episodes of `task`: it imports this module (and torch) and builds the
    policy's spec, which traces the task's host (its first trace imports much of torch, ~3 s)."""
    spec_for_task(task)


def _play_episode(data: TaskData, store: str, config: RunConfig, run_id: str, state: dict[str, torch.Tensor],
                  hidden: int, generator_state: torch.Tensor) -> tuple[LiveRollout, list[Recorded]]:
    """A Ray task: play one episode with the stochastic policy `state` into the store file `store`."""
    net = _policy(config.task, state, hidden)
    generator = torch.Generator()
    generator.set_state(generator_state)
    with Recorder(Path(store)) as recorder:
        live, records = Players(data, recorder).play([config], [run_id], net, [generator])
    return live, records[0]


def _play_greedy_episode(data: TaskData, store: str, config: RunConfig, run_id: str, state: dict[str, torch.Tensor],
                         hidden: int, max_params: int) -> tuple[RunResult | None, list[Recorded]]:
    """A Ray task: play one run with the greedy policy `state` into the store file `store`."""
    net = _policy(config.task, state, hidden)
    with Recorder(Path(store)) as recorder:
        results, records = Players(data, recorder).play_greedy([config], [run_id], net, max_params)
    return results[0], records[0]


def _policy(task: str, state: dict[str, torch.Tensor], hidden: int) -> PolicyNet:
    net = PolicyNet(spec_for_task(task), hidden)
    net.load_state_dict(state)
    return net
