import pytest
"""A cifar10 run end to end on a tiny CIFAR-format folder read through the real torchvision loader."""

from cifar_fixture import trust_tiny_cifar10, write_tiny_cifar10

from esper.leyline import CommandIssued, Germinate, RunConfig
from esper.nissa.runstate import RunState
from esper.store import Recorder
from esper.tamiyo.controllers import ScriptedController
from esper.tolaria.data import load_task_data
from esper.tolaria.loop import StoreSink, execute, resolve_config

pytestmark = pytest.mark.slow  # real training runs or subprocesses of the CLI


def test_cifar10_run_grows_a_resnet(tmp_path, monkeypatch):
    write_tiny_cifar10(tmp_path / "data", n_train=60, n_test=20)
    trust_tiny_cifar10(tmp_path / "data", monkeypatch)
    config = resolve_config(RunConfig(task="cifar10", data_dir=str(tmp_path / "data"), epochs=3, controller="static"))
    data = load_task_data("cifar10", config.data_seed, config.data_dir)
    germinations = [("mid", "conv_light"), ("late", "norm"), ("early", "attention")]
    plan = [CommandIssued(epoch=e, command=Germinate(slot=s, blueprint=b), controller="static")
            for e, (s, b) in enumerate(germinations, 1)]
    with Recorder(tmp_path / "run.duckdb") as rec:
        result = execute(config, ScriptedController("static", plan), StoreSink(rec, "cifar"), data=data)
        state = RunState.fold(rec.read("cifar"))
    assert state.status == "finished" and len(state.epochs) == 3
    assert {s.stage.value for s in state.garden.seeds.values()} >= {"TRAINING"}
    assert 0.0 <= result.test_accuracy <= 1.0
    assert state.epochs[0].params > 70_000  # the resnet host, not the 1-D CNN
