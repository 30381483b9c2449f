"""The recorded sample runs in replays/ replay on a fresh clone."""

import json
from pathlib import Path

import pytest
from cli_runner import esper

pytestmark = pytest.mark.slow  # real training runs or subprocesses of the CLI

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "replays").glob("*.jsonl"))
OLD_LOGS = sorted((ROOT / "tests" / "data").glob("*-v[0-9].jsonl"))
"""Logs written by an older Esper (RunStarted v2: no preset recorded; v3: mnist1d standardised with numpy's float32
moments), which must keep replaying."""


def test_there_is_a_sample():
    assert SAMPLES, "replays/ should hold at least one recorded run"


@pytest.mark.parametrize("sample", SAMPLES + OLD_LOGS, ids=lambda p: p.name)
def test_sample_replays(sample, tmp_path):
    out = esper("replay", sample, "--json", "--workspace", tmp_path)
    assert out.returncode == 0, out.stderr
    state = json.loads(out.stdout)
    assert state["status"] == "finished"
    assert state["stage_counts"].get("FOSSILIZED", 0) >= 1
