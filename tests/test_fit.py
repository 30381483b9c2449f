"""`esper.fit`: a user's grown model on the user's own batches and loss, logged as `esper run` logs a task."""

import json

import pytest
import torch
import torch.nn.functional as F
from cli_runner import invoke, one_line_error
from torch import nn

import esper
from esper.errors import BadInput, RunFailed
from esper.leyline import EpochEnded, RunStarted, SeedGerminated, SeedTransitioned
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


def test_scratch_of_it_says_in_one_line_that_no_command_builds_the_users_model(fitted):
    ws, result = fitted
    line = one_line_error(invoke("run", "--controller", "scratch", "--like", result.run_id, workspace=ws))
    assert line == (f"esper: like {result.run_id}: a run of your own model (esper.fit, task tiny); scratch builds the "
                    "architecture of a built-in host's run"), line
    assert len(Workspace(ws).store_files()) == 1


def test_iql_learns_from_it(fitted, tmp_path):
    ws, result = fitted
    with Workspace(ws).reader() as reader:
        episode = replay_episode(reader.read_run(result.run_id), spec_for_run(reader.read_run(result.run_id)[0].event))
    assert len(episode.observations) == 6  # one step per epoch
    learned = invoke("iql", "--task", "tiny", "--steps", "3", "--batch-size", "4", "--out", tmp_path / "p.pt", "--json",
                     workspace=ws)
    assert learned.exit_code == 0, learned.stderr
    assert json.loads(learned.stdout.strip().splitlines()[-1])["runs"] == 1


def test_the_grown_models_state_dict_loads_into_a_fresh_grow_of_the_same_model(tmp_path):
    model = small_model()
    with torch.random.fork_rng():
        result = esper.fit(model, train=batches(4, 1), val=batches(2, 2), epochs=6, heuristic=KNOBS,
                           workspace=str(tmp_path))
    assert result.seeds.get("FOSSILIZED"), "nothing fossilized: the test would prove little"
    path = tmp_path / "grown.pt"
    torch.save(model.state_dict(), path)
    fresh = small_model()
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert sorted(fresh.architecture()) == sorted(model.architecture())  # fossils come back in slot order
    assert fresh.param_count() == model.param_count()
    x = batches(1, 3)[0][0]
    assert torch.equal(fresh.eval()(x), model.eval()(x))


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
    assert result.val_accuracy == 0.25
    assert result.test_accuracy is None  # no test batches: no test score, rather than the validation one again
    with Workspace(tmp_path).reader() as reader:
        state = RunState.fold(reader.read_run(result.run_id))
    assert [e.val_accuracy for e in state.epochs] == [0.25, 0.25]
    assert state.finished.test_accuracy is None
    tested = esper.fit(small_model(), train=train, val=batches(1, 2), test=batches(1, 3), epochs=1, controller="static",
                       score=lambda output, y: 0.5 if len(y) == 8 else 0.0, workspace=str(tmp_path))
    assert tested.test_accuracy == 0.5


def test_an_mlp_of_the_users_grows_on_feature_vectors(tmp_path):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(0)
    data = [(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()) for x in torch.randn(6, 8, 6, generator=g)]
    result = esper.fit(esper.grow(mlp, ["1", "3"], example=torch.zeros(1, 6)), train=data[:4], val=data[4:],
                       epochs=6, heuristic=KNOBS, workspace=str(tmp_path))
    assert sum(result.seeds.values()) >= 1 and result.params > 0
    with Workspace(tmp_path).reader() as reader:
        started = reader.read_run(result.run_id)[0].event
    assert set(started.seed_sizes["1"]) == {"mlp", "lowrank", "norm"}


def test_slots_of_two_families_each_grow_only_their_own_blueprints(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 16), nn.ReLU(),
                          nn.Linear(16, 4))
    grown = esper.grow(model, ["1", "4"], example=torch.zeros(1, 3, 8, 8))
    assert (grown.slot("1").family, grown.slot("4").family) == ("conv2d", "features")
    result = esper.fit(grown, train=batches(2, 1), val=batches(1, 2), epochs=4, controller="random",
                       workspace=str(tmp_path))
    with Workspace(tmp_path).reader() as reader:
        state = RunState.fold(reader.read_run(result.run_id))
    offered = {"1": set(esper.kasmina.BLUEPRINTS["conv2d"]), "4": set(esper.kasmina.BLUEPRINTS["features"])}
    assert {s.slot for s in state.garden.seeds.values()} == {"1", "4"}, "both slots must grow: the test proves little"
    assert all(s.blueprint in offered[s.slot] for s in state.garden.seeds.values())


