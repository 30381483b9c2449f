"""One small hierarchy of errors; the CLI maps each to a one-line message and an exit code."""

import errno
import re


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a one-line
    error on stderr quotes of a library's multi-line message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_TRIED = re.compile(r"tried to allocate (\d+) bytes|(?:tried|unable) to allocate ([\d.]+ [KMGTPE]i?B)", re.IGNORECASE)


def out_of_memory(exc: BaseException) -> str | None:
    """`exc` in one line when it is an allocation that failed (Python's, or torch's on CPU or CUDA), else None: a
    model or batch too big for the machine is the user's to shrink, not a bug of ours."""
    text = str(exc)
    if not (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM)
            or (isinstance(exc, RuntimeError)
                and ("can't allocate memory" in text or "out of memory" in text or "_ALLOC_FAILED" in text))):
        return None
    size = _TRIED.search(text)
    if size is None:
        return "out of memory"
    amount = _binary_size(int(size[1])) if size[1] else size[2]
    return f"out of memory: {amount} could not be allocated (a smaller model or batch needs less)"


def _binary_size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            break
        n /= 1024
    else:
        unit = "PiB"
    return f"{n:.1f} {unit}"


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a cluster scheduler's stop), raised in the main thread where Ctrl-C's
    `KeyboardInterrupt` would be, so that it stops a job the same way: whole epochs kept, the run ended
    with `RunFailed`, worker processes stopped. The CLI exits 143 (128 + SIGTERM)."""

    received = False
    """Set by the CLI's handler as it raises: a library that turns what is raised inside its own wait into a plain
    `KeyboardInterrupt` (Ray does: a SIGTERM inside `ray.wait` came out as Ctrl-C) loses the type, not the fact."""

    def __init__(self) -> None:
        super().__init__("terminated")


def is_termination(exc: BaseException) -> bool:
    """Whether `exc` is SIGTERM's stop, however a library in between passed it on."""
    return isinstance(exc, Terminated) or (isinstance(exc, KeyboardInterrupt) and Terminated.received)


def is_interruption(exc: BaseException) -> bool:
    """Whether `exc` is Ctrl-C or SIGTERM met inside a DuckDB query: DuckDB stops the query and raises an error of
    its own (`RuntimeError: Query interrupted`, or its `InterruptException`), and the KeyboardInterrupt is gone.
    `Terminated.received` still says which of the two it was."""
    return type(exc).__name__ == "InterruptException" or (isinstance(exc, RuntimeError) and str(exc) == "Query interrupted")


class EsperError(Exception):
    """Base of every error Esper raises on purpose. `exit_code` is what the CLI returns."""

    exit_code = 1


class BadInput(EsperError):
    """The user asked for something that cannot be done as asked (unknown run, bad flag, bad SQL)."""

    exit_code = 2


class RankBadInput(BadInput):
    """Bad input only one rank of a torchrun launch finds (its own LOCAL_RANK): that rank says it, not rank 0."""


class UnknownRun(BadInput):
    """No store in the workspace holds the requested run."""


class StoreUnavailable(BadInput):
    """A store file cannot be opened (missing, corrupt, or held by a live writer)."""


class StoreFailed(EsperError):
    """The operating system refused a write to a store under a running command: a full disk, a read-only
    filesystem, the file removed or locked. Exit 1: the command stops, and every batch stored before stays
    readable. Said in one line, built by those who know each part: the store says what failed (`what`, naming
    the cause and the file) and what to do about it (`remedy`), the run's sink what its log holds (`held`), the
    command how to go on (`then`)."""

    def __init__(self, what: str, remedy: str = "", held: str = "", then: str = ""):
        super().__init__(what, remedy, held, then)  # all in `args`: it crosses process boundaries by pickle
        self.what, self.remedy, self.held, self.then = what, remedy, held, then

    def __str__(self) -> str:
        advice = " and ".join(part for part in (self.remedy, self.then) if part)
        return self.what + (f": {self.held}" if self.held else "") + (f"; {advice}" if advice else "")

    def adding(self, held: str | None = None, then: str | None = None) -> "StoreFailed":
        """The same failure, said with what its log holds or how to go on."""
        return StoreFailed(self.what, self.remedy, self.held if held is None else held,
                           self.then if then is None else then)


class StoreDamaged(EsperError):
    """A store file holds a block that does not read back as it was written (its checksum does not match): the
    file was damaged on disk. Exit 1, as for an altered log."""


class AppendConflict(EsperError):
    """An append expected a different last `seq` for its run: someone else wrote first. Nothing was written."""


class IllegalEvent(EsperError):
    """A log holds an event the lifecycle cannot fold (illegal transition, gap, out of order)."""

    def __init__(self, message: str, position: int | None = None):
        where = f" at position {position}" if position is not None else ""
        super().__init__(f"{message}{where}")
        self.position = position


class RunFailed(EsperError):
    """A training run itself failed (diverged, crashed)."""


class RankStopped(EsperError):
    """A follower rank of a data-parallel run stopped because rank 0 failed; rank 0 says why in its own line, so
    the CLI says nothing more and exits with rank 0's code."""

    def __init__(self, error: str, code: int):
        super().__init__(error, code)
        self.error, self.exit_code = error, code

    def __str__(self) -> str:
        return f"rank 0 failed: {self.error}"


def exit_code_of(exc: BaseException) -> int:
    """The exit code the CLI returns for `exc`: 143 SIGTERM, 130 Ctrl-C, an Esper error's own, else 1."""
    if is_termination(exc):
        return 143
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return getattr(exc, "exit_code", 1) if isinstance(exc, EsperError) else 1


class LogAltered(EsperError):
    """A log's hash chain does not hold: an event was changed, removed or inserted behind Esper's back, or
    its tail was cut (the store's head or the export's trailer says more). Exit 1: the log itself is bad."""
