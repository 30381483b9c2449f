"""The `esper` command. Each module registers its verbs on the one typer app."""

import sys

import click

from esper.cli.app import app
from esper.cli import core  # noqa: F401 - registers replay, query, runs, schemas

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: usage errors get one line and exit code 2, like every other bad input."""
    try:
        app(standalone_mode=False)
    except click.exceptions.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        print(f"esper: {exc.format_message()}{hint}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        print("esper: aborted", file=sys.stderr)
        sys.exit(130)