def test_a_device_comes_as_a_torch_device_too(tmp_path):
    result = esper.fit(small_model(), train=batches(1, 1), val=batches(1, 2), epochs=1, controller="static",
                       device=torch.device("cpu"), workspace=str(tmp_path))
    with Workspace(tmp_path).reader() as reader:
        assert reader.read_run(result.run_id)[0].event.config.device == "cpu"


def test_a_precision_is_recorded_and_trains_autocast(tmp_path):
    """bf16 on CPU: the forward passes autocast, so the run's numbers differ from float32's."""
    ran = {p: esper.fit(small_model(), train=batches(2, 1), val=batches(1, 2), epochs=1, controller="static",
                        precision=p, workspace=str(tmp_path)) for p in ("bf16", "fp32")}
    with Workspace(tmp_path).reader() as reader:
        logs = {p: [r.event for r in reader.read_run(ran[p].run_id)] for p in ran}
    assert [logs[p][0].config.precision for p in ran] == ["bf16", "fp32"]
    losses = {p: [e.train_loss for e in logs[p] if isinstance(e, EpochEnded)] for p in ran}
    assert losses["bf16"] != losses["fp32"]  # the same run but for the autocast: only it can move the loss


def recorded_lifecycle(ws, run_id: str):
    with Workspace(ws).reader() as reader:
        return reader.read_run(run_id)[0].event.config.lifecycle


def test_a_size_cap_and_lifecycle_timings_come_as_a_dict_too_and_a_static_run_says_they_change_nothing(tmp_path):
    with pytest.warns(UserWarning, match="^lifecycle and seed_lr change nothing here: controller static germinates "
                                         "no seed$"):
        result = esper.fit(small_model(), train=batches(1, 1), val=batches(1, 2), epochs=1, controller="static",
                           lifecycle={"max_params": 5000, "blend_epochs": 3}, seed_lr=0.01, workspace=str(tmp_path))
    lifecycle = recorded_lifecycle(tmp_path, result.run_id)
    assert (lifecycle.max_params, lifecycle.blend_epochs) == (5000, 3)


@pytest.fixture
def capped_policy(fitted, tmp_path):
    """A policy file for `small_model`'s slots, trained (as its file says) under a cap of 5,000 parameters."""
    from esper.simic.policy import save_policy
    from esper.simic.ppo import make_net
    from esper.simic.rewards import RewardConfig

    ws, result = fitted
    with Workspace(ws).reader() as reader:
        spec = spec_for_run(reader.read_run(result.run_id)[0].event)
    path = tmp_path / "tiny.pt"
    save_policy(path, make_net(spec, 8, seed=1), "iql", RewardConfig(), hidden=8, max_params=5000)
    return path


@pytest.mark.parametrize("lifecycle, cap", [(None, 5000), ({"blend_epochs": 2}, 5000), ({"max_params": 7000}, 7000),
                                            ({"max_params": 0}, 0)])  # 0, given: no cap, as --max-params 0
def test_a_policy_plays_under_the_cap_it_was_trained_with_unless_the_call_gives_one(capped_policy, tmp_path,
                                                                                    lifecycle, cap):
    played = esper.fit(small_model(), batches(1, 1), batches(1, 2), epochs=1, controller="policy",
                       policy=capped_policy, lifecycle=lifecycle, workspace=str(tmp_path / "ws"))  # a Path too
    assert recorded_lifecycle(tmp_path / "ws", played.run_id).max_params == cap


def test_a_policys_cap_below_the_model_is_refused_naming_the_policy(capped_policy, tmp_path):
    wide = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))  # small_model's slots, wider
    model = esper.grow(wide, ["1", "3"], example=torch.zeros(1, 3, 8, 8))
    with pytest.raises(BadInput, match=r"^the policy was trained under max_params 5,000, below the model's own "
                                       r"10,276 parameters: give lifecycle=\{'max_params': N\} \(0: no cap\)$"):
        esper.fit(model, batches(1, 1), batches(1, 2), epochs=1, controller="policy", policy=capped_policy,
                  workspace=str(tmp_path / "ws"))
    assert not (tmp_path / "ws").exists()


