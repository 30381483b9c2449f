"""Writing output files atomically: a reader never sees half a report or half an export."""

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from esper.errors import BadInput
from esper.store.workspace import STORE_SUFFIX

EXPORT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
"""The format each suffix of an exported file names (in any case): `esper export` writes by it, `esper replay` reads a
file by it."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then move it into place.

    The file gets the permissions a plainly created file would (umask respected). A symbolic link is written
    through, as the shell's `>` does: the file it names is replaced and the link stays. A path that cannot
    be written, or that names something other than a file (a folder, a device, a pipe), is bad input, one line:
    moving a file over `/dev/null` would replace the device itself.
    """
    if why := not_a_file(path):
        raise BadInput(f"cannot write {path}: {why}")
    target = _written_through(path)
    tmp: str | None = None
    try:
        with _bad_input_if_unwritable(path):
            tmp = _temporary_beside(target)
            write(Path(tmp))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, target)
            tmp = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_writable(path: Path, what: str = "") -> Path:
    """Fail now, in one line, if `path` could not be written later (a job must not train for an hour and
    then find its output folder read-only): the nearest folder on its way that exists must be one we may
    write into. A file is made there and removed again, which finds what permissions alone do not (a read-only
    mount, a kernel folder, a full disk); nothing else is created. With `what`, the message is about creating
    that folder (`path`'s parent)."""
    cannot = f"cannot create {what} {path.parent}" if what else f"cannot write {path}"
    if not what and (why := not_a_file(path)):
        raise BadInput(f"{cannot}: {why}")
    path = _written_through(path)
    folder = next(p for p in (path.parent, *path.parent.parents) if os.path.exists(p))
    if not os.path.isdir(folder):
        raise BadInput(f"{cannot}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"{cannot}: {folder} is not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=".esper-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BadInput(f"{cannot}: {folder} is not writable ({exc.strerror or exc})") from None
    return path


def check_output(path: Path) -> Path:
    """Fail now, in one line, if an output file (an export, a report) could not be written at `path`, or would
    replace what Esper keeps there: a DuckDB database (an event store, the projections) or a zip archive (a
    checkpoint, a policy). Nor is one named as a store is: in a workspace every reader would skip it as a damaged
    store."""
    if why := not_a_file(path):
        raise BadInput(f"cannot write {path}: {why}")
    if (kept := _kept_in(path)) is not None:
        raise BadInput(f"{path} is {kept}: an export or a report never replaces one; give another path")
    if path.suffix.lower() == STORE_SUFFIX:
        raise BadInput(f"cannot write {path}: {STORE_SUFFIX} names an event store; give the file another name")
    return check_writable(path)


def not_a_file(path: Path) -> str | None:
    """Why `path` cannot be written as a file, if what is there (a link followed) is not one: a folder, or a
    device, a pipe or a socket (opening a pipe to look inside would wait for a writer)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # nothing there (or a dangling link): a file can be made
        return None
    if stat.S_ISDIR(mode):
        return "it is a folder: give the path of a file"
    if not stat.S_ISREG(mode):
        return "it is not a regular file (a device, a pipe or a socket): give the path of a file"
    return None


def _written_through(path: Path) -> Path:
    """Where writing `path` lands: the file a symbolic link names (the link stays), else `path` itself."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


def _kept_in(path: Path) -> str | None:
    """What `path` holds, if it is data an output must not replace (by the file's first bytes). Only called on
    a regular file."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if head[8:12] == b"DUCK":
        return "a DuckDB database (an event store?)"
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (a checkpoint or a policy?)"
    return None


def _temporary_beside(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    # the name's start only: a name that fits in 255 bytes would not with the temporary's dot and suffix added
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return tmp


@contextlib.contextmanager
def _bad_input_if_unwritable(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {why_unwritable(path, exc)}") from None


def why_unwritable(path: Path, exc: OSError) -> str:
    """`exc`'s reason, or the folder on `path`'s way that is a file (the OS says only "Not a directory"), or `path`
    itself being a folder (the OS says "Is a directory", or "Device or resource busy" for `.`)."""
    if os.path.isdir(path):
        return "it is a folder: give the path of a file"
    blocker = next((p for p in path.parents if os.path.exists(p) and not os.path.isdir(p)), None)
    return f"{blocker} is a file, not a folder" if blocker is not None else exc.strerror or str(exc)
