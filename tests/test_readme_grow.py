"""The README's "Grow your own model" example runs as written."""

import re
from pathlib import Path

import pytest

from esper.nissa.runstate import RunState
from esper.store import Workspace

pytestmark = pytest.mark.slow  # real training runs or subprocesses of the CLI

README = Path(__file__).resolve().parent.parent / "README.md"


def example(section: str) -> str:
    """The first Python block of the README's `## section`."""
    text = README.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_the_grow_your_own_model_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = example("Grow your own model")
    assert len(code.splitlines()) <= 15
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{README}:Grow your own model", "exec"), {"__name__": "readme"})
    run_id = capsys.readouterr().out.split()[0]
    with Workspace(tmp_path / "runs").reader() as reader:
        state = RunState.fold(reader.read_run(run_id))
    assert state.status == "finished" and len(state.epochs) == 4
    assert state.garden.seeds, "the example grew nothing"
