"""Past one process on Ray: `esper ppo --workers N` and `esper run --seeds`, which change where runs train and
nothing they log; without Ray, one line; Ctrl-C or SIGTERM ends every run with `RunFailed` and leaves no Ray behind.

The tests that start Ray share one small local Ray (2 CPUs, no dashboard) and are `slow`: Ray takes seconds to
start, and a run on it seconds more."""

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import msgspec
import pytest
import torch

from cli_runner import environment, invoke, one_line_error, start
from esper.app import runs
from esper.app import seeds as fanout
from esper.errors import BadInput
from esper.leyline.events import CheckpointSaved, encode
from esper.simic.policy import load_policy
from esper.simic.ppo import PPOConfig
from esper.simic.ppo import train as train_ppo
from esper.store import Workspace
from esper.tolaria import cluster
from esper.tolaria.loop import RunResult
from test_simic import _selections



@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for the module; the code under test finds it started and leaves it running."""
    ray = pytest.importorskip("ray")
    sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    signal.signal(signal.SIGTERM, sigterm)  # ray.init's own handler would end pytest itself
    yield ray
    ray.shutdown()


# ---- without Ray ------------------------------------------------------------------------------------------


class _RecordingRay:
    """Stands in for the `ray` module: records how it was started."""

    def __init__(self):
        self.started: dict = {}

    def is_initialized(self) -> bool:
        return False

    def init(self, **options) -> None:
        self.started = options

    def shutdown(self) -> None:
        pass


@pytest.mark.parametrize("address", [None, "ray://head:10001"])
def test_a_clusters_workers_are_given_this_processs_cpu_kernel_set(address, monkeypatch):
    """A local Ray's workers inherit this process's environment; a cluster's nodes start workers in their own, so
    the kernel set (esper/_kernels.py) travels with the job: a run records the set it computed with either way."""
    ray = _RecordingRay()
    monkeypatch.setattr(cluster, "need_ray", lambda what: ray)
    monkeypatch.setenv("ESPER_CPU_KERNELS", "fast")
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    with cluster.connected("test", address):
        pass
    if address is None:
        assert "runtime_env" not in ray.started
    else:
        assert ray.started["runtime_env"]["env_vars"]["ESPER_CPU_KERNELS"] == "fast"
        assert ray.started["runtime_env"]["env_vars"]["MKL_CBWR"] == "AUTO"


@pytest.mark.parametrize("args", [["run", "--seeds", "0-1", "--epochs", "1"],
                                  ["ppo", "--workers", "2", "--episodes", "2", "--epochs", "1", "--out", "p.pt"]])
def test_without_ray_more_than_one_worker_or_seed_is_one_line_saying_how_to_install_it(args, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    monkeypatch.chdir(tmp_path)
    line = one_line_error(invoke(*args, workspace=tmp_path / "ws"))
    assert "pip install -e '.[ray]'" in line
    assert not (tmp_path / "ws").exists() and not (tmp_path / "p.pt").exists()  # nothing written


def test_a_ppo_job_whose_ray_fails_to_start_leaves_no_empty_store(tmp_path, monkeypatch):
    """The learner's store is made before the players: Ray refusing the job there (a join that fails after the
    address answered, a cluster without a GPU) must not leave it behind, empty, among the workspace's logs."""

    def refused(*args, **kwargs):
        raise BadInput("cannot start or join Ray at this machine: no")

    monkeypatch.setattr("esper.simic.rollout.RayPlayers.__init__", refused)
    refused_job = invoke("ppo", "--workers", "2", "--episodes", "2", "--epochs", "1", "--out", str(tmp_path / "p.pt"),
                         workspace=tmp_path / "ws")
    assert refused_job.exit_code == 2
    assert refused_job.stderr.splitlines()[-1] == "esper: cannot start or join Ray at this machine: no"
    assert not list((tmp_path / "ws").glob("*.duckdb*")) and not (tmp_path / "p.pt").exists()


