"""The `esper` typer app and the one place that turns errors into one line and an exit code."""

import contextlib
import functools
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from esper.errors import (
    BadInput,
    EsperError,
    RankBadInput,
    RankStopped,
    Terminated,
    first_line,
    is_interruption,
    is_termination,
    out_of_memory,
)
from esper.nissa.fmt import visible
from esper.tolaria import launch

app = typer.Typer(
    name="esper",
    help="Morphogenetic neural networks on an event-sourced lifecycle engine.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: `[heuristic]` and `.[ray]` are words, not markup
)

def _print_version(asked: bool) -> None:
    if asked:
        from esper.tolaria.loop import software_versions

        print(" ".join(f"{name} {version}" for name, version in software_versions().items()))
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the versions of Esper, torch and numpy, and exit."),
) -> None:
    """Morphogenetic neural networks on an event-sourced lifecycle engine."""


def nonempty_path(text: str | Path) -> str:
    """A path given on the command line, as given (typer passes an option's default through here too). An empty or
    blank one is refused: it would quietly mean the current folder (`-w ""` recording into it, say)."""
    text = str(text)
    if not text.strip():
        raise typer.BadParameter(f"{'an empty' if not text else 'a blank'} path (give a file or folder name)")
    return text


def path_value(text: str | Path) -> Path:
    return Path(nonempty_path(text))


def path_option(default: Any, *names: str, help: str, as_text: bool = False) -> Any:
    """An option naming a file or folder (never empty); `as_text` keeps its value a string."""
    return typer.Option(default, *names, parser=nonempty_path if as_text else path_value, metavar="<path>", help=help)


def option_source(ctx: typer.Context, name: str) -> str:
    """Where option `name`'s value came from: the name of click's source (COMMANDLINE, ENVIRONMENT, DEFAULT ...;
    DEFAULT when click names none). Compared by name, as typer may bundle a click of its own."""
    return getattr(ctx.get_parameter_source(name), "name", "DEFAULT")


WorkspaceOption = path_option(None, "--workspace", "-w", help="Folder of store files (default $ESPER_WORKSPACE, else ./runs).")

RayAddress = typer.Option(None, "--ray-address", help="Join this Ray cluster (default $RAY_ADDRESS, else start Ray on "
                          "this machine); the workspace must then be shared storage every node writes.")

_stderr_gone = False
"""Set when a line could not be written to stderr: every later line is dropped unwritten."""


def json_text(value: Any) -> str:
    """`value` as strict JSON, which every parser reads: NaN and infinities (an explained variance of a constant
    return, say) become null, nested lists and dicts keep their shape, bytes are hex, anything else its text."""
    return json.dumps(_strict(value), allow_nan=False)


