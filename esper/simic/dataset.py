"""Experience from the event log: the one projection both learners read.

`EpisodeProjection` folds one run's events and cuts them into steps, one per `CommandIssued`:
the observation the controller decided on (rebuilt by Tamiyo's `ObservationProjection`, as the agent
saw it live), the legal-action masks, the action the command amounts to, and, once the next
`EpochEnded` (or `RunFinished`) arrives, the step's reward (`esper.simic.rewards`). A policy's own
`log_prob`, `value` and `mask` come from the `CommandIssued` itself.

PPO builds each update's batch by reading back the episodes it has just played, through this projection;
IQL reads any runs of the workspace (heuristic, random, PPO) through the very same code. So what a
learner learned from is exactly what is on disk.
"""

from typing import Iterable

import attrs
import numpy as np
import torch

from esper.errors import BadInput, LogAltered, first_line
from esper.leyline.events import CommandIssued, EpochEnded, Event, RunFinished, RunStarted, SeedTransitioned
from esper.leyline.stages import SeedStage
from esper.simic.features import ActionMask, FeatureSpec, action_mask, encode, from_command, joint_index
from esper.simic.rewards import COMPONENTS, RewardConfig, StepOutcome, components, reward
from esper.store.workspace import RUNS_COLUMNS
from esper.tamiyo.observation import Observation, ObservationProjection


class IncompatibleRun(BadInput):
    """A run whose slots or blueprints are not those of the policy's feature spec."""


@attrs.define
class Step:
    observation: Observation
    obs: np.ndarray
    mask: ActionMask
    action: tuple[int, int, int]
    log_prob: float | None
    value: float | None
    accuracy_before: float
    params_before: int
    fossilized_contribution: float = 0.0
    parts: dict[str, float] | None = None
    """Reward components, once the step's outcome is known."""
    done: bool = False


@attrs.frozen(eq=False)
class Episode:
    """One run's steps as arrays (T steps)."""

    run_id: str
    observations: list[Observation]
    obs: np.ndarray
    """float32 (T, obs_dim)"""
    next_obs: np.ndarray
    """float32 (T, obs_dim); zeros after the last step"""
    mask: np.ndarray
    """bool (T, mask_dim): `ActionMask.flat()`"""
    action: np.ndarray
    """int64 (T, 3): op, slot, blueprint"""
    joint: np.ndarray
    """int64 (T,): the action's index in the flat action space"""
    log_prob: np.ndarray
    """float32 (T,): the behaviour policy's log-probability (NaN when a non-learned controller decided)"""
    value: np.ndarray
    """float32 (T,): the behaviour policy's value estimate (NaN when absent)"""
    components: np.ndarray
    """float32 (T, 4): unweighted reward components, in `COMPONENTS` order"""
    reward: np.ndarray
    """float32 (T,)"""
    done: np.ndarray
    """bool (T,): the run ended after this step"""
    final_val_accuracy: float | None
    final_params: int | None

    def __len__(self) -> int:
        return len(self.reward)


class EpisodeProjection:
    """Folds one run's events into steps. `apply` every event in order, then `episode()`."""

    def __init__(self, spec: FeatureSpec, rewards: RewardConfig = RewardConfig(), run_id: str = ""):
        self.spec = spec
        self.rewards = rewards
        self.run_id = run_id
        self.observations = ObservationProjection()
        self.steps: list[Step] = []
        self.pending: Step | None = None
        self.finished: RunFinished | None = None

    def apply(self, event: Event) -> None:
        proj = self.observations
        if isinstance(event, RunStarted):
            if tuple(event.slots) != self.spec.slots or tuple(event.blueprints) != self.spec.blueprints:
                raise IncompatibleRun(
                    f"run {self.run_id or '?'} has slots {event.slots} and blueprints {event.blueprints}; "
                    f"the policy expects {list(self.spec.slots)} and {list(self.spec.blueprints)}"
                )
            if event.config.commands_per_epoch != 1:  # a step is an epoch: its reward is what the epoch did
                raise IncompatibleRun(f"run {self.run_id or '?'} took up to {event.config.commands_per_epoch} commands "
                                      "an epoch; a policy learns from runs that take one")
        elif isinstance(event, CommandIssued):
            self._decision(event)
        elif isinstance(event, SeedTransitioned) and self.pending is not None:
            if event.to_stage == SeedStage.FOSSILIZED.value and event.trigger == "advance":
                t = proj.garden.seeds[event.seed_id].telemetry
                if t is not None and t.contribution is not None:
                    self.pending.fossilized_contribution += t.contribution
        elif isinstance(event, EpochEnded) and self.pending is not None:
            self._close(event.val_accuracy, event.params, final=False)
        elif isinstance(event, RunFinished):
            self.finished = event
            if self.pending is not None:
                self._close(event.val_accuracy, event.params, final=True)
        proj.apply(event)

    def _decision(self, event: CommandIssued) -> None:
        obs = self.observations.observe()
        garden = obs.garden
        mask = ActionMask.from_log(event.mask, self.spec) if event.mask else action_mask(garden, self.spec)
        self.pending = Step(
            observation=obs, obs=encode(obs, self.spec), mask=mask, action=from_command(event.command, garden, self.spec),
            log_prob=event.log_prob, value=event.value, accuracy_before=obs.val_accuracy, params_before=obs.params,
        )
        self.steps.append(self.pending)

    def _close(self, accuracy: float, params: int, final: bool) -> None:
        step = self.pending
        assert step is not None
        outcome = StepOutcome(step.accuracy_before, accuracy, step.params_before, params,
                              self.observations.host_params, step.fossilized_contribution, final)
        step.parts = components(outcome, self.rewards.param_budget)
        step.done = final
        self.pending = None

    def episode(self) -> Episode:
        """The steps with a known outcome. A run that did not finish keeps the steps whose next
        observation exists (not `done`: the episode was cut short, not ended)."""
        all_steps = self.steps
        keep = [i for i, s in enumerate(all_steps) if s.parts is not None and (s.done or i + 1 < len(all_steps))]
        steps = [all_steps[i] for i in keep]
        dim = self.spec.obs_dim
        next_obs = np.zeros((len(steps), dim), np.float32)
        for row, i in enumerate(keep):
            if not all_steps[i].done:
                next_obs[row] = all_steps[i + 1].obs
        parts = np.asarray([[s.parts[c] for c in COMPONENTS] for s in steps], np.float32).reshape(-1, len(COMPONENTS))
        with np.errstate(over="ignore"):  # a reward past float32's range is infinite; the learner says it diverged
            rewards = np.asarray([reward(s.parts, self.rewards) for s in steps], np.float32)
        return Episode(
            run_id=self.run_id,
            observations=[s.observation for s in steps],
            obs=np.asarray([s.obs for s in steps], np.float32).reshape(-1, dim),
            next_obs=next_obs,
            mask=np.asarray([s.mask.flat() for s in steps], bool).reshape(-1, self.spec.mask_dim),
            action=np.asarray([s.action for s in steps], np.int64).reshape(-1, 3),
            joint=np.asarray([joint_index(*s.action, self.spec) for s in steps], np.int64),
            log_prob=np.asarray([np.nan if s.log_prob is None else s.log_prob for s in steps], np.float32),
            value=np.asarray([np.nan if s.value is None else s.value for s in steps], np.float32),
            components=parts,
            reward=rewards,
            done=np.asarray([s.done for s in steps], bool),
            final_val_accuracy=self.finished.val_accuracy if self.finished else None,
            final_params=self.finished.params if self.finished else None,
        )


