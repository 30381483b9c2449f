"""The built-in hosts by name and options, as a task preset names them."""

import torch
from msgspec.structs import replace

from esper.kasmina import build_host, host_problem, preset_host
from esper.tolaria.tasks import get_task


def test_the_papers_cnn_has_its_size_and_three_slots():
    model = build_host("paper_cnn")
    # conv 1->25 (k5) 150, two convs 25->25 (k3) 1,900 each, linear 125->10 1,260
    assert model.param_count() == 150 + 1900 + 1900 + 1260
    assert model.slot_names == ["early", "mid", "late"]
    assert model(torch.zeros(3, 1, 40)).shape == (3, 10)


def test_a_presets_host_options_reach_the_host():
    wide = preset_host(replace(get_task("mnist1d"), host_options={"channels": 24}))
    assert wide.param_count() > preset_host(get_task("mnist1d")).param_count()
    assert wide.param_count() == build_host("cnn1d", channels=24).param_count()


def test_host_problems_name_what_is_known():
    assert host_problem("cnn1d", {"channels": 4}) is None
    assert "hosts: cnn1d, resnet, paper_cnn" in host_problem("mlp", {})
    problem = host_problem("cnn1d", {"width": 4})
    assert "'width'" in problem and "channels" in problem
