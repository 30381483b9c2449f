"""How a command stopped from outside ends: Ctrl-C exits 130, SIGTERM 143, whatever a library in between does to
the exception (Ray turns one raised inside its own wait into a plain `KeyboardInterrupt`)."""

import pytest
from cli_runner import invoke

import esper.cli.core
from esper.errors import Terminated


def _stopped_while_waiting(monkeypatch, tmp_path, sigterm: bool):
    """`esper query` interrupted where the work is: a plain KeyboardInterrupt, after a SIGTERM or not."""
    def wait(workspace):
        raise KeyboardInterrupt

    monkeypatch.setattr(esper.cli.core, "existing_workspace", wait)
    monkeypatch.setattr(Terminated, "received", sigterm)
    return invoke("query", "select 1", workspace=tmp_path)


@pytest.mark.parametrize("sigterm, code, line", [(False, 130, "esper: interrupted"), (True, 143, "esper: terminated")])
def test_a_sigterm_that_reaches_the_command_as_a_plain_keyboard_interrupt_still_exits_143(
        monkeypatch, tmp_path, sigterm, code, line):
    result = _stopped_while_waiting(monkeypatch, tmp_path, sigterm)
    assert (result.exit_code, result.stderr.strip()) == (code, line)
