"""`esper.fit`: a user's grown model on the user's own batches and loss, logged as `esper run` logs a task."""

import json

import pytest
import torch
import torch.nn.functional as F
from cli_runner import invoke, one_line_error
from torch import nn

import esper
from esper.errors import BadInput
from esper.leyline import RunStarted
from esper.nissa.runstate import RunState
from esper.simic.dataset import replay_episode
from esper.simic.features import spec_for_run
from esper.store import Workspace
from esper.tolaria.userdata import UserData

KNOBS = {"warmup_epochs": 1, "finish_epochs": 0, "min_gain": 1.0}


def small_model() -> esper.GrowableModel:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    return esper.grow(model, ["1", "3"], example=torch.zeros(1, 3, 8, 8))


def batches(n: int, seed: int, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Images whose first channel says the class."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, 4, (size,), generator=g)
        x = 0.3 * torch.randn(size, 3, 8, 8, generator=g)
        x[:, 0] += y.float()[:, None, None] - 1.5
        out.append((x, y))
    return out


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    with torch.random.fork_rng():
        result = esper.fit(small_model(), train=batches(4, 1), val=batches(2, 2), epochs=6, heuristic=KNOBS,
                           task="tiny", workspace=str(ws))
    return ws, result


def test_the_run_is_logged_as_user_code_with_its_settings(fitted):
    ws, result = fitted
    with Workspace(ws).reader() as reader:
        events = [r.event for r in reader.read_run(result.run_id)]
    started = events[0]
    assert isinstance(started, RunStarted) and started.user_code
    assert started.preset.host == "torch.nn.modules.container.Sequential" and started.preset.batch_size == 0
    assert (started.config.task, started.config.controller, started.config.epochs) == ("tiny", "heuristic", 6)
    assert started.config.heuristic.warmup_epochs == 1
    assert started.slots == ["1", "3"] and started.seed_sizes["1"]["conv_light"] > 0
    assert result.run_id.startswith("tiny-heuristic-0-")
    assert sum(result.seeds.values()) >= 1, "the heuristic germinated nothing: the run would prove little"


def test_replay_query_and_report_read_it_unchanged(fitted, tmp_path):
    ws, result = fitted
    replay = invoke("replay", result.run_id, "--json", workspace=ws)
    assert replay.exit_code == 0, replay.stderr
    assert json.loads(replay.stdout)["status"] == "finished"
    query = invoke("query", "SELECT payload->>'$.config.task' AS task, count(*) AS n FROM events GROUP BY 1",
                   "--format", "json", workspace=ws)
    assert query.exit_code == 0, query.stderr
    assert json.loads(query.stdout)[0]["task"] == "tiny"
    report = invoke("report", result.run_id, "--out", tmp_path / "report.html", workspace=ws)
    assert report.exit_code == 0, report.stderr
    assert (tmp_path / "report.html").stat().st_size > 0


def test_verify_says_in_one_line_that_user_code_cannot_be_reexecuted(fitted):
    ws, result = fitted
    line = one_line_error(invoke("replay", result.run_id, "--verify", workspace=ws))
    assert "came from user code" in line and "cannot be re-executed" in line


def test_iql_learns_from_it(fitted, tmp_path):
    ws, result = fitted
    with Workspace(ws).reader() as reader:
        episode = replay_episode(reader.read_run(result.run_id), spec_for_run(reader.read_run(result.run_id)[0].event))
    assert len(episode.observations) == 6  # one step per epoch
    learned = invoke("iql", "--task", "tiny", "--steps", "3", "--batch-size", "4", "--out", tmp_path / "p.pt", "--json",
                     workspace=ws)
    assert learned.exit_code == 0, learned.stderr
    assert json.loads(learned.stdout.strip().splitlines()[-1])["runs"] == 1


def test_any_loss_and_score_from_a_function_of_batches(tmp_path):
    calls = []

    def loss(output, y):
        calls.append(len(y))
        return F.cross_entropy(output, y)

    def train():
        return iter(batches(3, 1))  # a function: each epoch draws afresh

    result = esper.fit(small_model(), train=train, val=batches(1, 2), epochs=2, controller="static", loss=loss,
                       score=lambda output, y: 0.25, workspace=str(tmp_path))
    assert len(calls) >= 2 * 3
    assert result.val_accuracy == result.test_accuracy == 0.25
    with Workspace(tmp_path).reader() as reader:
        state = RunState.fold(reader.read_run(result.run_id))
    assert [e.val_accuracy for e in state.epochs] == [0.25, 0.25]


def test_an_unsized_training_set_counts_its_batches_in_the_first_pass():
    data = UserData(lambda: iter(batches(3, 1)), batches(1, 2), batches(1, 2), F.cross_entropy)
    assert data.steps() == 1  # not known yet
    assert len(list(data.batches("train"))) == 3
    assert data.steps() == 3
    assert UserData(batches(5, 1), [], [], F.cross_entropy).steps() == 5


@pytest.mark.parametrize("change,message", [
    ({"train": iter(batches(2, 1))}, "train is an iterator, which runs out after one epoch"),
    ({"val": [(torch.zeros(2, 3, 8, 8), torch.zeros(2))]}, "y is a torch.float32 tensor, not class indices"),
    ({"val": []}, "val holds no batches"),
    ({"task": "cifar10"}, "task 'cifar10' is a built-in task's name"),
    ({"blueprints": ["tree"]}, "blueprints: a list drawn from"),
    ({"heuristic": {"warmup": 1}}, "heuristic: .*warmup"),
    ({"heuristic": {"warmup_epochs": -1}}, "heuristic: warmup_epochs cannot be negative"),
    ({"heuristic": 3}, "heuristic: a HeuristicConfig or a dict of its knobs, not int"),
    ({"optimizer": "lbfgs"}, "optimizer must be 'adam' or 'sgd'"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"controller": "oracle"}, "unknown controller 'oracle'"),
    ({"controller": "scratch"}, "controller 'scratch' rebuilds a built-in run"),
    ({"model": nn.Linear(2, 2)}, r"esper.grow\(model, slots=\[...\], example=x\) first"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, change, message):
    args = {"model": small_model(), "train": batches(2, 1), "val": batches(1, 2), "epochs": 1,
            "workspace": str(tmp_path / "ws"), **change}
    with pytest.raises(BadInput, match=message) as info:
        esper.fit(args.pop("model"), args.pop("train"), args.pop("val"), **args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "ws").exists()
