"""`import esper.leyline` (the contracts) loads neither torch nor duckdb, the `esper` command loads torch only for the
verbs that train or re-execute; `esper`'s public names resolve lazily."""

import os
import subprocess
import sys

import pytest

import esper


def test_the_contracts_load_neither_torch_nor_duckdb():
    probe = "import sys, esper.leyline; print(sorted(m for m in ('torch', 'duckdb') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["runs", "--json"], ["query", "select 1"]])
def test_the_command_reads_without_loading_torch(argv, tmp_path):
    """torch takes seconds to import: `esper runs`, `query`, `replay` and help start without it."""
    probe = ("import sys; from esper.cli import _run; sys.argv = ['esper', *sys.argv[1:]]; code = _run(); "
             "print('torch' in sys.modules, code, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ESPER_WORKSPACE": str(tmp_path)})
    assert done.stderr.strip().splitlines()[-1] == "False 0", done.stderr


@pytest.mark.parametrize("name", esper.__all__)
def test_every_public_name_resolves(name):
    assert getattr(esper, name) is not None
    assert name in dir(esper)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        esper.nothing_here
