"""Controllers: pure `decide(observation) -> Command`. They read signals and emit commands; they know
no optimizer and no module. Every decision becomes a `CommandIssued` event."""

import random
from typing import Iterable, Protocol

from esper.errors import BadInput
from esper.leyline.commands import Advance, Command, Cull, Germinate, Wait
from esper.leyline.config import HeuristicConfig
from esper.leyline.events import CommandIssued
from esper.leyline.garden import legal_commands
from esper.leyline.stages import SeedStage
from esper.tamiyo.observation import Observation


class Controller(Protocol):
    name: str

    def decide(self, obs: Observation) -> Command: ...


class StaticController:
    """Never grows: the host alone. Also the controller of `scratch` runs, whose seeds are built up front."""

    name = "static"

    def decide(self, obs: Observation) -> Command:
        return Wait()


class ScratchController(StaticController):
    """The from-scratch baseline: the final architecture of another run is built up front (see
    `RunConfig.architecture`) and trained from initialisation; nothing grows during the run."""

    name = "scratch"


class HeuristicController:
    """Germinate on a plateau once the host is stable; advance when gates open; cull on regression.

    Blueprints are chosen by rotation (the n-th germination takes the n-th blueprint), skipping those
    culled recently and those the lifecycle refuses (a `max_params` cap); the slot is the free one that has
    grown least so far.
    """

    name = "heuristic"

    def __init__(self, config: HeuristicConfig = HeuristicConfig()):
        self.config = config

    def decide(self, obs: Observation) -> Command:
        return self._cull(obs) or self._advance(obs) or self._germinate(obs) or Wait()

    def _cull(self, obs: Observation) -> Command | None:
        cfg = self.config
        for view in obs.slots:
            if view.stage is SeedStage.BLENDING and view.alpha >= 0.5 and view.contribution is not None \
                    and view.contribution < cfg.cull_contribution:
                return Cull(seed_id=view.seed_id, reason=f"contribution {view.contribution:+.3f} while blending")
            if view.stage is SeedStage.TRAINING and view.epochs_in_stage >= cfg.max_training_epochs and not view.gate_open:
                return Cull(seed_id=view.seed_id, reason=f"gate still closed after {view.epochs_in_stage} epochs")
        return None

    def _advance(self, obs: Observation) -> Command | None:
        for view in obs.slots:
            if view.gate_open:
                return Advance(seed_id=view.seed_id)
        return None

    def _germinate(self, obs: Observation) -> Command | None:
        cfg = self.config
        live = [v for v in obs.slots if v.seed_id is not None and v.stage in (
            SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING)]
        if obs.epoch < cfg.warmup_epochs or len(live) >= cfg.max_live_seeds:
            return None
        if obs.epochs - obs.epoch < cfg.finish_epochs:
            return None
        history = obs.accuracy_history
        recent_gain = history[-1] - history[-3] if len(history) >= 3 else 0.0
        if obs.plateau < cfg.plateau_epochs and recent_gain >= cfg.min_gain:
            return None
        free = [v for v in obs.slots if v.seed_id is None and _grows_any(obs, v.slot)]
        if not free:
            return None
        slot = min(free, key=lambda v: (v.fossilized, obs.slots.index(v))).slot
        blueprint = self._blueprint(obs, slot)
        return None if blueprint is None else Germinate(slot=slot, blueprint=blueprint)

    def _blueprint(self, obs: Observation, slot: str) -> str | None:
        """The next blueprint in rotation not culled lately and that the lifecycle accepts (`max_params`)."""
        germinated = len(obs.garden.seeds)
        order = list(obs.blueprints[germinated % len(obs.blueprints):]) + list(obs.blueprints[:germinated % len(obs.blueprints)])
        for blueprint in order:
            culled_at = obs.culled_recently.get(blueprint)
            if culled_at is not None and obs.epoch - culled_at < self.config.cull_penalty_epochs:
                continue
            if obs.garden.legal(Germinate(slot=slot, blueprint=blueprint)):
                return blueprint
        return None


def _grows_any(obs: Observation, slot: str) -> bool:
    """Whether any of the run's blueprints grows in `slot` (not so after an embedding when only `repeat` is named); a
    log that records no sizes for it (before `seed_sizes`) offers every blueprint everywhere, as the lifecycle reads it."""
    sizes = obs.garden.seed_sizes.get(slot)
    return sizes is None or any(b in sizes for b in obs.blueprints)


def idle_heuristic(config: HeuristicConfig, epochs: int) -> str | None:
    """Why the heuristic cannot germinate at all in a run of `epochs` (None when it can): it decides after each
    epoch from `warmup_epochs` on, and not when fewer than `finish_epochs` remain."""
    first, last = max(config.warmup_epochs, 1), epochs - config.finish_epochs
    if last >= first:
        return None
    return (f"the heuristic germinates from epoch {first} until {config.finish_epochs} epochs before the end, so a "
            f"run of {epochs} epoch{'s' * (epochs != 1)} grows nothing")


def seedless_note(settings: list[str], controller: str) -> str:
    """What to say of `settings` (how seeds train or blend) given to a controller that germinates no seed."""
    verb = "changes" if len(settings) == 1 else "change"
    return f"{' and '.join(settings)} {verb} nothing here: controller {controller} germinates no seed"


class RandomController:
    """Uniform over the commands the lifecycle would accept now; seeded. Makes exploratory datasets."""

    name = "random"

    def __init__(self, seed: int):
        self._rng = random.Random(seed)

    def decide(self, obs: Observation) -> Command:
        return self._rng.choice(legal_commands(obs.garden))

    def rng_state(self) -> tuple:
        """What a checkpoint saves of this controller (`esper.tolaria.checkpoint`): its draws go on from there."""
        return self._rng.getstate()

    def set_rng_state(self, state: tuple) -> None:
        self._rng.setstate(state)


class ScriptEnded(BadInput):
    """The re-execution asks for a decision after the last one recorded."""


class ScriptedController:
    """Replays recorded decisions in order (what `esper replay --verify` re-executes with)."""

    def __init__(self, name: str, issued: Iterable[CommandIssued]):
        self.name = name
        self._issued = list(issued)
        self._next = 0
        self.decision_info: dict = {}

    def decide(self, obs: Observation) -> Command:
        if self._next >= len(self._issued):
            raise ScriptEnded("the recorded run issued fewer commands than the re-execution asks for")
        issued = self._issued[self._next]
        self._next += 1
        self.decision_info = {"log_prob": issued.log_prob, "value": issued.value, "mask": issued.mask}
        return issued.command


CONTROLLERS = ("heuristic", "static", "scratch", "random", "policy", "sampled")
POLICY_CONTROLLERS = ("policy", "sampled")
"""The controllers that play a trained policy file, greedily or sampling."""


def check_controller(name: str) -> None:
    if name not in CONTROLLERS:
        raise BadInput(f"unknown controller {name!r} (known: {', '.join(CONTROLLERS)})")


def make_controller(name: str, seed: int, policy: str | None = None,
                    heuristic: HeuristicConfig = HeuristicConfig()) -> Controller:
    check_controller(name)
    if name == "heuristic":
        return HeuristicController(heuristic)
    if name == "static":
        return StaticController()
    if name == "scratch":
        return ScratchController()
    if name == "random":
        return RandomController(seed)
    # policy or sampled: a trained policy, greedy or sampling (seeded by the run's seed)
    if not policy:
        raise BadInput(f"controller {name} needs a policy file (written by `esper ppo` or `esper iql`)")
    from esper.simic.policy import load_policy_controller

    return load_policy_controller(policy, sample_seed=seed if name == "sampled" else None)