def test_a_heuristic_that_cannot_germinate_in_the_epochs_given_is_warned_about(tmp_path):
    with pytest.warns(UserWarning, match="a run of 3 epochs grows nothing"):
        result = esper.fit(small_model(), train=batches(1, 1), val=batches(1, 2), epochs=3, workspace=str(tmp_path))
    assert result.seeds == {}


def test_an_error_of_the_users_code_mid_run_is_not_called_esper_s(tmp_path):
    calls = []

    def loss(output, y):
        calls.append(1)
        if len(calls) > 3:
            raise ValueError("my loss broke")
        return F.cross_entropy(output, y)

    with pytest.raises(ValueError, match="my loss broke"):
        esper.fit(small_model(), train=batches(4, 1), val=batches(1, 2), epochs=2, controller="static", loss=loss,
                  workspace=str(tmp_path))
    with Workspace(tmp_path).reader() as reader:
        run_id = reader.resolve_run("user")
        state = RunState.fold(reader.read_run(run_id))
    assert state.failed.error == "error: ValueError: my loss broke"


def seeded_model() -> esper.GrowableModel:
    model = small_model()
    model.germinate("1", "s1-1", "conv_light")
    return model


def sequence_model() -> esper.GrowableModel:
    """Per-position logits (B, classes, L): what the default score, top-1 of (B, classes), cannot read."""
    return esper.grow(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(2)), ["0"], example=torch.zeros(1, 3, 8, 8))


