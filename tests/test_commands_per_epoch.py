"""Several commands after an epoch (`RunConfig.commands_per_epoch`): the controller decides again on what each
accepted command left, until it waits, the lifecycle refuses one, or the epoch's commands run out; the epoch's
events are still stored whole, and the run re-executes."""

import json
from collections import Counter

import pytest
from cli_runner import invoke, one_line_error
from fake_runs import SameSlotEveryEpoch

from esper.leyline import CommandIssued, CommandRejected, HeuristicConfig, RunConfig, SeedGerminated, Wait
from esper.simic.dataset import workspace_episodes
from esper.simic.env import VecEnv
from esper.simic.features import spec_for_task
from esper.simic.rewards import RewardConfig
from esper.store import Workspace
from esper.tolaria.data import load_task_data
from esper.tolaria.loop import ListSink, execute, resolve_config

AT_ONCE = ["--epochs", "5", "--heuristic", "warmup_epochs=1", "--heuristic", "min_gain=1.0", "--heuristic",
           "finish_epochs=0", "--heuristic", "max_live_seeds=3", "--commands-per-epoch", "3"]
"""A short run whose gardener may hold a seed in each of the three slots, and germinate them in one epoch."""


@pytest.fixture(scope="module")
def at_once(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("at-once")
    result = invoke("run", *AT_ONCE, "--json", workspace=workspace)
    assert result.exit_code == 0, result.stderr
    run_id = json.loads(result.stdout)["run_id"]
    with Workspace(workspace).reader() as reader:
        events = [r.event for r in reader.read_run(run_id)]
    return workspace, run_id, events, result.stderr


@pytest.mark.slow  # a run through the CLI (the at_once fixture)
def test_the_heuristic_germinates_into_every_free_slot_in_one_epoch(at_once):
    _, _, events, _ = at_once
    germinated = Counter(e.epoch for e in events if isinstance(e, SeedGerminated))
    assert germinated[1] == 3  # early, mid and late after the first epoch
    per_epoch = Counter(e.epoch for e in events if isinstance(e, CommandIssued))
    assert max(per_epoch.values()) == 3 and set(per_epoch) == set(range(1, 6))
    for epoch, count in per_epoch.items():  # the decisions of an epoch end at a Wait or at the third command
        commands = [e.command for e in events if isinstance(e, CommandIssued) and e.epoch == epoch]
        assert isinstance(commands[-1], Wait) or count == 3
        assert not any(isinstance(c, Wait) for c in commands[:-1])


@pytest.mark.slow  # a run through the CLI, re-executed
def test_a_run_of_several_commands_an_epoch_re_executes_and_says_each(at_once):
    workspace, run_id, _, said = at_once
    verified = invoke("replay", run_id, "--verify", workspace=workspace)
    assert verified.exit_code == 0, verified.stderr
    lines = said.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("[  1/5]"))
    assert "→ germinate" in lines[first] and lines[first + 1].lstrip().startswith("→ germinate")
    assert lines[first + 1].index("→") == lines[first].index("→")  # under the epoch's first command


@pytest.mark.parametrize("commands", [1, 3])
def test_a_refused_command_ends_the_epochs_decisions(commands):
    controller, sink = SameSlotEveryEpoch(), ListSink()
    config = resolve_config(RunConfig(epochs=2, seed=1, commands_per_epoch=commands))
    execute(config, controller, sink)
    issued = Counter(e.epoch for e in sink.events if isinstance(e, CommandIssued))
    rejected = Counter(e.epoch for e in sink.events if isinstance(e, CommandRejected))
    if commands == 1:
        assert issued == {1: 1, 2: 1} and rejected == {2: 1}
    else:  # accepted, refused: asked no more
        assert issued == {1: 2, 2: 1} and rejected == {1: 1, 2: 1}
    assert controller.asked == sum(issued.values())
    assert sink.batches == 4  # RunStarted, each epoch whole, RunFinished


@pytest.mark.slow  # a run through the CLI (the at_once fixture)
def test_the_learners_leave_out_a_run_of_several_commands_an_epoch(at_once):
    workspace, run_id, _, _ = at_once
    with Workspace(workspace).reader() as reader:
        episodes, notes = workspace_episodes(reader, [run_id], spec_for_task("mnist1d"), RewardConfig())
    assert episodes == []
    assert notes == [f"skipped run {run_id} took up to 3 commands an epoch; a policy learns from runs that take one"]


def test_lock_step_runs_take_one_command_an_epoch():
    config = resolve_config(RunConfig(epochs=2, commands_per_epoch=2, heuristic=HeuristicConfig()))
    with pytest.raises(ValueError, match="one command an epoch"):
        VecEnv([config], [ListSink()], load_task_data("mnist1d", config.data_seed))


def test_no_fewer_than_one_command_an_epoch(tmp_path):
    said = one_line_error(invoke("run", "--commands-per-epoch", "0", workspace=tmp_path))
    assert said == "esper: commands_per_epoch must be at least 1, got 0"
    assert not list(tmp_path.glob("*.duckdb"))

