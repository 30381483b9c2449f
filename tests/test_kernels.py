"""CPU kernel sets (`ESPER_CPU_KERNELS`, esper/_kernels.py): the portable set computes the same bits whichever
kernels the CPU would have oneDNN and MKL choose, a run records its set, and a run is computed again only with
the set it was computed with."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_runner import invoke, one_line_error
from esper._kernels import KERNEL_SETS, cpu_kernels, has_avx2, use_cpu_kernels
from esper.errors import BadInput
from esper.leyline import HeuristicConfig, RunConfig, RunStarted
from esper.tolaria.loop import resolve_config, versions
from esper.tolaria.tasks import get_task
from esper.tolaria.trainer import Computed, resolve_device

SAMPLE = Path(__file__).resolve().parent.parent / "replays" / "mnist1d-heuristic.jsonl"

RUN = """
import sys
from esper.leyline import HeuristicConfig, RunConfig
from esper.leyline.events import encode
from esper.tamiyo.controllers import make_controller
from esper.tolaria.loop import ListSink, execute
config = RunConfig(seed=3, epochs=3, heuristic=HeuristicConfig(warmup_epochs=1, min_gain=1.0, finish_epochs=0))
sink = ListSink()
execute(config, make_controller("heuristic", 3, heuristic=config.heuristic), sink)
for event in sink.events[1:]:  # RunStarted names the variables set otherwise
    sys.stdout.buffer.write(encode(event) + b"\\n")
"""


def _events(**variables: str) -> list[bytes]:
    """A short run that germinates at once, in a fresh process with `variables` set (each library reads its
    setting at its first kernel): its events after RunStarted, as bytes."""
    out = subprocess.run([sys.executable, "-c", RUN], env={**os.environ, **variables}, capture_output=True, check=True)
    return out.stdout.splitlines()


needs_avx2 = pytest.mark.skipif(not has_avx2(), reason="the kernel sets pin AVX2 kernels, which this CPU lacks")


@pytest.mark.slow
@needs_avx2
def test_the_portable_set_computes_the_same_bits_whatever_kernels_the_cpu_would_get():
    """A CPU that gives oneDNN SSE4.1 kernels and MKL AVX ones stands in for another machine. With the fast set, this
    one's first epoch already differs (oneDNN's convolutions round otherwise: measured); the portable set uses
    neither library's choice, so the whole run is the same bits. (MKL's choice by maker cannot be moved on one
    machine: its COMPATIBLE branch is the one MKL keeps the same on every maker's CPU, and the shipped sample's
    test re-executes a run recorded elsewhere on whatever CPU runs the suite.)"""
    here = _events(ESPER_CPU_KERNELS="portable")
    elsewhere = _events(ESPER_CPU_KERNELS="portable", ONEDNN_MAX_CPU_ISA="SSE41", MKL_ENABLE_INSTRUCTIONS="AVX")
    assert len(here) > 3 and any(b'"SeedGerminated"' in line for line in here)
    assert here == elsewhere
    assert _events(ESPER_CPU_KERNELS="fast") != _events(ESPER_CPU_KERNELS="fast", ONEDNN_MAX_CPU_ISA="SSE41")


@needs_avx2
def test_a_run_records_the_kernel_set_it_computed_with(monkeypatch):
    assert versions()["cpu_kernels"] == "portable"  # the default, pinned when esper was imported
    monkeypatch.setenv("ESPER_CPU_KERNELS", "fast")
    for variable, value in KERNEL_SETS["fast"].items():
        monkeypatch.setenv(variable, value)
    assert cpu_kernels() == "fast"
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    assert cpu_kernels() == "fast (MKL_CBWR=AUTO)"


def test_only_the_fast_set_lets_torch_use_onednn_and_nnpack(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", torch.backends.mkldnn.enabled)  # restored afterwards
    nnpack = torch._C._get_nnpack_enabled()
    try:
        for name, native in (("fast", True), ("portable", False)):
            monkeypatch.setenv("ESPER_CPU_KERNELS", name)
            use_cpu_kernels()
            assert torch.backends.mkldnn.enabled is native and torch._C._get_nnpack_enabled() is native
    finally:
        torch.backends.nnpack.set_flags(nnpack)


def test_an_unknown_kernel_set_is_one_line_before_anything_is_written(monkeypatch, tmp_path):
    monkeypatch.setenv("ESPER_CPU_KERNELS", "fastest")
    with pytest.raises(BadInput, match=r"ESPER_CPU_KERNELS=fastest: not a kernel set \(use portable or fast\)"):
        resolve_device("cpu")
    line = one_line_error(invoke("run", "--epochs", "1", workspace=tmp_path))
    assert "ESPER_CPU_KERNELS=fastest" in line and not list(tmp_path.glob("*.duckdb"))


def _started(kernels: str | None, device: str = "cpu", logged_versions: bool = True) -> RunStarted:
    recorded = {k: v for k, v in versions().items() if k != "cpu_kernels"} if logged_versions else {}
    config = resolve_config(RunConfig(device=device, heuristic=HeuristicConfig()))
    return RunStarted(config=config, preset=get_task("mnist1d"), versions=recorded | ({} if kernels is None else
                                                                                      {"cpu_kernels": kernels}))


@needs_avx2
def test_a_cpu_run_is_computed_again_only_with_the_kernel_set_it_was_computed_with(monkeypatch):
    """Re-execution and --resume both take `Computed.of`: another set would give other numbers, or a run of two."""
    with pytest.raises(BadInput, match=r"computed with the fast CPU kernels, this process computes with the "
                                       r"portable ones: set ESPER_CPU_KERNELS"):
        Computed.of(_started("fast"))
    assert Computed.of(_started("portable")) == Computed()
    assert Computed.of(_started("fast", device="cuda")) == Computed()  # CPU kernels do not compute a CUDA run
    # Logged with versions before runs recorded their kernel set: Esper's settings then were the fast set's
    with pytest.raises(BadInput, match=r"computed with the fast CPU kernels"):
        Computed.of(_started(None))
    assert Computed.of(_started(None, logged_versions=False)) == Computed()  # older still: settings unknown
    monkeypatch.setattr("esper.tolaria.trainer.has_avx2", lambda: False)  # nothing pinned: no set to choose
    assert Computed.of(_started("fast")) == Computed()


@needs_avx2
def test_a_log_from_before_kernel_sets_is_re_executed_with_the_fast_set_only():
    """The v3 fixture records versions but no kernel set. (Under `ESPER_CPU_KERNELS=fast`, on the CPU model that
    recorded it, it re-executes bit for bit: measured, not asserted, as that model is not in its log.)"""
    fixture = Path(__file__).resolve().parent / "data" / "mnist1d-heuristic-v3.jsonl"
    assert "computed with the fast CPU kernels" in one_line_error(invoke("replay", fixture, "--verify"))


def test_esper_version_names_the_software_whatever_the_kernel_set(monkeypatch):
    monkeypatch.setenv("ESPER_CPU_KERNELS", "fastest")
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.split()[::2] == ["esper", "torch", "numpy"]


@needs_avx2
def test_replay_verify_refuses_a_run_of_another_kernel_set_in_one_line(monkeypatch):
    """Up front, before re-executing anything: this process's kernel set is the fast one, the sample's portable."""
    monkeypatch.setenv("ESPER_CPU_KERNELS", "fast")
    line = one_line_error(invoke("replay", SAMPLE, "--verify"))
    assert re.fullmatch(r"esper: the run was computed with the portable CPU kernels, this process computes with the "
                        r"fast \(.*\) ones: set ESPER_CPU_KERNELS \(and any variable named\) as the run had them", line)
