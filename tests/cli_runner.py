"""The `esper` command as a user runs it: in-process (`invoke`) or as a real process (`esper`, `start`).

In-process, typer's `CliRunner` gives the exit code, stdout and stderr without the seconds of interpreter start
and torch import a subprocess pays, so the bad-input tables check dozens of commands that way. A real process is
for what only one shows: the installed entry point, signals, closed pipes, crashes and concurrent writers."""

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from esper.cli.app import app

ESPER = [sys.executable, "-m", "esper"]
"""The command line of `esper` in a subprocess: this interpreter, so the checkout under test."""


def invoke(*args: str, workspace: Path | None = None, input: bytes | str | None = None):
    """Run `esper ARGS` (in `workspace`, through ESPER_WORKSPACE, if given; `input` on standard input); nothing may
    escape as a traceback."""
    env = {"ESPER_WORKSPACE": str(workspace)} if workspace is not None else None
    result = CliRunner().invoke(app, [str(a) for a in args], env=env, input=input)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def one_line_error(result, code: int = 2) -> str:
    """The single `esper: ...` line a failed command printed on stderr, after checking its exit code."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esper: "), result.stderr
    return lines[0]


def environment(workspace: Path | None = None, **extra: str) -> dict[str, str]:
    """This process's environment for a subprocess: ESPER_WORKSPACE set to `workspace` if given, and `extra`. A
    crash point (ESPER_CRASH_AT) is only ever a test's own, never one inherited."""
    env = {k: v for k, v in os.environ.items() if k != "ESPER_CRASH_AT"}
    if workspace is not None:
        env["ESPER_WORKSPACE"] = str(workspace)
    return env | extra


def esper(*args: str, workspace: Path | None = None, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    """`esper ARGS` run to its end in a subprocess (`environment(workspace, **extra)`): exit code, stdout, stderr."""
    return subprocess.run([*ESPER, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=environment(workspace, **extra))


def start(*args: str, workspace: Path | None = None, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """`esper ARGS` started in a subprocess for a test to watch, signal or starve: stdout and stderr piped as text
    unless `popen` says otherwise; `env` replaces `environment(workspace)`."""
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True} | popen
    return subprocess.Popen([*ESPER, *map(str, args)], env=env if env is not None else environment(workspace),
                            **options)
