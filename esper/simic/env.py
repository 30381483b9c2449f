"""n training runs in lock-step over shared data batches: the environment of Simic.

One episode is one morphogenetic training run (a Tolaria `Session`); one step is one epoch: every run
trains the epoch on the same batches, is measured, and then takes its controller's decision.

* One loader: the batches come from one iterator over one `TaskData` (one copy per device). Each run's
  own shuffling generator still draws its permutation every epoch, so the runs, which share their
  seed, are shuffled exactly as each would be alone (`esper replay --verify` re-executes any episode).
* One host-to-device copy per batch and device: the batch is sliced once on the first device and
  copied once to each other device (`devices` are used round-robin).
* On GPU each run steps on its own CUDA stream, so the runs' small kernels overlap; on CPU the same
  code runs them one after another inside the batch loop.
* Each run owns its global torch RNG state (swapped in around its every call): a seed germinated in one
  run draws exactly the numbers it would draw in a run of its own, so lock-step changes no event. Only
  the CPU generator is swapped: the runs share the CUDA one, which is safe because a training step draws
  from its run's own generator alone (seeds are built on CPU; a test holds every blueprint to this).
"""

import contextlib
from typing import Any, Iterator, Sequence

import torch

from esper.errors import RunFailed
from esper.leyline.commands import Command
from esper.leyline.config import RunConfig
from esper.tamiyo.controllers import Controller
from esper.tamiyo.observation import Observation
from esper.tolaria.data import TaskData
from esper.tolaria.loop import RunResult, Session, Sink, failure_of


CPU_CHUNK = 8
"""Batches each run trains in one turn on CPU. Taking turns every batch costs a few per cent there
(each switch evicts the other runs' weights and optimizer state from the caches); on GPU the runs take
turns every batch, so that their streams overlap."""


def _chunks(batches: Iterator, size: int) -> Iterator[list]:
    group = []
    for item in batches:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


