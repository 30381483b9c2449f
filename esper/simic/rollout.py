"""PPO's rollouts: an update's episodes played with the stochastic policy, in this process or in workers
(and checkpoint selection's greedy runs, the same way).

Every episode samples its actions from a generator of its own, seeded by (job seed, update, episode),
each decision is computed for its episode alone, and lock-step changes no event (`esper.simic.env`): so
an episode is the same whichever process plays it and beside whichever others. That lets `Players` split
an update's episodes over worker processes (`PPOConfig.workers`) and change only the wall time: on CPU a
run trains on one thread, so one process leaves the other cores idle. (The same decisions and training;
the logged log-probabilities and values may differ in their last digits, as BLAS can sum in another order
in another process.)
"""

import multiprocessing
import signal
from typing import Any, Callable, NoReturn, Sequence

import attrs
import numpy as np
import torch

from esper.errors import RunFailed
from esper.leyline.config import RunConfig
from esper.leyline.events import Event
from esper.simic.env import VecEnv, play
from esper.simic.features import ADVANCE, action_mask, encode, spec_for_task, to_command
from esper.simic.policy import PolicyController, PolicyNet
from esper.simic.rewards import RewardConfig, StepOutcome, components, reward
from esper.tolaria.data import TaskData, load_task_data
from esper.tolaria.loop import ListSink, RunResult, Sink


@attrs.define
class LiveRollout:
    """What the agent saw and did while playing, per environment (the test compares it with the log)."""

    obs: list[list[np.ndarray]]
    mask: list[list[np.ndarray]]
    action: list[list[np.ndarray]]
    log_prob: list[list[float]]
    value: list[list[float]]
    reward: list[list[float]]
    steps: int = 0

    @classmethod
    def empty(cls, n: int) -> "LiveRollout":
        return cls(*([[] for _ in range(n)] for _ in range(6)))


def episode_generators(seed: int, update: int, episodes: Sequence[int]) -> list[torch.Generator]:
    """The sampling generator of each episode of `update` (from 0) of a job seeded `seed`."""
    seeds = (np.random.SeedSequence([seed, update, i]).generate_state(1, np.uint64)[0] for i in episodes)
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def collect(vec: VecEnv, net: PolicyNet, generators: Sequence[torch.Generator], rewards: RewardConfig) -> LiveRollout:
    """Play every environment of `vec` to the end with the stochastic policy, environment i sampling with
    `generators[i]`. Each decision is computed for its environment alone, so that its numbers do not
    depend on which other environments share the batch."""
    spec, n = net.spec, len(vec)
    live = LiveRollout.empty(n)
    previous: list[Any] = [None] * n  # (observation, action) of each env's pending step, for its live reward
    with vec:
        while not vec.done:
            observations = vec.step_epoch()
            commands: list[Any] = [None] * n
            infos: list[dict[str, Any]] = [{} for _ in range(n)]
            for i, obs in enumerate(observations):
                if obs is None:
                    continue
                if previous[i] is not None:
                    live.reward[i].append(_live_reward(*previous[i], obs.val_accuracy, obs.params, False, rewards))
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
                previous[i] = (obs, (op, slot, bp))
                live.steps += 1
            vec.decide(commands, "ppo", infos)
        for i, result in enumerate(vec.finish()):
            if result is not None and previous[i] is not None:
                live.reward[i].append(_live_reward(*previous[i], result.val_accuracy, result.params, True, rewards))
    return live


def _live_reward(obs, action, accuracy: float, params: int, final: bool, rewards: RewardConfig) -> float:
    """The step's reward from the observations the agent saw (the log's projection must agree)."""
    op, slot, _ = action
    view = obs.slots[slot]
    fossilized = op == ADVANCE and view.stage.value == "BLENDING" and view.contribution is not None
    outcome = StepOutcome(obs.val_accuracy, accuracy, obs.params, params, obs.host_params,
                          view.contribution if fossilized else 0.0, final)
    return reward(components(outcome, rewards.param_budget), rewards)


