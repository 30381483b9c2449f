"""The CUDA path of the trainer. Runs where CUDA exists; the same code is tested on CPU everywhere else."""

import pytest
import torch

from esper.leyline import RunConfig
from esper.tamiyo.controllers import make_controller
from esper.tolaria.loop import ListSink, execute, resolve_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_a_run_grows_on_cuda():
    sink = ListSink()
    result = execute(resolve_config(RunConfig(epochs=8, device="cuda", seed=1)), make_controller("heuristic", 1), sink)
    kinds = {type(e).__name__ for e in sink.events}
    assert {"SeedGerminated", "SeedTransitioned", "RunFinished"} <= kinds
    assert 0.0 <= result.test_accuracy <= 1.0 and result.params > 1258


@needs_cuda
def test_cuda_run_matches_its_own_rerun():
    """Same seed, same device: the same decisions (floating point may differ from CPU, not from itself)."""
    runs = []
    for _ in range(2):
        sink = ListSink()
        execute(resolve_config(RunConfig(epochs=4, device="cuda", seed=2)), make_controller("heuristic", 2), sink)
        runs.append([type(e).__name__ for e in sink.events])
    assert runs[0] == runs[1]
