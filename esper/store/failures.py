"""A store write the operating system refused, said in the words a user can act on.

DuckDB reports a failed write as one of its own exceptions quoting the operating system's message
(`Failed to commit: Could not write file "...wal": No space left on device`); Python's own file calls raise
`OSError`. Either becomes one `StoreFailed` naming the cause and the file, never an internal error.

A store file removed under its writer is different: DuckDB goes on writing the unlinked file without a
word, and the log vanishes when the writer closes it. So before each append the writer checks that its
path still leads to the file it opened (one `stat`), and a removed file is first written back from the
open database, so that no acknowledged batch is lost.
"""

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

import duckdb

from esper.errors import StoreFailed

WRITABLE = "make {folder} writable"
REMEDIES = {
    errno.ENOSPC: "free space",
    errno.EDQUOT: "free space within the quota",
    errno.EROFS: WRITABLE,
    errno.EACCES: WRITABLE,
    errno.EPERM: WRITABLE,
    errno.EIO: "check the disk",
}
"""The operating system's refusals a store write can meet, and what the user can do about each."""

Identity = tuple[int, int]
"""A file's device and inode: what stays the same however the file is named."""


def refusal(exc: BaseException, path: Path) -> StoreFailed | None:
    """The `StoreFailed` that `exc`, raised while writing the store at `path`, stands for; None when no
    refusal of the operating system is behind it (then it is a bug, and stays what it is)."""
    if isinstance(exc, duckdb.Error) and "could not set lock" in str(exc).lower():
        return StoreFailed(f"{path} is locked by another program", "stop that program")
    if isinstance(exc, OSError):
        code = exc.errno if exc.errno in REMEDIES else None
    elif isinstance(exc, duckdb.Error):  # DuckDB quotes strerror(errno), in this process's locale
        code = next((c for c in REMEDIES if os.strerror(c) in str(exc)), None)
    else:
        code = None
    if code is None:
        return None
    cause = os.strerror(code)
    return StoreFailed(f"{cause[:1].lower()}{cause[1:]} writing {path}", REMEDIES[code].format(folder=path.parent))


@contextlib.contextmanager
def refusals(path: Path) -> Iterator[None]:
    """Raise a refusal of the operating system met inside the block as `StoreFailed`; anything else as it is."""
    try:
        yield
    except (duckdb.Error, OSError) as exc:
        failure = refusal(exc, path)
        if failure is None:
            raise
        raise failure from exc


def identity(path: Path) -> Identity | None:
    """The identity of the file at `path`; None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def check_in_place(con: duckdb.DuckDBPyConnection, path: Path, opened: Identity) -> None:
    """Raise `StoreFailed` if `path` no longer leads to the file `con` opened (`opened`). A file removed
    (no name left) is written back to `path` first, or beside it when another file has taken its place."""
    now = identity(path)
    if now == opened:
        return
    if _still_named(opened):
        raise StoreFailed(f"{path} was moved or renamed while being written", f"move it back to {path}")
    target = path if now is None else path.with_name(f"{path.stem}-written-back{path.suffix}")
    try:
        write_back(con, target)
    except (duckdb.Error, OSError) as exc:
        raise StoreFailed(f"{path} was removed while being written, and what it held could not be written back "
                          f"({type(exc).__name__}: {exc})") from None
    where = "" if target == path else f" to {target} (another file has taken its place)"
    raise StoreFailed(f"{path} was removed while being written; what it held is written back{where}")


def write_back(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Copy the database `con` holds open (its file removed) to `path`, which appears whole, in one rename."""
    tmp = path.with_name(f".{path.name}.written-back")
    tmp.unlink(missing_ok=True)
    # The removed file's own write-ahead log, left at its name: DuckDB would replay it into the copy.
    path.with_name(path.name + ".wal").unlink(missing_ok=True)
    name = con.execute("SELECT current_database()").fetchall()[0][0]
    con.execute(f"ATTACH '{_quote(tmp)}' AS esper_written_back")
    try:
        con.execute(f'COPY FROM DATABASE "{name.replace(chr(34), chr(34) * 2)}" TO esper_written_back')
    finally:
        con.execute("DETACH esper_written_back")  # checkpoints the copy: no log of its own is left beside it
    os.replace(tmp, path)


def _still_named(opened: Identity) -> bool:
    """Whether the file this process opened as `opened` still has a name somewhere (moved, not removed). Seen
    through /proc, where there is one; elsewhere every vanished file counts as removed."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return False
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):  # the listing's own descriptor is closed by now
            st = os.stat(fds / fd)
            if (st.st_dev, st.st_ino) == opened:
                return st.st_nlink > 0
    return False


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")
