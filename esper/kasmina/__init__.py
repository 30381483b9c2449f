"""Kasmina, the body: host models, slots, seed modules (blueprints), gradient isolation, alpha blending,
fossilize and cull. Knows no controller, optimizer or store."""

from esper.kasmina.blueprints import BLUEPRINTS, param_count
from esper.kasmina.grow import grow
from esper.kasmina.hosts import (
    CNN1D, HOSTS, PaperCNN, ResNet, Transformer, build_host, example_input, host_problem, input_dtype, preset_host,
)
from esper.kasmina.model import GrowableModel, isolated_examples
from esper.kasmina.slot import SCHEDULES, Seed, Slot, blend_alpha

__all__ = [
    "BLUEPRINTS", "CNN1D", "HOSTS", "PaperCNN", "SCHEDULES", "GrowableModel", "ResNet", "Seed", "Slot",
    "Transformer", "blend_alpha", "build_host", "example_input", "grow", "host_problem", "input_dtype",
    "isolated_examples", "param_count", "preset_host",
]
