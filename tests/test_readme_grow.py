"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

from esper.nissa.runstate import RunState
from esper.store import Workspace

pytestmark = pytest.mark.slow  # real training runs or subprocesses of the CLI

README = Path(__file__).resolve().parent.parent / "README.md"


def example(heading: str) -> str:
    """The first Python block under the README's `heading` (e.g. "## Grow your own model")."""
    text = README.read_text().split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_the_grow_your_own_model_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = example("## Grow your own model")
    assert len(code.splitlines()) <= 15
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{README}:Grow your own model", "exec"), {"__name__": "readme"})
    run_id = capsys.readouterr().out.split()[0]
    with Workspace(tmp_path / "runs").reader() as reader:
        state = RunState.fold(reader.read_run(run_id))
    assert state.status == "finished" and len(state.epochs) == 4
    assert state.garden.seeds, "the example grew nothing"


def test_the_python_example_runs_as_written_but_for_its_epochs(tmp_path, monkeypatch):
    code = example("### Python")
    short = code.replace('seed=1))', 'seed=1, epochs=2))')
    assert short != code, "the example's RunConfig changed: shorten it here again"
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "readme"}
    exec(compile(short, f"{README}:Python", "exec"), scope)
    assert scope["result"].params > 0
    with Workspace(tmp_path / "runs").reader() as reader:
        assert RunState.fold(reader.read_run("my-run")).status == "finished"