def test_checking_for_batches_draws_none_from_a_sized_split_and_an_unsized_test_split_is_read():
    class Stream(torch.utils.data.IterableDataset):  # no length: its DataLoader's len() raises TypeError
        def __iter__(self):
            return iter(batches(1, 3))

    drawn = []

    class Counted(list):
        def __iter__(self):
            drawn.append(1)
            return super().__iter__()

    loader = torch.utils.data.DataLoader(Stream(), batch_size=None)
    data = UserData(Counted(batches(2, 1)), batches(1, 2), loader, F.cross_entropy)
    assert not data.holds_nothing("train") and drawn == []  # its len() said so: nothing drawn, nothing shuffled
    assert not data.holds_nothing("test")
    assert UserData([], [], lambda: [], F.cross_entropy).holds_nothing("test")


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
    ({"train": None}, "train is a NoneType: pass a list of \\(x, y\\) batches"),
    ({"val": [((torch.zeros(8, 3, 8, 8), 2.0), torch.zeros(8, dtype=torch.long))]},
     "x of the first validation batch holds a float: each batch is a pair \\(x, y\\) whose parts are tensors"),
    ({"val": [(torch.zeros(8, 3, 8, 8), {"cls": torch.zeros(8, dtype=torch.long)})]},
     "y of the first validation batch holds a dict"),
    ({"val": [{"x": torch.zeros(8, 3, 8, 8), "y": torch.zeros(8, dtype=torch.long)}]},
     "x of the first validation batch holds a str: .*a dict batch unpacks into its keys"),
    ({"val": [(torch.zeros(8, 3, 8, 8), torch.tensor(3))]},
     r"y of the first validation batch holds a torch.int64 tensor of shape \(\)"),
    ({"task": "cifar10"}, "task 'cifar10' is a built-in task's name"),
    ({"blueprints": ["tree"]}, "blueprints: a list drawn from"),
    ({"blueprints": 3}, "blueprints: a list drawn from"),
    ({"blueprints": iter(["mlp"])}, "blueprints: a list drawn from"),
    ({"blueprints": ["repeat"]}, "blueprints: repeat grows in no slot of this model: a copy grows only after a submodule with parameters"),
    ({"heuristic": {"warmup": 1}}, "heuristic: .*warmup"),
    ({"heuristic": {"warmup_epochs": -1}}, "heuristic: warmup_epochs cannot be negative"),
    ({"heuristic": 3}, "heuristic: a HeuristicConfig or a dict of its knobs, not int"),
    ({"controller": "static", "heuristic": {"warmup_epochs": 2}}, "^heuristic knobs are for controller 'heuristic' only"),
    ({"controller": "policy", "policy": 3}, "^policy: the path of a policy file, not int$"),
    ({"precision": "fp8"}, "^unknown precision 'fp8': use fp32, bf16, fp16$"),
    ({"optimizer": "lbfgs"}, "optimizer must be 'adam' or 'sgd'"),
    ({"lr": 1e38}, "lr must be a positive number up to 1000"),
    ({"seed_lr": -1.0}, "seed_lr must be a positive number up to 1000, got -1.0"),
    ({"weight_decay": -1.0}, "weight_decay must be 0 or a positive number up to 1000, got -1.0"),
    ({"weight_decay": float("inf")}, "weight_decay must be 0 or a positive number up to 1000, got inf"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"epochs": 2.5}, "epochs must be a whole number, got 2.5"),
    ({"epochs": True}, "epochs must be a whole number, got True"),
    ({"seed": -1}, "seed must be between 0 and 999,999,999,999, got -1"),
    ({"lr": "0.1"}, "lr must be a number, got '0.1'"),
    ({"optimizer": "sgd", "momentum": -1.0}, "momentum must be above 0 and below 1 for sgd, got -1.0"),
    ({"optimizer": "sgd", "momentum": 0}, "momentum must be above 0 and below 1 for sgd, got 0"),
    ({"task": ""}, "task names the run's task in the log: a non-empty text, got ''"),
    ({"controller": "oracle"}, "unknown controller 'oracle'"),
    ({"controller": "scratch"}, "controller 'scratch' rebuilds a built-in run"),
    ({"policy": "p.pt"}, "^policy is for controller 'policy' or 'sampled', not 'heuristic': drop policy, or add "
                         "controller='policy'$"),
    ({"controller": "static", "policy": "p.pt"}, "^policy is for controller 'policy' or 'sampled', not 'static'"),
    ({"controller": "oracle", "policy": "p.pt"}, "^unknown controller 'oracle'"),
    ({"controller": "random", "heuristic": {"warmup_epochs": 1}},
     "^heuristic knobs are for controller 'heuristic' only, not 'random': drop heuristic$"),
    ({"controller": "policy"}, "^controller policy needs a policy file"),
    ({"model": nn.Linear(2, 2)}, r"esper.grow\(model, slots=\[...\], example=x\) first"),
    ({"model": seeded_model()}, r"already holds seeds \(s1-1 in slot 1 \(GERMINATED\)\).*esper.grow"),
    ({"train": []}, "train holds no batches"),
    ({"test": lambda: []}, "test holds no batches"),
    ({"test": []}, "test holds no batches"),
    ({"device": "cuda:7" if torch.cuda.is_available() else "cuda"}, "device cuda.* asked for, but"),
    ({"lifecycle": {"max_params": 10}}, "max_params 10 is below the model's own"),
    ({"lifecycle": 3}, "lifecycle: a LifecycleConfig or a dict of its knobs, not int"),
    ({"lifecycle": {"isolated_fraction": 0}}, r"Expected `float` > 0.0 - at `\$.isolated_fraction`"),
    ({"commands_per_epoch": 0}, "commands_per_epoch must be at least 1, got 0"),
    ({"commands_per_epoch": 2.0}, "commands_per_epoch must be a whole number, got 2.0"),
    ({"score": lambda output, y: 1.5}, r"score\(output, y\) gave 1.5 on the first training batch: .* 0..1"),
    ({"score": lambda output, y: float("nan")}, r"score\(output, y\) gave nan"),
    ({"loss": lambda output, y: F.cross_entropy(output, y, reduction="none")},
     r"loss\(output, y\) gave a torch.float32 tensor of shape \(8,\) .* a finite scalar"),
    ({"model": sequence_model(), "train": [(torch.zeros(2, 3, 8, 8), torch.zeros(2, 64, dtype=torch.long))]},
     r"the model gives a torch.float32 tensor of shape \(2, 4, 64\) for targets of shape \(2, 64\)"),
    ({"val": lambda: [torch.zeros(3, 3, 8, 8)]}, r"the first validation batch is not a pair \(x, y\): too many values"),
    ({"val": [(torch.zeros(2, 5, 8, 8), torch.zeros(2, dtype=torch.long))]},
     "the model, loss or score fails on the first validation batch: RuntimeError"),
    ({"train": [(torch.zeros(2, 5, 8, 8), torch.zeros(2, dtype=torch.long))]},
     "the model, loss or score fails on the first training batch: RuntimeError"),
    ({"train": [(torch.zeros(2, 3, 8, 8), torch.full((2,), 7))]},
     "the model, loss or score fails on the first training batch: IndexError"),
    ({"train": [(torch.zeros(2, 3, 8, 8, dtype=torch.float64), torch.zeros(2, dtype=torch.long))]},
     "the model, loss or score fails on the first training batch: RuntimeError"),
    ({"test": [(torch.zeros(2, 5, 8, 8), torch.zeros(2, dtype=torch.long))]},
     "the model, loss or score fails on the first test batch: RuntimeError"),
    ({"val": [torch.zeros(3, 3, 8, 8)]}, r"the first validation batch is not a pair \(x, y\): too many values"),
    ({"model": small_model().double()}, "the model has float64 parameters and esper.fit trains float32 weights"),
    ({"task": "../escaped"}, r"task '../escaped' cannot name a run \(../escaped-heuristic-0-\w+\): it holds a path"),
    ({"task": "a/b c"}, r"task 'a/b c' cannot name a run .*: it holds a path separator"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, change, message):
    args = {"model": small_model(), "train": batches(2, 1), "val": batches(1, 2), "epochs": 1,
            "workspace": str(tmp_path / "ws"), **change}
    with pytest.raises(BadInput, match=message) as info:
        esper.fit(args.pop("model"), args.pop("train"), args.pop("val"), **args)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no workspace, no store file, no folder