@pytest.mark.slow
def test_one_seed_and_one_worker_never_load_ray(tmp_path):
    probe = f"""
import sys
from esper.app import runs, seeds
from esper.simic.ppo import PPOConfig, train
from esper.store import Workspace
ws = Workspace.at({str(tmp_path)!r})
seeds.train_seeds(seeds.plan_seeds(runs.RunRequest(epochs=1), [3], ws), ws)
train(PPOConfig(episodes=1, n_envs=1, epochs=1), ws.root / "p.pt", ws)
print("ray" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("text, seeds", [("0-3", [0, 1, 2, 3]), ("0,3,5", [0, 3, 5]), ("0-2,7, 1", [0, 1, 2, 7]),
                                         ("4", [4])])
def test_seeds_are_a_range_a_list_or_both(text, seeds):
    assert fanout.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "x", "3-1", "-1", "0-", "1,,2", "0-99999"])
def test_bad_seeds_are_bad_input(text):
    with pytest.raises(BadInput, match="--seeds"):
        fanout.parse_seeds(text)


def test_a_range_written_backwards_says_so():
    with pytest.raises(BadInput, match=": 3-1 runs backwards: write 1-3$"):
        fanout.parse_seeds("0,3-1")


@pytest.mark.parametrize("extra, says", [(["--seed", "2"], "--seed is for one run"),
                                         (["--print-config"], "--print-config is for one run")])
def test_seeds_refuse_the_options_of_one_run(extra, says, tmp_path):
    assert says in one_line_error(invoke("run", "--seeds", "0-1", *extra, workspace=tmp_path))
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_the_summary_is_mean_and_sample_sd_of_the_finished_runs():
    done = [fanout.SeedRun(0, "a", RunResult(0.5, 0.6, 100, {})),
            fanout.SeedRun(1, "b", RunResult(0.7, 0.8, 300, {})),
            fanout.SeedRun(2, "c", None, "diverged")]
    summary = fanout.summary(done)
    assert summary["runs"] == 3 and summary["finished"] == 2 and summary["failed"] == 1
    assert summary["test_accuracy"]["mean"] == pytest.approx(0.7)
    assert summary["test_accuracy"]["sd"] == pytest.approx(math.sqrt(0.02))
    assert summary["params"] == {"mean": 200.0, "sd": pytest.approx(math.sqrt(20_000))}
    assert fanout.summary(done[:1])["params"]["sd"] is None  # no spread from one run


# ---- on Ray -------------------------------------------------------------------------------------------------


def _events(ws: Workspace, run_id: str) -> list[bytes]:
    """A run's events as stored, but the checkpoints it saved (the files' paths are the workspace's)."""
    with ws.reader() as reader:
        return [encode(r.event) for r in reader.read_run(run_id) if not isinstance(r.event, CheckpointSaved)]


@pytest.mark.slow
def test_a_seed_trained_on_ray_logs_the_events_it_logs_trained_here(local_ray, tmp_path):
    ws = Workspace.at(tmp_path / "ray")
    planned = fanout.plan_seeds(runs.RunRequest(epochs=4, heuristic={"warmup_epochs": 1, "min_gain": 1.0}), [5, 6], ws)
    done = fanout.train_seeds(planned, ws)
    assert [d.seed for d in done] == [5, 6] and all(d.result is not None for d in done)
    assert sorted(p.name for p in ws.store_files()) == sorted(f"{p.run_id}.duckdb" for p in planned)  # one file each
    here = Workspace.at(tmp_path / "here")
    alone = fanout.plan_seeds(runs.RunRequest(epochs=4, heuristic={"warmup_epochs": 1, "min_gain": 1.0}), [6], here)[0]
    result = runs.start(alone, here)
    assert _events(ws, done[1].run_id) == _events(here, alone.run_id)
    assert result == done[1].result


@pytest.mark.slow
def test_seeds_print_a_json_object_per_run_and_a_summary_last(local_ray, tmp_path):
    result = invoke("run", "--seeds", "0,3", "--epochs", "2", "--json", workspace=tmp_path)
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    *per_run, last = lines
    assert sorted(r["run_id"].split("-")[2] for r in per_run) == ["0", "3"]
    assert all(set(r) == {"run_id", "val_accuracy", "test_accuracy", "params", "seeds"} for r in per_run)
    assert set(last) == {"summary"} and last["summary"]["runs"] == 2 and last["summary"]["finished"] == 2
    mean = sum(r["test_accuracy"] for r in per_run) / 2
    assert last["summary"]["test_accuracy"]["mean"] == pytest.approx(mean)


