"""Runs past one process, on Ray: a local Ray started here by default, a cluster with an address.

Ray is an optional extra and `import ray` happens here only, when a command asks for more than one worker or
seed: `import esper` and a single `esper run` never load it. What runs on Ray is a task (a function), never a
long-lived actor: `ray.cancel` stops a running task the way Ctrl-C stops a command (a `KeyboardInterrupt` in it),
so its runs end with `RunFailed` as they would here. Each task writes a store file of its own in the workspace
(one writer per file), so on a cluster the workspace must be shared storage every node mounts at the same path;
`check_shared` refuses one that a node cannot write before anything trains.
"""

import contextlib
import functools
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from esper._kernels import kernel_environment
from esper.errors import BadInput, first_line

INSTALL = "pip install -e '.[ray]'"
STOP_GRACE_S = 120.0
"""How long stopped tasks get to append their runs' `RunFailed` (an epoch ends, a batch is written) before the
command leaves without them; Ray then kills them, and their logs end at their last stored epoch."""


def need_ray(what: str) -> Any:
    """The `ray` module; without it, one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BadInput(f"{what} needs Ray, which is not installed: {INSTALL}") from None
    return ray


@contextlib.contextmanager
def connected(what: str, address: str | None = None) -> Iterator[Any]:
    """Ray, started here (every core of this machine) or joined at `address` (else `$RAY_ADDRESS`), for the
    block; shut down after it if started here. A Ray already started in this process (a test's, a notebook's)
    is used as it is and left running."""
    ray = need_ray(what)
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": "warning"}  # stdout is for results only
    if address is not None:  # a local Ray's workers inherit this environment; a cluster's are given the kernel set
        options["runtime_env"] = {"env_vars": kernel_environment()}
    else:
        # Ray renices its workers to 15 so that its own daemons stay responsive; here the workers do all the work,
        # and on a busy machine they would yield to every other process (runs on Ray slower than one alone)
        options |= {"include_dashboard": False, "_system_config": {"worker_niceness": 0}}
        # Newer Rays protect a local cluster with a token by default and say so on stderr, where it reads as a
        # problem with the command: the notice is silenced, the protection kept (naming the mode instead skips
        # the token Ray would make, and the cluster then refuses its own workers)
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    check_reachable(address)
    sigterm = signal.getsignal(signal.SIGTERM)  # ray.init replaces it with an exit that would skip RunFailed
    try:
        # only when joining: a local start spawns daemons, which would inherit the held stderr
        with _stderr_held() if address is not None else contextlib.nullcontext():
            ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise BadInput(f"cannot start or join Ray at {address or 'this machine'}: {first_line(exc)}") from None
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _stderr_held() -> Iterator[None]:
    """What this process writes to its stderr in the block (Ray's core writes there directly), held back: written
    out after a block that succeeds, dropped after one that fails, whose error then says what went wrong in one line.
    Joining an address where something other than Ray answers, Ray's core prints a warning a second for ~20 s
    before it gives up."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        os.write(2, held.read())


REACH_TIMEOUT_S = 5.0
"""How long joining a cluster waits for its address to answer, and then to answer as gRPC does, before saying it
cannot (Ray itself would wait a minute where nothing listens, and minutes where something else does)."""


def check_reachable(address: str | None) -> None:
    """Bad input, in one line, if `address` (else `$RAY_ADDRESS`; none: a local Ray is started) is none of Ray's
    forms, or nothing answers at a `HOST:PORT` one, or what answers is no gRPC server (Ray's others, `auto`, `local`
    or `ray://...`, are Ray's to resolve). Commands call it before they write anything, `connected` again."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None or address in ("auto", "local") or "://" in address:
        return
    host, colon, port = address.rpartition(":")
    if not (colon and host and port.isdigit()):
        raise BadInput(f"Ray address {address!r}: give HOST:PORT, ray://HOST:PORT, auto or local")
    try:
        connection = socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S)
    except (OSError, ValueError) as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else getattr(exc, "strerror", None) or str(exc)
        raise BadInput(f"cannot reach Ray at {address}: {why} (is a Ray cluster running there? `ray start --head` "
                       "starts one)") from None
    with connection:
        tls = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")  # a TLS handshake would come first
        if not tls and not _speaks_http2(connection):
            raise BadInput(f"cannot join Ray at {address}: what answers there is no Ray cluster's head (it does not "
                           "speak gRPC); give the address `ray start --head` printed")


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
"""How an HTTP/2 client opens a connection: the preface, then an empty SETTINGS frame. Ray's head (its GCS) is a
gRPC server, and a server of HTTP/2 answers with a SETTINGS frame of its own (a frame's type is its 4th byte)."""


def _speaks_http2(connection: socket.socket) -> bool:
    """Whether the server at the other end of `connection` answers as HTTP/2 does. Anything else there (a web
    server, the dashboard's port, something silent) would keep Ray's own join waiting for minutes."""
    try:
        connection.sendall(HTTP2_PREFACE)
        header = b""
        while len(header) < 9 and (chunk := connection.recv(9 - len(header))):
            header += chunk
    except OSError:  # the timeout included
        return False
    return len(header) == 9 and header[3] == 4


def cpus(ray: Any) -> int:
    """The CPUs Ray schedules on (every node's)."""
    return int(ray.cluster_resources().get("CPU", 1))


def remote(ray: Any, function: Callable, device: str = "cpu") -> Any:
    """`function` as a Ray task of one CPU thread (a CPU run trains on one), and a share of a GPU for a CUDA run."""
    gpus = GPU_SHARE if device.startswith("cuda") else 0
    if gpus and not ray.cluster_resources().get("GPU"):
        raise BadInput(f"--device {device}: the Ray cluster has no GPU")
    return ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_interruptible(function))


def _interruptible(function: Callable) -> Callable:
    """`function`, made sure that `ray.cancel` interrupts it: the cancel is a simulated SIGINT, which does nothing
    where SIGINT is ignored, and a command started in the background (`esper run ... &`) passes that on to Ray."""

    @functools.wraps(function)
    def task(*args: Any) -> Any:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return function(*args)

    return task


GPU_SHARE = 0.25
"""The fraction of a GPU a CUDA run asks Ray for: small runs share a device four at a time."""


def gather(ray: Any, n: int, start: Callable[[int, int], Any], at_once: int | None = None,
           on_done: Callable[[int, Any], None] = lambda i, value: None) -> list[Any]:
    """Tasks 0..n-1, at most `at_once` (None: all) running at a time: `start(i, place)` submits task i and returns
    its ref, `place` (0..at_once-1) being the place it takes over from the task that ended there, so that what a
    place owns (a store file: one writer per file) has one task at a time. Each next task starts as soon as a
    place is free, so tasks of unequal length even out over the places. The values in order, `on_done(i, value)`
    as each ends. A task's exception is raised here as its own (the other tasks are stopped). If this is
    interrupted (Ctrl-C, SIGTERM), every running task is cancelled: it gets a `KeyboardInterrupt`, ends its runs
    with `RunFailed` and closes its store, and this waits for that (at most `STOP_GRACE_S`) before raising the
    interruption; the tasks not started yet never start."""
    values: list[Any] = [None] * n
    free = list(range(n if at_once is None else at_once))
    running: dict[Any, tuple[int, int]] = {}  # ref -> (task, place)
    started = 0
    try:
        while started < n or running:
            while started < n and free:
                place = free.pop(0)
                running[start(started, place)] = (started, place)
                started += 1
            done, _ = _poll(ray, list(running))
            for ref in done:
                i, place = running.pop(ref)
                values[i] = _value(ray, ref)
                on_done(i, values[i])
                free.append(place)
    except BaseException:
        stop(ray, list(running))
        raise
    return values


def _poll(ray: Any, refs: list[Any]) -> tuple[list[Any], list[Any]]:
    """The tasks that have ended and the others, after a short sleep if none has. The waiting is mostly Python's,
    where a signal's exception keeps its type: one raised inside `ray.wait` comes out as a plain KeyboardInterrupt
    (the CLI still knows a SIGTERM from `Terminated.received`)."""
    done, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
    if not done:
        time.sleep(POLL_S)
    return done, pending


POLL_S = 0.01
"""A poll is one cheap `ray.wait`; a free place waits at most this long for its next task."""


def _value(ray: Any, ref: Any) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # the task's own exception (RunFailed, StoreFailed, a bug ...)
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        raise cause from None
    except ray.exceptions.RayError as exc:  # the worker or its node died
        from esper.errors import RunFailed

        raise RunFailed(f"a Ray worker was lost: {first_line(exc)}") from None


def stop(ray: Any, refs: Sequence[Any]) -> None:
    """Cancel the tasks and wait (at most `STOP_GRACE_S`) for them to end; what they raise is theirs to log."""
    for ref in refs:
        ray.cancel(ref)
    deadline = time.monotonic() + STOP_GRACE_S
    pending = list(refs)
    while pending and time.monotonic() < deadline:
        _, pending = _poll(ray, pending)


def check_shared(ray: Any, root: Path) -> None:
    """Refuse, in one line, a workspace some node of the Ray cluster cannot write: a probe task on every node
    reads a token written here and checks it may write beside it (the same storage, writable). A workspace this
    made and then refused is removed again."""
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        problem = _probe_nodes(ray, root)
        if problem:
            raise BadInput(f"workspace {root} {problem}: on a cluster the workspace must be shared storage that every "
                           "node mounts at the same path")
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                root.rmdir()
        raise


def _probe_nodes(ray: Any, root: Path) -> str | None:
    """What is wrong with `root` on the first node where something is (None: nothing)."""
    token = secrets.token_hex(8)
    marker = root / f".esper-probe-{token}"
    marker.write_text(token)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
        if not nodes:
            raise BadInput("the Ray cluster has no live node with a CPU to train on")
        if {n.get("NodeManagerAddress") for n in nodes} == {ray.util.get_node_ip_address()}:
            return _probe(str(marker), token)  # every node is this machine (a Ray started here): no task needed
        probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
        problems = ray.get([probe.options(scheduling_strategy=_on(n["NodeID"])).remote(str(marker), token)
                            for n in nodes])
    finally:
        marker.unlink(missing_ok=True)
    return next((p for p in problems if p), None)


def _on(node_id: str) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id, soft=False)


def _probe(marker: str, token: str) -> str | None:
    """On a node: None if the workspace holding `marker` is the driver's and writable here, else what is wrong."""
    import ray

    node = ray.util.get_node_ip_address()
    try:
        if Path(marker).read_text() != token:
            return f"is another folder on Ray node {node}"
    except OSError:
        return f"is not visible from Ray node {node}"
    if not os.access(Path(marker).parent, os.W_OK | os.X_OK):
        return f"is not writable from Ray node {node}"
    return None
