"""`import esper.leyline` (the contracts) loads neither torch nor duckdb; `esper`'s public names resolve lazily."""

import subprocess
import sys

import pytest

import esper


def test_the_contracts_load_neither_torch_nor_duckdb():
    probe = "import sys, esper.leyline; print(sorted(m for m in ('torch', 'duckdb') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", esper.__all__)
def test_every_public_name_resolves(name):
    assert getattr(esper, name) is not None
    assert name in dir(esper)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        esper.nothing_here
