"""The learners' dataset as a projection of a run's log: which steps an episode keeps, and which runs it refuses."""

import msgspec
import pytest
from fake_runs import iter_events, plan_run, write_batches, write_run

from esper.leyline import CommandIssued, EpochEnded, RunStarted
from esper.simic.dataset import IncompatibleRun, replay_episode, workspace_episodes
from esper.simic.features import spec_for_run
from esper.simic.rewards import RewardConfig
from esper.store import Workspace

EVENTS = list(iter_events(plan_run("heuristic", 0)))
SPEC = spec_for_run(EVENTS[0])
WHOLE = replay_episode(EVENTS, SPEC)


def cut_after(kind: type, nth: int) -> list:
    """The run's events up to and including its `nth` event of `kind` (a run killed there)."""
    at = [i for i, e in enumerate(EVENTS) if isinstance(e, kind)][nth]
    return EVENTS[: at + 1]


def test_a_finished_run_is_one_episode_ending_done():
    decisions = sum(isinstance(e, CommandIssued) for e in EVENTS)
    assert len(WHOLE) == decisions and WHOLE.done.tolist() == [False] * (decisions - 1) + [True]
    assert not WHOLE.next_obs[-1].any() and (WHOLE.next_obs[:-1] == WHOLE.obs[1:]).all()


@pytest.mark.parametrize("kind", [EpochEnded, CommandIssued])
def test_a_run_cut_short_keeps_the_steps_whose_outcome_and_next_observation_are_logged(kind):
    """Cut after an epoch, the last step has its outcome but no next observation; cut after a command, it has
    neither. Either way it is left out, and nothing is `done`: the episode was cut short, not ended."""
    events = cut_after(kind, 10)
    kept = sum(isinstance(e, CommandIssued) for e in events) - 1
    episode = replay_episode(events, SPEC)
    assert len(episode) == kept and not episode.done.any()
    assert (episode.obs == WHOLE.obs[:kept]).all() and (episode.next_obs == WHOLE.next_obs[:kept]).all()
    assert (episode.reward == WHOLE.reward[:kept]).all()


@pytest.mark.parametrize("field", ["slots", "blueprints"])
def test_a_run_of_other_slots_or_other_blueprints_is_refused(field):
    started: RunStarted = EVENTS[0]
    other = msgspec.structs.replace(started, **{field: list(reversed(getattr(started, field)))})
    with pytest.raises(IncompatibleRun, match="the policy expects"):
        replay_episode([other, *EVENTS[1:]], SPEC)


def test_a_workspace_run_without_one_complete_step_is_left_out_with_a_note(tmp_path):
    whole = write_run(tmp_path, "heuristic", 0)
    write_batches(tmp_path, plan_run("heuristic", 1)[:2], "cut-in-its-first-epoch")
    with Workspace.at(tmp_path).reader() as reader:
        episodes, notes = workspace_episodes(reader, [whole, "cut-in-its-first-epoch"], SPEC, RewardConfig())
    assert [e.run_id for e in episodes] == [whole] and len(episodes[0]) == len(WHOLE)
    assert notes == ["skipped run cut-in-its-first-epoch: it has no complete step"]