@pytest.mark.slow
def test_a_workspace_the_workers_cannot_see_is_refused_and_a_shared_one_keeps_no_probe(local_ray, tmp_path):
    cluster.check_shared(local_ray, tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "marker").write_text("another")
    assert "is another folder" in cluster._probe(str(tmp_path / "marker"), "token")
    assert "is not visible" in cluster._probe(str(tmp_path / "missing"), "token")


@pytest.mark.slow
def test_a_ray_of_this_machine_alone_is_checked_here_without_a_task(local_ray, tmp_path, monkeypatch):
    """Its workers see this machine's folders: the probe runs in this process (a task cost ~0.3 s per command)."""
    monkeypatch.setattr(local_ray, "remote", lambda *a, **k: pytest.fail("a probe task on a Ray of this machine"))
    cluster.check_shared(local_ray, tmp_path)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path and real_access(path, mode))
    with pytest.raises(BadInput, match="is not writable from Ray node"):
        cluster.check_shared(local_ray, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ray_workers_change_no_decision(local_ray, tmp_path):
    """An update's episodes split over two Ray workers are the episodes one process plays: the same commands
    and training, its floats equal to rounding (BLAS may sum in another order in another process: the logged
    values differ in the 7th digit, and the policy learnt from them a little more), and the same policy.
    The selection runs, split over the workers too, score alike. Each worker writes a store file of its own."""
    cfg = PPOConfig(epochs=3, episodes=6, n_envs=3, ent_coef=0.5, learning_rate=0.01, select_every=1, select_runs=3)
    out, played, weights, selections = tmp_path / "ppo.pt", {}, {}, {}
    for workers in (1, 2):
        ws = Workspace.at(tmp_path / f"workers-{workers}")
        result = train_ppo(msgspec.structs.replace(cfg, workers=workers), out, ws)
        with ws.reader() as reader:
            run_ids = [r for r, in reader.con.execute(
                "SELECT DISTINCT run_id FROM events WHERE run_id LIKE 'mnist1d-ppo-%' ORDER BY run_id").fetchall()]
            played[workers] = {r.removeprefix(f"mnist1d-{result['learner']}"):
                               [_job_neutral(rec.event) for rec in reader.read_run(r)] for r in run_ids}
        weights[workers] = load_policy(out)[1]["train"]["latest"]
        selections[workers] = _selections(ws, result["learner"])
    learner = result["learner"]
    stores = [f"{learner}-w0.duckdb", f"{learner}-w1.duckdb", f"{learner}.duckdb"]  # a file per worker
    assert sorted(p.name for p in ws.store_files()) == stores
    assert sorted(played[1]) == sorted([f"-u{u:04d}-e{i}" for u in (1, 2) for i in range(3)]
                                       + [f"-select-u{u:04d}-r{i}" for u in (0, 1, 2) for i in range(3)])
    assert _close(played[1], played[2])
    assert all(torch.allclose(weights[1][k], weights[2][k], atol=1e-4) for k in weights[1])
    scores = {w: {u: {k: v for k, v in s.items() if k.startswith("select.")} for u, s in selections[w].items()}
              for w in (1, 2)}
    assert sorted(scores[1]) == [0, 1, 2] and _close(scores[1], scores[2])


@pytest.mark.slow
def test_a_free_place_takes_the_next_task_and_runs_one_task_at_a_time(local_ray, tmp_path):
    """Tasks of unequal length even out: while task 0 holds its place (until every other task has ended), the
    other place runs tasks 1-4 one after another; values come back in task order, `on_done` sees each."""
    release = tmp_path / "release"

    def hold(i: int, place: int) -> tuple[int, int, float, float]:  # defined here: Ray ships it by value
        began = time.time()
        while i == 0 and not release.exists():
            time.sleep(0.01)
        time.sleep(0.05)
        return i, place, began, time.time()

    task, ended = local_ray.remote(num_cpus=1)(hold), []

    def on_done(i, value):
        ended.append(i)
        if len(ended) == 4:
            release.touch()

    spans = cluster.gather(local_ray, 5, lambda i, place: task.remote(i, place), at_once=2, on_done=on_done)
    assert [i for i, *_ in spans] == [0, 1, 2, 3, 4] and ended == [1, 2, 3, 4, 0]
    assert [place for _, place, *_ in spans] == [0, 1, 1, 1, 1]
    assert all(spans[k][3] <= spans[k + 1][2] for k in range(1, 4))  # one task at a time on place 1


def _job_neutral(event) -> dict:
    """The event as JSON, but the hash of the policy file a rollout run names: each job's checkpoint file is its own
    (it names the job's store), so two jobs that play alike still name files of different hashes."""
    data = msgspec.json.decode(encode(event))
    data.get("config", {}).pop("policy_sha256", None)
    return data


def _close(a, b) -> bool:
    """Equal, floats to rounding, through nested dicts and lists."""
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


# ---- stopping ---------------------------------------------------------------------------------------------------


def _epochs(ws: Workspace) -> dict[str, int]:
    """Epochs each run has logged so far (stores held by their writers are read from copies)."""
    with ws.reader() as reader:
        return dict(reader.con.execute(
            "SELECT run_id, count(*) FILTER (WHERE type = 'EpochEnded') FROM events GROUP BY run_id").fetchall())


def _ray_processes(temp_dir: str) -> list[str]:
    """The command lines of the processes of the Ray whose temporary folder is `temp_dir`."""
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout  # whole lines
    return [line for line in ps.splitlines() if temp_dir in line]


@pytest.fixture
def ray_temp_dir():
    """A folder for a Ray of its own, removed afterwards: under /tmp, as Ray's socket paths must stay short."""
    path = tempfile.mkdtemp(prefix="esper-ray-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_sigterm_ends_every_seeds_run_with_run_failed_and_leaves_no_ray_process(tmp_path, ray_temp_dir):
    temp_dir = ray_temp_dir
    env = environment(tmp_path, RAY_TMPDIR=temp_dir)
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_MODE", None)  # as a user who never heard of it
    process = start("run", "--seeds", "0-1", "--epochs", "200", env=env, stdout=subprocess.DEVNULL)
    ws = Workspace.at(tmp_path)
    try:
        deadline = time.monotonic() + 600
        while not (len(epochs := _epochs(ws)) == 2 and min(epochs.values()) >= 1):  # both runs are training
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(1)
        assert _ray_processes(temp_dir)  # Ray runs under it
        process.terminate()
        assert process.wait(timeout=300) == 143, process.stderr.read()
        said = process.stderr.read()
        assert "Token authentication" not in said  # Ray's notices stay out of the command's output
    finally:
        process.kill()
    with ws.reader() as reader:
        ends = dict(reader.con.execute("SELECT run_id, ended FROM runs").fetchall())
        errors = [e for e, in reader.con.execute(
            "SELECT payload->>'$.error' FROM events WHERE type = 'RunFailed'").fetchall()]
    left = sorted(ends, key=lambda run_id: run_id.split("-")[2])  # in seed order, as planned
    assert said.strip().splitlines()[-2:] == [
        f"note: esper run --resume RUN continues each run left unfinished: {', '.join(left)}",
        "esper: terminated"], said
    assert len(ends) == 2 and set(ends.values()) == {"RunFailed"}
    assert errors == ["interrupted", "interrupted"]  # ray.cancel's KeyboardInterrupt: the runs stopped, not failed
    assert _ray_processes(temp_dir) == []


@pytest.mark.parametrize("command", [["run", "--epochs", "1", "--seeds", "0,1"],
                                     ["ppo", "--workers", "2", "--episodes", "1", "--epochs", "1", "--out", "p.pt"]])
def test_a_ray_address_where_nothing_answers_is_one_line_at_once(tmp_path, command):
    """Ray would retry for about a minute, silently; nothing listens on port 1."""
    started = time.monotonic()
    line = one_line_error(invoke(*command, "--ray-address", "127.0.0.1:1", "--workspace", str(tmp_path / "ws")))
    assert line.startswith("esper: cannot reach Ray at 127.0.0.1:1: Connection refused"), line
    assert time.monotonic() - started < 60 and not (tmp_path / "ws").exists()
    line = one_line_error(invoke(*command, "--ray-address", "garbage", "--workspace", str(tmp_path / "ws")))
    assert line == "esper: Ray address 'garbage': give HOST:PORT, ray://HOST:PORT, auto or local", line
    assert not (tmp_path / "ws").exists()  # Ray refused it only after the learner's store was made


@pytest.mark.slow  # trains an epoch
def test_one_seed_trains_here_and_says_it_does_not_use_the_ray_address(tmp_path):
    result = invoke("run", "--seeds", "0", "--epochs", "1", "--ray-address", "127.0.0.1:1", workspace=tmp_path)
    assert result.exit_code == 0, result.stderr
    said = result.stderr.splitlines()
    assert "note: one seed trains here, not on Ray: --ray-address 127.0.0.1:1 is not used" in said
    assert next(line for line in said if line.startswith("seeds 0:")).endswith(", here"), said



def _serve(answer: Callable[[socket.socket], None]) -> tuple[str, socket.socket]:
    """A local server that treats each connection with `answer`; its address, and the listening socket to close."""
    server = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        with contextlib.suppress(OSError):  # the test closed the server
            while True:
                connection, _ = server.accept()
                threading.Thread(target=answer, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return f"127.0.0.1:{server.getsockname()[1]}", server


def _web_server(connection: socket.socket) -> None:
    with connection:
        connection.recv(1024)
        connection.sendall(b"HTTP/1.0 505 HTTP Version Not Supported\r\n\r\n")


def _http2_server(connection: socket.socket) -> None:
    with connection:
        connection.recv(1024)
        connection.sendall(bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))  # an empty SETTINGS frame, as gRPC servers open


def _silent(connection: socket.socket) -> None:
    time.sleep(5)
    connection.close()


@pytest.mark.parametrize("answer", [_web_server, _silent])
def test_an_address_where_no_ray_head_answers_is_one_line_before_anything_is_written(answer, tmp_path, monkeypatch):
    """Ray's own join waits there for minutes (a web server, the dashboard's port, something silent)."""
    monkeypatch.setattr(cluster, "REACH_TIMEOUT_S", 0.5)
    address, server = _serve(answer)
    with server:
        for command in (["run", "--epochs", "1", "--seeds", "0,1"],
                        ["ppo", "--workers", "2", "--episodes", "1", "--epochs", "1", "--out", str(tmp_path / "p.pt")]):
            line = one_line_error(invoke(*command, "--ray-address", address, "--workspace", str(tmp_path / "ws")))
            assert line == (f"esper: cannot join Ray at {address}: what answers there is no Ray cluster's head (it does "
                            "not speak gRPC); give the address `ray start --head` printed"), line
            assert not (tmp_path / "ws").exists()


def test_a_server_that_answers_as_grpc_does_is_let_through_to_ray():
    address, server = _serve(_http2_server)
    with server:
        assert cluster.check_reachable(address) is None


@pytest.mark.parametrize("fails", [False, True])
def test_what_rays_core_writes_to_stderr_while_joining_shows_only_if_the_join_succeeds(fails):
    """Ray's core writes to the file descriptor, past Python's sys.stderr: a subprocess sees what the user would."""
    code = textwrap.dedent(f"""
        import os, sys
        from esper.tolaria.cluster import _stderr_held
        print("before", file=sys.stderr)
        try:
            with _stderr_held():
                os.write(2, b"core warning\\n")
                if {fails}:
                    raise ConnectionError("no")
        except ConnectionError:
            print("one line", file=sys.stderr)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stderr.splitlines() == (["before", "one line"] if fails else ["before", "core warning"]), done.stderr