def test_a_policy_of_other_slots_is_refused_before_anything_is_written(tmp_path):
    from esper.simic.features import spec_for_task
    from esper.simic.policy import save_policy
    from esper.simic.ppo import make_net
    from esper.simic.rewards import RewardConfig

    path = tmp_path / "mnist1d.pt"
    save_policy(path, make_net(spec_for_task("mnist1d"), 8, seed=1), "ppo", RewardConfig(), hidden=8)
    with pytest.raises(BadInput, match=r"the policy was trained for slots \['early', 'mid', 'late'\] .*; this model "
                                       r"has \['1', '3'\] .*: learn a policy from esper.fit runs of this model \(esper iql "
                                       r"--task user\)$") as info:
        esper.fit(small_model(), batches(2, 1), batches(1, 2), epochs=1, controller="policy", policy=str(path),
                  workspace=str(tmp_path / "ws"))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "ws").exists()


def failed_runs(ws) -> list[tuple[str, str]]:
    """Each run of the workspace that ended failed: its id, and the error it recorded."""
    with Workspace(ws).reader() as reader:
        return reader.con.execute("SELECT run_id, payload->>'$.error' FROM events WHERE type = 'RunFailed'").fetchall()


def test_training_data_that_runs_out_fails_the_run_instead_of_passing_empty_epochs_for_trained_ones(tmp_path):
    used = iter(batches(6, 1))  # a function that returns the same iterator: each draw takes from what is left
    with pytest.raises(RunFailed, match="drew no training batch"):
        esper.fit(small_model(), lambda: used, batches(1, 2), epochs=4, controller="static", workspace=str(tmp_path))
    [(_, error)] = failed_runs(tmp_path)
    assert "drew no training batch" in error


def test_a_score_that_leaves_0_to_1_after_the_first_batch_fails_the_run_instead_of_being_stored(tmp_path):
    calls = []

    def score(output, y):
        calls.append(1)
        return 0.5 if len(calls) <= 2 else 5.0  # the checks of the first batches see 0.5

    with pytest.raises(RunFailed, match="accuracy came out 5: score"):
        esper.fit(small_model(), batches(2, 1), batches(1, 2), epochs=1, score=score, controller="static",
                  workspace=str(tmp_path))
    [(_, error)] = failed_runs(tmp_path)
    assert "must give the fraction" in error