def replay_episode(events: Iterable, spec: FeatureSpec, rewards: RewardConfig = RewardConfig(), run_id: str = "") -> Episode:
    """One run's events (or `Recorded` rows) as an `Episode`."""
    projection = EpisodeProjection(spec, rewards, run_id)
    for item in events:
        projection.apply(getattr(item, "event", item))
    return projection.episode()


def batch(episodes: list[Episode]) -> dict[str, torch.Tensor]:
    """Episodes concatenated into tensors (keys as `Episode`'s array fields)."""
    keys = ("obs", "next_obs", "mask", "action", "joint", "log_prob", "value", "components", "reward", "done")
    return {k: torch.from_numpy(np.concatenate([getattr(e, k) for e in episodes])) for k in keys}


# ---- runs of a workspace -----------------------------------------------------------------------

def select_runs(reader, where: str | None, task: str) -> list[str]:
    """Run ids of `task` whose row of the reader's `runs` view satisfies the SQL condition `where` (all if None)."""
    import duckdb

    if where is not None and not where.strip():
        raise BadInput("the runs filter is empty: give an SQL condition over the runs view, e.g. \"controller = 'heuristic'\"")
    reader.lock_down()
    runs = reader.con.table("runs")  # named runs, so a condition may say runs.controller or correlate a subquery
    runs = runs.filter(duckdb.ColumnExpression("task") == duckdb.ConstantExpression(task))
    if where is None:
        return [row[0] for row in runs.project("run_id").order("run_id").fetchall()]
    try:  # parsed as one expression, never pasted into SQL: it cannot close the condition and add to the query
        return [row[0] for row in runs.filter(where).project("run_id").order("run_id").fetchall()]
    except duckdb.Error as exc:
        raise BadInput(f"bad runs filter {where!r}: {first_line(exc)} (give one SQL condition over the columns "
                       f"{', '.join(RUNS_COLUMNS)})") from None


def workspace_episodes(reader, run_ids: list[str], spec: FeatureSpec, rewards: RewardConfig) -> tuple[list[Episode], list[str]]:
    """The episodes of `run_ids`, and a note for each run left out (other slots or blueprints, no steps) or
    unsealed. Each run's hash chain is checked first: a policy learnt from an altered log is in doubt, so
    `LogAltered` names the run."""
    episodes, notes = [], []
    for run_id in run_ids:
        try:
            checked = reader.read_checked(run_id)
        except LogAltered as exc:
            raise LogAltered(f"{exc}: leave it out of the dataset by adding run_id <> '{run_id}' to --runs "
                             f"(with AND to a filter of your own)") from None
        if checked.unsealed:
            notes.append(checked.unsealed)
        try:
            episode = replay_episode(checked.recorded, spec, rewards, run_id)
        except IncompatibleRun as exc:
            notes.append(f"skipped {exc}")
            continue
        if len(episode) == 0:
            notes.append(f"skipped run {run_id}: it has no complete step")
            continue
        episodes.append(episode)
    return episodes, notes

