"""The `esper` command. Each module registers its verbs on the one typer app.

torch takes seconds to import, so these modules do not load it: a verb that trains or re-executes imports what
needs torch inside its body, and reading a workspace (`runs`, `query`, `replay`, help) starts in about a second.
"""

import io
import os
import signal
import sys

import typer

from esper.cli import core, run, simic  # noqa: F401 - register their verbs
from esper.cli import nissa  # noqa: F401
from esper.cli.app import app, hold_stdout, say, write_held
from esper.errors import Terminated
from esper.tolaria import launch

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: usage errors get one line and exit code 2, like every other bad input; SIGTERM stops
    a command the way Ctrl-C does (the default would kill it before its buffered events are written)."""
    signal.signal(signal.SIGTERM, _terminate)
    stdout_closed = sys.stdout is None
    _fill_closed_descriptors()
    held = hold_stdout()
    code = 1
    try:
        code = _run()
    except BrokenPipeError:  # a pipe's reader has gone where nothing else caught it
        code = 141
    finally:
        # The command has ended, its stop (if any) with it: a Ctrl-C from here on would only break the interpreter's
        # exit, where torch's exit hooks print a traceback and the process dies of the signal.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        code = _release(held, stdout_closed) or code
        if code == 141:  # so that the interpreter's own flush at exit does not complain either
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    sys.exit(code)


def _run() -> int:
    if (why := launch.problem()) is not None:  # torchrun's variables, as this rank sees them
        say(f"esper: {why}")
        return 2
    if (why := launch.refusal(sys.argv[1:])) is not None:  # every rank refuses; rank 0 says why, once
        if launch.leading():
            say(f"esper: {why}")
        launch.defer_to_rank_0()
        return 2
    try:
        result = app(standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        say("esper: aborted")
        return 130
    except typer.TyperException as exc:  # usage errors: unknown command, bad option, missing argument
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:  # a bare `esper`: its help, as asked
            print(ctx.get_help())
            return 0
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        if exc.format_message():  # a bare `esper` has printed the help already and has nothing to add
            say(f"esper: {exc.format_message()}{hint}")
        return 2
    return result if isinstance(result, int) else 0


def _fill_closed_descriptors() -> None:
    """A standard stream the shell closed (`2>&-`) leaves its descriptor free, and the next file opened (a
    store) would take it: whatever a library then writes to "stderr" would land in that file. Such a
    descriptor is pointed at the null device (Python has already set the stream itself to None)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            devnull = os.open(os.devnull, os.O_RDWR)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)



def _release(held: io.StringIO | None, closed: bool) -> int | None:
    """Write what was held; 141 (128 + SIGPIPE, as a shell reports it) if stdout was closed from the start, else
    what `write_held` says of the write (None: written)."""
    sys.stdout = sys.__stdout__
    if held is None or not held.getvalue():
        return None
    if closed:
        return 141
    return write_held(held)


def _terminate(signum: int, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut short the clean stop
    Terminated.received = True
    raise Terminated