class ImageAndFeatures(nn.Module):
    """A model of two inputs: images and a feature vector per example, each read by its own layers."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.features = nn.Sequential(nn.Linear(2, 8), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, image, features):
        return self.head(torch.cat([self.image(image), self.features(features)], 1))


def two_input_batches(n: int, seed: int) -> list:
    """((images, features), y): the images' first channel says the class's high bit, the features its low bit."""
    out = []
    for x, y in batches(n, seed):
        features = torch.stack([(y % 2).float() - 0.5, torch.zeros(len(y))], 1)
        x[:, 0] = 0.3 * torch.randn_like(x[:, 0]) + (y // 2).float()[:, None, None] - 0.5
        out.append(((x, features), y))
    return out


def test_a_model_of_several_inputs_takes_each_batch_s_x_as_its_arguments(tmp_path):
    torch.manual_seed(0)
    model = esper.grow(ImageAndFeatures(), ["image.1", "features.1"], example=(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2)))
    result = esper.fit(model, train=two_input_batches(6, 1), val=two_input_batches(2, 2), test=two_input_batches(2, 3),
                       epochs=8, heuristic=KNOBS, lr=1e-2, workspace=str(tmp_path))
    # each input says half the class: one alone gets at most half the examples right
    assert result.val_accuracy > 0.8 and result.test_accuracy > 0.8
    assert sum(result.seeds.values()) >= 1, "the heuristic germinated nothing: no seed trained on two inputs"
    with Workspace(tmp_path).reader() as reader:
        state = RunState.fold(reader.read_run(result.run_id))
    assert state.finished is not None and len(state.epochs) == 8


def test_seeds_of_a_model_of_several_inputs_train_in_isolation_on_part_of_each_batch_and_grow_together(tmp_path):
    torch.manual_seed(0)
    model = esper.grow(ImageAndFeatures(), ["image.1", "features.1"], example=(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2)))
    result = esper.fit(model, train=two_input_batches(6, 1), val=two_input_batches(2, 2), epochs=6,
                       heuristic={**KNOBS, "max_live_seeds": 2}, lifecycle={"isolated_fraction": 0.5},
                       commands_per_epoch=2, lr=1e-2, workspace=str(tmp_path))
    with Workspace(tmp_path).reader() as reader:
        events = [r.event for r in reader.read_run(result.run_id)]
    config = events[0].config
    assert (config.lifecycle.isolated_fraction, config.commands_per_epoch) == (0.5, 2)
    germinated = [e.epoch for e in events if isinstance(e, SeedGerminated)]
    assert len(germinated) >= 2 and germinated[0] == germinated[1]  # both slots after one epoch
    assert any(t.seed_loss is not None for e in events if isinstance(e, EpochEnded) for t in e.seeds)


def test_a_dataloader_s_batches_of_several_inputs_come_collated_as_lists_and_train_alike(tmp_path):
    examples = [((x[i], f[i]), y[i]) for (x, f), y in two_input_batches(6, 1) for i in range(len(y))]
    loader = torch.utils.data.DataLoader(examples, batch_size=8)
    assert isinstance(next(iter(loader))[0], list)  # torch's collation: the dataset's tuple (x, f) becomes a list
    torch.manual_seed(0)
    model = esper.grow(ImageAndFeatures(), ["image.1"], example=[torch.zeros(1, 3, 8, 8), torch.zeros(1, 2)])
    result = esper.fit(model, loader, two_input_batches(2, 2), epochs=8, controller="static", lr=1e-2,
                       workspace=str(tmp_path))
    assert result.val_accuracy > 0.8  # each input says half the class: both were read


def test_a_model_of_several_inputs_given_one_is_refused_naming_what_it_misses(tmp_path):
    model = esper.grow(ImageAndFeatures(), ["image.1"], example=(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2)))
    with pytest.raises(BadInput, match="fails on the first training batch: TypeError: .*features"):
        esper.fit(model, batches(2, 1), two_input_batches(1, 2), epochs=1, workspace=str(tmp_path / "ws"))
    assert not (tmp_path / "ws").exists()


class ClassAndSize(nn.Module):
    """A model of two outputs: each image's class (logits) and the size of its first channel (a number)."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classes, self.size = nn.Linear(8, 4), nn.Linear(8, 1)

    def forward(self, x):
        h = self.trunk(x)
        return self.classes(h), self.size(h).squeeze(1)


def two_target_batches(sizes: list[int], seed: int) -> list:
    """(x, (class, size)) in batches of the given sizes."""
    return [(x, (y, x[:, 0].mean((1, 2)))) for size in sizes for x, y in batches(1, seed + size, size)]


def two_losses(output, y):
    return F.cross_entropy(output[0], y[0]) + F.mse_loss(output[1], y[1])


def class_score(output, y):
    return (output[0].argmax(1) == y[0]).float().mean()


def test_a_model_of_several_outputs_takes_a_tuple_of_targets_and_its_batches_weigh_by_their_examples(tmp_path):
    torch.manual_seed(0)
    model = esper.grow(ClassAndSize(), ["trunk.1"], example=torch.zeros(1, 3, 8, 8))
    val = two_target_batches([8, 3], 2)  # uneven: a batch's loss weighs by its examples, not by its targets
    result = esper.fit(model, two_target_batches([8, 8, 8, 5], 1), val, loss=two_losses, score=class_score,
                       epochs=6, heuristic=KNOBS, lr=1e-2, workspace=str(tmp_path))
    assert result.val_accuracy > 0.6 and sum(result.seeds.values()) >= 1
    with Workspace(tmp_path).reader() as reader:
        last = RunState.fold(reader.read_run(result.run_id)).epochs[-1]
    model.eval()
    with torch.no_grad():
        losses = [(two_losses(model(x), y).item(), len(x)) for x, y in val]
        right = [(class_score(model(x), y).item(), len(x)) for x, y in val]
    assert last.val_loss == pytest.approx(sum(v * n for v, n in losses) / 11, rel=1e-5)
    assert last.val_accuracy == pytest.approx(sum(v * n for v, n in right) / 11, rel=1e-5)