def _strict(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def say(message: str) -> None:
    """Progress and notes go to stderr; stdout is for results (tables, JSON). Best effort: a line stderr cannot
    take (its reader has gone, as in `esper run 2>&1 >out.json | head -3`, or it was closed, `2>&-`) silences
    this and every later line, and the command goes on: a run never stops for its progress. `message` is one line,
    shown `visible`: a string from a log cannot move the cursor, recolour the terminal or start a line."""
    global _stderr_gone
    if _stderr_gone:
        return
    if sys.stderr is None:  # closed when Python started: `print` would write to stdout instead
        _stderr_gone = True
        return
    try:  # a line may quote a log (a run's error, an altered event's type): no control character of it is sent
        print(visible(message), file=sys.stderr, flush=True)
    except (OSError, ValueError):  # BrokenPipeError and the like; ValueError: the stream object is closed
        _stderr_gone = True
        _discard_stderr()


def _discard_stderr() -> None:
    """Point stderr's descriptor at the null device: what is still buffered for it, the interpreter's flush at
    exit and any library's warning then go nowhere instead of failing again (at exit, with status 120)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # not a file descriptor (a test's capture)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stderr.fileno())
        finally:
            os.close(devnull)


def handles_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Map `EsperError` to one line on stderr and its exit code; never let a traceback reach the user."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            _check_numbers(kwargs)
            result = func(*args, **kwargs)
            return result
        except RankStopped as exc:  # a follower rank: rank 0 has said why
            raise typer.Exit(exc.exit_code) from None
        except BadInput as exc:  # under torchrun every rank reads the same command line: rank 0 says what is wrong
            if launch.leading() or isinstance(exc, RankBadInput):
                say(f"esper: {exc}")
            else:
                launch.defer_to_rank_0()
            raise typer.Exit(exc.exit_code) from None
        except EsperError as exc:
            say(f"esper: {exc}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (`Terminated`): under torchrun rank 0 says it for all
            raise typer.Exit(_stopped(is_termination(exc))) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # a bug of ours: still one line, with the way to see more
            from esper.store.workspace import is_damaged_block, store_damaged

            if is_interruption(exc):  # Ctrl-C or SIGTERM, met inside a query: DuckDB says it in its own words
                raise typer.Exit(_stopped(Terminated.received)) from None

            if (memory := out_of_memory(exc)) is not None:  # the machine's limit, met by a model or batch too big
                say(f"esper: {memory}")
                raise typer.Exit(1) from None
            if is_damaged_block(exc):  # met in a query of any command: the file's fault, named
                damage = store_damaged(exc, kwargs.get("workspace"))
                say(f"esper: {damage}")
                raise typer.Exit(damage.exit_code) from None
            if os.environ.get("ESPER_DEBUG"):
                raise
            say(f"esper: internal error: {type(exc).__name__}: {first_line(exc)} (set ESPER_DEBUG=1 for the traceback)")
            raise typer.Exit(1) from None

    return wrapper


held_stdout: io.StringIO | None = None
"""Where `esper.cli.main` holds what a command prints until it ends (None: stdout is a terminal, or no command runs)."""


def hold_stdout() -> io.StringIO | None:
    """Into a pipe or a file, stdout is held and leaves in one write when the command ends (`esper.cli.main`):
    results are printed at the end anyway, and `esper --help | grep -q run` must not see esper fail because its
    reader left after the first of the many small writes the help makes (each flushed, PYTHONUNBUFFERED or not).
    A closed stdout is held too, so that a result with nowhere to go is seen. `deliver_stdout` writes it sooner."""
    global held_stdout
    if sys.stdout is not None and sys.stdout.isatty():
        return None
    sys.stdout = held_stdout = io.StringIO()
    return held_stdout


def deliver_stdout() -> None:
    """Write now what the command has printed so far, which `esper.cli.main` holds until the command ends: a reader
    that has gone is then seen here (`BrokenPipeError`, exit 141) before the command says what it delivered."""
    held = sys.stdout
    if held_stdout is None or held is not held_stdout:  # a terminal, or a caller's own capture: nothing is held
        held.flush()
        return
    if (code := write_held(held)) is not None:
        raise typer.Exit(code)


def write_held(held: io.StringIO) -> int | None:
    """Write what `held` holds to the process's stdout, and empty it. None when written; else the exit code:
    141 (128 + SIGPIPE, as a shell says it) if stdout was closed before the command started or its reader has
    gone (`| head`), 1 if the write failed (a full disk: `> /dev/full`), said in one line."""
    data = held.getvalue().encode(getattr(sys.__stdout__, "encoding", None) or "utf-8", "replace")
    held.seek(0)
    held.truncate()
    if sys.__stdout__ is None:
        return 141
    fd = sys.__stdout__.fileno()
    try:
        while data:
            data = data[os.write(fd, data):]
    except BrokenPipeError:
        return 141
    except OSError as exc:
        say(f"esper: cannot write the output: {exc.strerror or exc}")
        return 1
    return None


def _stopped(terminated: bool) -> int:
    """Say how the command was stopped (under torchrun rank 0 says it for all) and return its exit code: 143 for
    SIGTERM, 130 for Ctrl-C, as a shell reports them."""
    if launch.leading():
        say("esper: terminated" if terminated else "esper: interrupted")
    return 143 if terminated else 130


def _check_numbers(options: dict[str, Any]) -> None:
    """Every number a command takes is finite and fits 64 bits: NaN and infinity cannot be written to a
    JSON log (they would come back as null), and torch cannot seed with a larger integer."""
    from esper.leyline.config import number_problem

    for name, value in options.items():
        if problem := number_problem("--" + name.replace("_", "-"), value):
            raise BadInput(problem)


def existing_workspace(workspace: Optional[Path]) -> "Workspace":  # noqa: F821 - imported lazily below
    """The workspace to read; a missing folder named explicitly, or a file, is bad input."""
    from esper.store import Workspace

    ws = Workspace.at(workspace)
    if workspace is not None and not os.path.exists(ws.root):
        raise BadInput(f"workspace {ws.root} does not exist")
    ws.store_files()  # a file, not a folder: one line
    return ws


def writable_workspace(workspace: Optional[Path]) -> "Workspace":  # noqa: F821 - imported lazily below
    """The workspace to record into (created by the first store written): a path that cannot become a
    writable folder is bad input. Creates nothing, so that a command refused later leaves no trace."""
    from esper.nissa.files import check_writable
    from esper.store import Workspace

    ws = Workspace.at(workspace)
    check_writable(ws.root / "store.duckdb", what="workspace")
    return ws
