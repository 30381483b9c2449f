"""The built-in hosts by name and options, as a task preset names them."""

import pytest
import torch
from msgspec.structs import replace

from esper.errors import BadInput
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


@pytest.mark.parametrize("name, options, message", [
    ("mlp", {}, r"^unknown host 'mlp' \(hosts: cnn1d, resnet, paper_cnn, transformer\)$"),
    (["cnn1d"], {}, r"^unknown host \['cnn1d'\] \(hosts: cnn1d, "),
    ("cnn1d", {"width": 3}, r"^host cnn1d has no option 'width' \(options: channels, length, num_classes, "),
    ("cnn1d", {"channels": 0}, "^host cnn1d option channels takes a whole number, at least 1, got 0$"),
    ("resnet", {"width": 2.5}, "^host resnet option width takes a whole number, at least 1, got 2.5$"),
    ("cnn1d", {"batchnorm": 1}, "^host cnn1d option batchnorm takes true or false, got 1$"),
])
def test_a_bad_host_name_or_option_is_one_bad_input_line_naming_what_is_known(name, options, message):
    with pytest.raises(BadInput, match=message) as info:
        build_host(name, **options)
    assert "\n" not in str(info.value)