def test_a_batch_whose_inputs_and_targets_differ_in_examples_is_refused_before_anything_is_written(tmp_path):
    model = esper.grow(ClassAndSize(), ["trunk.1"], example=torch.zeros(1, 3, 8, 8))
    short = [(x, (y, y[:-1].float())) for x, y in batches(1, 1)]
    with pytest.raises(BadInput, match=r"first training batch hold different numbers of examples \(7, 8\)"):
        esper.fit(model, short, two_target_batches([8], 2), loss=two_losses, score=class_score,
                  workspace=str(tmp_path / "ws"))
    assert not (tmp_path / "ws").exists()


class Residual(nn.Module):
    """A block that holds its residual (`x + f(x)`), so that a copy of it after it is one block more."""

    def __init__(self, width: int):
        super().__init__()
        self.f = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())

    def forward(self, x):
        return x + self.f(x)


class TinyLM(nn.Module):
    """A user's decoder: an embedding, then two residual blocks of the same width, then a head over the last
    position (so that the default score, top-1 of (B, classes), reads it)."""

    def __init__(self, vocab: int = 8, width: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.Sequential(Residual(width), Residual(width))
        self.head = nn.Linear(width, vocab)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x))[:, -1])


def token_batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Sequences of 6 tokens whose next token is the first one again."""
    g = torch.Generator().manual_seed(seed)
    return [(x, x[:, 0]) for x in torch.randint(0, 8, (n, 8, 6), generator=g)]


def test_a_users_transformer_grows_by_depth_where_repeat_is_named(tmp_path):
    torch.manual_seed(0)
    grown = esper.grow(TinyLM(), ["embed", "blocks.0", "blocks.1"], example=torch.zeros(1, 6, dtype=torch.long))
    assert [s.repeats for s in grown.slots.values()] == [False, True, True]  # ids in, (B, T, D) out: no copy
    blocks = {name: sum(p.numel() for p in grown.host.get_submodule(name).parameters()) for name in ("blocks.0", "blocks.1")}
    before = grown.param_count()
    result = esper.fit(grown, train=token_batches(3, 1), val=token_batches(1, 2), epochs=7, blueprints=["repeat"],
                       heuristic={**KNOBS, "max_live_seeds": 2}, commands_per_epoch=2, workspace=str(tmp_path))
    with Workspace(tmp_path).reader() as reader:
        events = [r.event for r in reader.read_run(result.run_id)]
    started = events[0]
    assert started.preset.blueprints == ("repeat",)
    assert {slot: sizes.get("repeat") for slot, sizes in started.seed_sizes.items()} == {"embed": None, **blocks}
    germinated = {e.seed_id: e for e in events if isinstance(e, SeedGerminated)}
    assert {(e.slot, e.blueprint) for e in germinated.values()} == {("blocks.0", "repeat"), ("blocks.1", "repeat")}
    fossils = [e.seed_id for e in events if isinstance(e, SeedTransitioned) and e.to_stage == "FOSSILIZED"]
    assert len(fossils) >= 2 and result.params == before + sum(germinated[s].params for s in fossils)


def test_without_blueprints_named_a_users_transformer_grows_by_width_only(tmp_path):
    torch.manual_seed(0)
    grown = esper.grow(TinyLM(), ["blocks.0"], example=torch.zeros(1, 6, dtype=torch.long))
    result = esper.fit(grown, train=token_batches(1, 1), val=token_batches(1, 2), epochs=1, controller="static",
                       workspace=str(tmp_path))
    with Workspace(tmp_path).reader() as reader:
        started = reader.read_run(result.run_id)[0].event
    assert "repeat" not in started.preset.blueprints and "repeat" not in started.seed_sizes["blocks.0"]
    assert started.preset.blueprints == ("mlp", "attention", "lowrank", "norm")
