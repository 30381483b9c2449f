"""The `esper` command run in-process with typer's `CliRunner`: exit code, stdout and stderr as a user sees them.

A subprocess pays seconds of interpreter start and torch import per call, and the bad-input tables
check dozens of commands. The installed entry point itself is exercised by subprocess tests
(`test_cli_core`, `test_growth`, `test_nissa_cli`, `test_simic_cli`)."""

from pathlib import Path

from typer.testing import CliRunner

import esper.cli  # noqa: F401 - registers every verb
from esper.cli.app import app


def invoke(*args: str, workspace: Path | None = None):
    """Run `esper ARGS` (in `workspace`, through ESPER_WORKSPACE, if given); nothing may escape as a traceback."""
    env = {"ESPER_WORKSPACE": str(workspace)} if workspace is not None else None
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def one_line_error(result, code: int = 2) -> str:
    """The single `esper: ...` line a failed command printed on stderr, after checking its exit code."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esper: "), result.stderr
    return lines[0]