class Players:
    """Plays an update's episodes: here (`workers` 1), or split round-robin over `workers` processes, each
    playing its share in lock-step and sending back the events, which are appended to the episodes' sinks
    here once its share is finished.

    The workers ignore Ctrl-C: the job handles it, and leaving stops them at once (whatever they were
    playing is not in the log; `esper ppo --resume` plays that update again)."""

    def __init__(self, workers: int, task: str, hidden: int, data: TaskData):
        self.data, self.hidden = data, hidden
        self.workers: list[_Worker] = []
        spawn = multiprocessing.get_context("spawn")  # never fork a process that has started torch's threads
        try:
            for _ in range(workers if workers > 1 else 0):
                self.workers.append(_Worker(spawn, task))
            for worker in self.workers:  # started: torch imported, data loaded (not the first update's time)
                worker.receive()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Players":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for worker in self.workers:
            worker.process.terminate()
            worker.process.join()
            worker.conn.close()
        self.workers = []

    def play(self, configs: Sequence[RunConfig], sinks: Sequence[Sink], net: PolicyNet,
             generators: Sequence[torch.Generator], rewards: RewardConfig) -> LiveRollout:
        """Play `configs` to the end in lock-step with the stochastic policy (PPO's rollout)."""
        if not self.workers or len(configs) == 1:
            return collect(VecEnv(configs, sinks, self.data), net, generators, rewards)
        shares = self._shares(len(configs))
        state = _weights(net)
        played = self._on_workers(_play_share, [([configs[i] for i in share], state, self.hidden,
                                                 [generators[i].get_state() for i in share], rewards) for share in shares])
        merged = LiveRollout.empty(len(configs))
        for share, (events, live) in zip(shares, played):
            for k, i in enumerate(share):
                sinks[i].append(events[k])
                for field in ("obs", "mask", "action", "log_prob", "value", "reward"):
                    getattr(merged, field)[i] = getattr(live, field)[k]
            merged.steps += live.steps
        return merged

    def play_greedy(self, configs: Sequence[RunConfig], sinks: Sequence[Sink], net: PolicyNet,
                    max_params: int) -> list[RunResult | None]:
        """Play each of `configs` alone with the greedy policy (checkpoint selection: the runs have seeds of
        their own, so they cannot share lock-step), one after another here or split over the workers; each
        run's result (None: it failed)."""
        if not self.workers or len(configs) == 1:
            return _play_greedy(self.data, configs, sinks, net, max_params)
        shares = self._shares(len(configs))
        state = _weights(net)
        played = self._on_workers(_play_greedy_share, [([configs[i] for i in share], state, self.hidden, max_params)
                                                       for share in shares])
        results: list[RunResult | None] = [None] * len(configs)
        for share, (events, share_results) in zip(shares, played):
            for k, i in enumerate(share):
                sinks[i].append(events[k])
                results[i] = share_results[k]
        return results

    def _shares(self, n: int) -> list[list[int]]:
        """Runs 0..n-1 dealt round-robin over the workers (no empty share)."""
        return [list(range(w, n, len(self.workers))) for w in range(min(len(self.workers), n))]

    def _on_workers(self, job: Callable, shares: list[tuple]) -> list[Any]:
        """`job(data, *share)` for each share on a worker of its own, at once; their answers in order."""
        for worker, share in zip(self.workers, shares):
            worker.send((job, share))
        return [worker.receive() for worker, _ in zip(self.workers, shares)]


def _weights(net: PolicyNet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


class _Worker:
    """One rollout process and the job's end of its pipe. Every message back is (ok, value)."""

    def __init__(self, context, task: str):
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(theirs, task), daemon=True, name="esper-rollout")
        self.process.start()
        theirs.close()

    def send(self, share: tuple) -> None:
        try:
            self.conn.send(share)
        except (BrokenPipeError, ConnectionResetError):
            self._died()

    def receive(self) -> Any:
        try:
            ok, value = self.conn.recv()
        except (EOFError, ConnectionResetError):
            self._died()
        if not ok:
            raise value
        return value

    def _died(self) -> NoReturn:
        self.process.join(timeout=5)
        raise RunFailed(f"a rollout worker process died (exit code {self.process.exitcode})") from None


def _serve(conn, task: str) -> None:
    """A worker's loop: load the task's data once, then play each share it is sent (a job of this module and
    its arguments) until the job hangs up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the job's to handle; it stops the workers
    try:
        data = load_task_data(task, RunConfig().data_seed)
    except Exception as exc:
        conn.send((False, exc))
        return
    conn.send((True, None))
    while True:
        try:
            job, share = conn.recv()
        except EOFError:  # the job has gone
            return
        try:
            conn.send((True, job(data, *share)))
        except Exception as exc:
            conn.send((False, exc))


def _play_share(data: TaskData, configs: list[RunConfig], state: dict[str, torch.Tensor], hidden: int,
                generator_states: list[torch.Tensor], rewards: RewardConfig) -> tuple[list[list[Event]], LiveRollout]:
    """In a worker: play `configs` in lock-step with the policy `state`; each episode's events and the rollout."""
    net = _policy(configs[0].task, state, hidden)
    generators = [torch.Generator() for _ in generator_states]
    for g, s in zip(generators, generator_states):
        g.set_state(s)
    sinks = [ListSink() for _ in configs]
    live = collect(VecEnv(configs, sinks, data), net, generators, rewards)
    return [sink.events for sink in sinks], live


def _play_greedy_share(data: TaskData, configs: list[RunConfig], state: dict[str, torch.Tensor], hidden: int,
                       max_params: int) -> tuple[list[list[Event]], list[RunResult | None]]:
    """In a worker: play each of `configs` alone with the greedy policy `state`; each run's events and result."""
    sinks = [ListSink() for _ in configs]
    results = _play_greedy(data, configs, sinks, _policy(configs[0].task, state, hidden), max_params)
    return [sink.events for sink in sinks], results


def _play_greedy(data: TaskData, configs: Sequence[RunConfig], sinks: Sequence[Sink], net: PolicyNet,
                 max_params: int) -> list[RunResult | None]:
    controller = PolicyController(net, max_params=max_params)
    return [play(VecEnv([config], [sink], data), [controller])[0] for config, sink in zip(configs, sinks)]


def _policy(task: str, state: dict[str, torch.Tensor], hidden: int) -> PolicyNet:
    net = PolicyNet(spec_for_task(task), hidden)
    net.load_state_dict(state)
    return net
