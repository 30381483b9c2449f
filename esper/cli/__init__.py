"""The `esper` command. Each module registers its verbs on the one typer app."""

import signal
import sys

import typer

from esper.cli import core, run, simic  # noqa: F401 - register their verbs
from esper.cli import nissa  # noqa: F401
from esper.cli.app import app
from esper.errors import Terminated

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: usage errors get one line and exit code 2, like every other bad input; SIGTERM stops
    a command the way Ctrl-C does (the default would kill it before its buffered events are written)."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        result = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("esper: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: unknown command, bad option, missing argument
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        if exc.format_message():  # a bare `esper` has printed the help already and has nothing to add
            print(f"esper: {exc.format_message()}{hint}", file=sys.stderr)
        sys.exit(2)
    sys.exit(result if isinstance(result, int) else 0)


def _terminate(signum: int, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut short the clean stop
    raise Terminated