class Env:
    """One run of a `VecEnv`, with its own RNG state and (on GPU) its own stream."""

    def __init__(self, config: RunConfig, sink: Sink, data: TaskData):
        outer = torch.get_rng_state()
        try:
            self.session = Session(config, sink, data=data)  # seeds the global RNG and builds the host
            self.rng = torch.get_rng_state()
        finally:
            torch.set_rng_state(outer)
        self.device = self.session.trainer.device
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.failed: str | None = None
        self.result: RunResult | None = None

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Run the block as this run: its RNG state, its stream (after the work already queued for the batch)."""
        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        try:
            if self.stream is None:
                yield
            else:
                self.stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(self.stream):
                    yield
        finally:
            self.rng = torch.get_rng_state()
            torch.set_rng_state(outer)

    @property
    def active(self) -> bool:
        return self.failed is None and not self.session.done


class VecEnv:
    """Lock-step runs sharing task, seed, data seed and epoch budget (they differ only in what their
    controllers do). `configs[i].device` places run i; build them with `configs_round_robin`.

    Play them inside `with vec:`, as `execute` plays one run: if the block is interrupted (Ctrl-C,
    SIGTERM) or stopped by an error (a bug of ours: "internal error: ..."), every unfinished run is ended
    with `RunFailed` (its whole epochs kept), and however it ends, every run's writer is stopped after
    writing what it holds."""

    def __init__(self, configs: Sequence[RunConfig], sinks: Sequence[Sink], data: TaskData, chunk: int | None = None):
        if not configs or len(configs) != len(sinks):
            raise ValueError("one sink per config, at least one config")
        first = configs[0]
        for c in configs[1:]:
            if (c.task, c.seed, c.data_seed, c.epochs) != (first.task, first.seed, first.data_seed, first.epochs):
                raise ValueError("lock-step runs share one data order: give them the same task, seed, data seed and epochs")
        if any(c.commands_per_epoch != 1 for c in configs):
            raise ValueError("lock-step runs take one command an epoch (one step of an episode)")
        self.data = {}
        for c in configs:
            device = torch.device(c.device)
            if device not in self.data:
                self.data[device] = data.to(device)
        self.envs: list[Env] = []
        try:
            for c, sink in zip(configs, sinks):
                self.envs.append(Env(c, sink, self.data[torch.device(c.device)]))
        except BaseException as exc:  # the runs already started end as if the block had been entered
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self.preset = self.envs[0].session.preset
        on_gpu = any(env.stream is not None for env in self.envs)
        self.chunk = chunk or (1 if on_gpu else CPU_CHUNK)

    def __len__(self) -> int:
        return len(self.envs)

    def __enter__(self) -> "VecEnv":
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        try:
            error = None if exc is None else failure_of(exc)
            if error is not None:
                for env in self.envs:
                    if env.failed is None and env.result is None:
                        env.failed = error
                        # A run whose own write failed takes no RunFailed (`Session.fail`); when another run's
                        # append into a shared store fails, so may this one's: the others still must end.
                        with contextlib.suppress(Exception):
                            env.session.fail(env.failed)
        finally:
            for env in self.envs:
                env.session.close()

    @property
    def done(self) -> bool:
        return not any(env.active for env in self.envs)

    def step_epoch(self) -> list[Observation | None]:
        """Train every active run one epoch on the shared batches; their observations (None: failed or done)."""
        live = [env for env in self.envs if env.active]
        for env in live:
            with env.turn():
                env.session.begin_epoch()
        iterators = []
        for env in live:  # every run's generator draws its permutation, as it would alone
            trainer = env.session.trainer
            iterators.append(trainer.data.batches("train", self.preset.batch_size, trainer.generator))
        for group in _chunks(iterators[0] if live else iter(()), self.chunk):
            copies = {live[0].device: group}
            for env in live:
                if env.device not in copies:  # one copy per batch and device
                    copies[env.device] = [(x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True))
                                          for x, y in group]
                with env.turn():
                    for x, y in copies[env.device]:
                        if env.stream is not None:
                            x.record_stream(env.stream)
                            y.record_stream(env.stream)
                        env.session.trainer.train_step(x, y)
        observations: list[Observation | None] = [None] * len(self.envs)
        for i, env in enumerate(self.envs):
            if not any(env is other for other in live):
                continue
            with env.turn():
                try:
                    observations[i] = env.session.end_epoch()
                except RunFailed as exc:
                    env.failed = str(exc)
                    env.session.fail(env.failed)
        return observations

    def decide(
        self, commands: Sequence[Command | None], controller: str | Sequence[str],
        infos: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """Each run with an observation takes its command (None for the others); `controller` names who
        decided (one name, or one per run) and `infos` holds what `CommandIssued` records besides."""
        names = [controller] * len(self.envs) if isinstance(controller, str) else list(controller)
        for i, (env, command) in enumerate(zip(self.envs, commands)):
            if command is None:
                continue
            with env.turn():
                env.session.decide(command, names[i], **(infos[i] if infos else {}))
                env.session.settle()

    def finish(self) -> list[RunResult | None]:
        """`RunFinished` for every run that did not fail; their results."""
        for env in self.envs:
            if env.failed is None and env.result is None:
                with env.turn():
                    env.result = env.session.finish()
        return [env.result for env in self.envs]


def configs_round_robin(base: RunConfig, n: int, devices: Sequence[str]) -> list[RunConfig]:
    """n copies of `base`, the i-th on `devices[i % len(devices)]`."""
    import msgspec

    return [msgspec.structs.replace(base, device=devices[i % len(devices)]) for i in range(n)]


def play(vec: VecEnv, controllers: Sequence[Controller]) -> list[RunResult | None]:
    """Run every environment to the end, each with its own controller (benchmarks, tests, datasets)."""
    with vec:
        while not vec.done:
            observations = vec.step_epoch()
            commands, infos = [], []
            for obs, controller in zip(observations, controllers):
                commands.append(None if obs is None else controller.decide(obs))
                infos.append(dict(getattr(controller, "decision_info", {})) if obs is not None else {})
            vec.decide(commands, [c.name for c in controllers], infos)
        return vec.finish()
