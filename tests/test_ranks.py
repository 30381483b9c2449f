"""One run trained data-parallel by two processes (gloo, CPU): the decisions of one process, one stream written by
rank 0, the same parameters on every rank after every epoch, and no rank left waiting when another fails."""

import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cli_runner import invoke
from esper.errors import BadInput
from esper.leyline.events import CheckpointSaved, EpochEnded, RunFailed, RunResumed, RunStarted, encode
from esper.store import Workspace
from esper.tolaria import launch
from esper.tolaria.ranks import Message, shard_bounds

ROOT = Path(__file__).resolve().parents[1]
GROWING = ("--heuristic", "finish_epochs=3", "--heuristic", "max_live_seeds=1")
"""A short run in which the heuristic still germinates (by default it starts no seed with fewer than 7 epochs left),
one seed at a time: its decisions hang on gates, not on how close two accuracies come (BatchNorm sees shards)."""


@given(st.integers(0, 1000), st.integers(1, 9))
def test_the_shards_cover_a_batch_once_in_order(n, world):
    bounds = [shard_bounds(n, rank, world) for rank in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("args, refused", [
    (["run", "--epochs", "2", "--seed", "3"], None),
    (["run", "--seeds", "0-3"], "esper run --seeds"),
    (["run", "--seeds=0-3"], "esper run --seeds"),
    (["run", "--workspace", "w", "--resume", "r"], "esper run --resume"),
    (["run", "--print-config"], "esper run --print-config"),
    (["ppo", "--out", "p.pt"], "esper ppo"),
    (["replay", "RUN", "--verify"], "esper replay"),
    (["--help"], "esper"),
])
def test_under_torchrun_only_a_plain_run_is_shared_by_the_ranks(monkeypatch, args, refused):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launch.refusal(args) is None  # alone, every command line runs
    monkeypatch.setenv("WORLD_SIZE", "2")
    why = launch.refusal(args)
    assert why is None if refused is None else f"run `{refused}` without torchrun" in why


TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ESPER_RANKS_TIMEOUT")


@pytest.mark.parametrize("env, says", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' must be a whole number, at least 1"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' must be a whole number, at least 1"),
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE is set but RANK is not"),
    ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK='x' must be a whole number, at least 0"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "-1"}, "LOCAL_RANK='-1' must be a whole number, at least 0"),
    ({"WORLD_SIZE": "2", "RANK": "1", "ESPER_RANKS_TIMEOUT": "abc"}, "ESPER_RANKS_TIMEOUT='abc' must be a positive"),
    ({"WORLD_SIZE": "2", "RANK": "0", "ESPER_RANKS_TIMEOUT": "0"}, "ESPER_RANKS_TIMEOUT='0' must be a positive"),
    ({"WORLD_SIZE": "2", "RANK": "0", "ESPER_RANKS_TIMEOUT": "nan"}, "ESPER_RANKS_TIMEOUT='nan' must be a positive"),
    ({"WORLD_SIZE": "2", "RANK": "0", "ESPER_RANKS_TIMEOUT": "1e14"}, "ESPER_RANKS_TIMEOUT='1e14' must be a positive"),
])
def test_torchrun_variables_no_torchrun_would_set_are_one_line(monkeypatch, env, says):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launch.problem().startswith(says), launch.problem()
    with pytest.raises(BadInput):
        launch.place()


def test_bad_input_is_said_by_a_process_that_runs_alone_whatever_its_rank_variable(tmp_path):
    """RANK=1 without WORLD_SIZE is no torchrun: the process runs alone and says what is wrong with its command."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES} | {"RANK": "1"}
    done = subprocess.run([sys.executable, "-m", "esper", "runs", "-w", str(tmp_path / "missing")], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 2 and "does not exist" in done.stderr, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args", [["ppo", "--out", "p.pt"], ["run", "--device", "cuda:1"]])
def test_a_refusing_follower_waits_for_torchrun_to_stop_it_and_says_nothing(tmp_path, args):
    """torchrun stops every rank once one ends in error: a follower that ended first could have rank 0 stopped before
    it said why. The follower stays, silent, until it is stopped (SIGTERM, as torchrun sends), then ends with 2."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES} | {"WORLD_SIZE": "2", "RANK": "1"}
    follower = subprocess.Popen([sys.executable, "-m", "esper", *args, "--workspace", str(tmp_path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(12)  # long enough to reach the refusal (torch imported); stopped before, it would end with 143
        assert follower.poll() is None, follower.communicate()
        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
    assert follower.returncode == 2 and out == "" and err == "", (follower.returncode, out, err)


def test_torchrun_variables_give_the_place_or_none(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert launch.place() is None and launch.problem() is None
    monkeypatch.setenv("WORLD_SIZE", "")  # empty: unset
    assert launch.place() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert launch.place() == launch.Place(rank=3, world=4, local=3, timeout_s=launch.TIMEOUT_S)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("ESPER_RANKS_TIMEOUT", "2.5")
    assert launch.place() == launch.Place(rank=3, world=4, local=1, timeout_s=2.5)


def test_a_bad_world_size_is_one_line_for_every_command(tmp_path):
    """Every command reads torchrun's variables first (even --version): a bad one is one line, not a traceback."""
    done = subprocess.run([sys.executable, "-m", "esper", "--version"], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES} | {"WORLD_SIZE": "abc"})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == "esper: WORLD_SIZE='abc' must be a whole number, at least 1", done.stderr


def test_a_message_crosses_as_bytes():
    message = Message("epoch", 3, [b'{"type":"Wait"}'], rng=bytes(range(7)))
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(message), type=Message) == message


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("last, parting", [("finish", ["barrier", "destroy"]), ("stop", ["destroy"]),
                                           ("epoch", ["destroy"])])
def test_the_ranks_of_a_finished_run_wait_for_each_other_before_they_part(monkeypatch, rank, last, parting):
    """A follower that leaves while rank 0 still measures the test split can abort at its interpreter's end (gloo
    lets go of the last message's tensors late): after `finish` the ranks meet in a barrier first. A run that failed
    (`stop`) or broke off mid-run parts at once: its ranks may be inside different collectives."""
    from torch import distributed as dist

    from esper.tolaria.ranks import Ranks

    calls = []
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    ranks = Ranks(rank, 2, torch.device("cpu"))
    wire = msgspec.msgpack.encode(Message(last, 1, [], error="x" if last == "stop" else ""))
    monkeypatch.setattr(ranks, "_broadcast_bytes", lambda data: wire)  # what rank 0 sends is what a follower gets
    if ranks.leader:
        ranks.send(Message("epoch", 1))
        ranks.send(msgspec.msgpack.decode(wire, type=Message))
    else:
        assert ranks.receive().kind == last
    ranks.close()
    assert calls == parting


# ---- two ranks --------------------------------------------------------------------------------------


def decisions(events) -> list[tuple]:
    """What a run decided, without the numbers behind it: commands, refusals, germinations, transitions."""
    out = []
    for e in events:
        name = type(e).__name__
        if name == "CommandIssued":
            out.append((name, e.epoch, msgspec.to_builtins(e.command)))
        elif name == "CommandRejected":
            out.append((name, e.epoch, msgspec.to_builtins(e.command), e.evidence.get("rule")))
        elif name == "SeedGerminated":
            out.append((name, e.epoch, e.seed_id, e.slot, e.blueprint, e.params))
        elif name == "SeedTransitioned":
            out.append((name, e.epoch, e.seed_id, e.from_stage, e.to_stage, e.trigger))
    return out


def runs_in(workspace: Path) -> dict[str, list]:
    with Workspace.at(workspace).reader() as reader:
        [(_, rows)] = reader.query("select distinct run_id from events")
        return {run_id: [r.event for r in reader.read_run(run_id)] for (run_id,) in rows}


def torchrun(*args: str, workspace: Path, timeout: int = 600, **extra: str) -> subprocess.CompletedProcess:
    temp = workspace.parent / f"{workspace.name}-tmp"  # torchrun's own folder, with the test's rather than in /tmp
    temp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ESPER_WORKSPACE": str(workspace), "ESPER_RANKS_TIMEOUT": "120",
           "TMPDIR": str(temp), **extra}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "esper", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_two_ranks_decide_as_one_process_and_write_one_run(tmp_path):
    args = ("run", "--epochs", "8", "--seed", "0", *GROWING, "--json")
    ranked = torchrun(*args, workspace=tmp_path / "ranked")
    assert ranked.returncode == 0, ranked.stderr[-2000:]
    alone = invoke(*args, workspace=tmp_path / "alone")
    assert alone.exit_code == 0, alone.stderr
    [ranked_events] = runs_in(tmp_path / "ranked").values()  # one run, in one store file: rank 0's
    [alone_events] = runs_in(tmp_path / "alone").values()
    assert len(list((tmp_path / "ranked").glob("*.duckdb"))) == 1
    started = ranked_events[0]
    assert isinstance(started, RunStarted) and started.ranks == 2
    assert type(ranked_events[-1]).__name__ == "RunFinished"
    ours = decisions(ranked_events)
    assert ours == decisions(alone_events)
    ranked_epochs, alone_epochs = ([e for e in events if isinstance(e, EpochEnded)] for events in (ranked_events, alone_events))
    for a, b in zip(ranked_epochs[:2], alone_epochs):  # no seed yet (the host has no BatchNorm): rounding apart
        for field in ("train_loss", "val_loss", "val_accuracy"):
            assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-4)
    for a, b in zip(ranked_epochs, alone_epochs):
        assert [s.seed_id for s in a.seeds] == [s.seed_id for s in b.seeds]
        for x, y in zip(a.seeds, b.seeds):  # health: from the whole batch's gradient, on every rank alike
            assert 0.0 <= x.gradient_health <= 1.0 and x.gradient_health == pytest.approx(y.gradient_health, abs=0.05)
    stages = {d[4] for d in ours if d[0] == "SeedTransitioned"}
    assert {"TRAINING", "BLENDING", "FOSSILIZED"} <= stages, "the comparison saw no seed grow"
    result = json.loads(ranked.stdout.strip().splitlines()[-1])
    assert result["run_id"] in runs_in(tmp_path / "ranked")
    # one process re-executes it shard by shard as the ranks trained it: every number the same, to the bit
    verified = invoke("replay", result["run_id"], "--verify", "--exact", workspace=tmp_path / "ranked")
    assert verified.exit_code == 0, verified.stderr
    assert "trained by 2 ranks, re-executed here as their 2 shards" in verified.stderr
    assert "events, bit for bit" in verified.stderr


@pytest.mark.slow
def test_a_ranked_run_killed_mid_epoch_resumes_alone_to_the_events_its_ranks_would_have_written(tmp_path):
    args = ("run", "--epochs", "6", "--seed", "1", *GROWING)
    whole = torchrun(*args, workspace=tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    cut = torchrun(*args, workspace=tmp_path / "cut", timeout=300, ESPER_CRASH_AT="mid-epoch@4")  # SIGKILL, each rank
    assert cut.returncode != 0
    [run_id] = runs_in(tmp_path / "cut")
    resumed = invoke("run", "--resume", run_id, workspace=tmp_path / "cut")  # one process, as the README says
    assert resumed.exit_code == 0, resumed.stderr
    [alone] = runs_in(tmp_path / "whole").values()
    [continued] = runs_in(tmp_path / "cut").values()
    assert any(isinstance(e, RunResumed) for e in continued)
    assert as_left_alone(continued) == as_left_alone(alone)


def as_left_alone(events: list) -> list[bytes]:
    """The events a run left alone writes: without checkpoints, resumption markers and the resumed interruption."""
    return [encode(e) for e in events if not isinstance(e, (CheckpointSaved, RunResumed, RunFailed))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, port: int, folder: str, args: list[str], fail_at_step: int | None) -> None:
    """One rank, as torchrun would start it, running `esper ARGS` in this process: after each epoch's end it
    notes a digest of its model and optimizers; with `fail_at_step`, rank 1 crashes at that training step."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), ESPER_RANKS_TIMEOUT="60")
    from esper.cli.app import app
    from esper.tolaria.trainer import Trainer

    digests: list[str] = []
    totals, step = Trainer.epoch_totals, Trainer.train_step

    def noting(trainer):
        out = totals(trainer)
        digests.append(digest(trainer))
        Path(folder, f"digests-{rank}.json").write_text(json.dumps(digests))
        Path(folder, f"threads-during-{rank}.json").write_text(json.dumps(thread_names()))
        return out

    steps = [0]

    def crashing(trainer, x, y):
        steps[0] += 1
        if rank == 1 and steps[0] == fail_at_step:
            raise RuntimeError("rank 1 broke on purpose")
        return step(trainer, x, y)

    Trainer.epoch_totals, Trainer.train_step = noting, crashing
    sys.stderr = open(Path(folder, f"stderr-{rank}.txt"), "w")
    code = 0
    try:
        app(args, prog_name="esper")
    except SystemExit as exc:
        code = exc.code or 0
    Path(folder, f"threads-after-{rank}.json").write_text(json.dumps(thread_names()))
    sys.stderr.flush()
    os._exit(code)


def thread_names() -> list[str]:
    """The names of this process's threads, as the kernel knows them (C++ threads included)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended while listed
            names.append((task / "comm").read_text().strip())
    return names


def digest(trainer) -> str:
    """Every parameter, buffer and optimizer state tensor of the trainer, hashed bit for bit."""
    h = hashlib.sha256()
    states = [trainer.model.state_dict()] + [opt.state for opt in [trainer.host_optimizer, *trainer.seed_optimizers.values()]]
    for state in states:
        for key, value in state.items():
            for part in value.values() if isinstance(value, dict) else [value]:
                if isinstance(part, torch.Tensor):
                    h.update(part.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        h.update(str(len(state)).encode())
    return h.hexdigest()


def two_ranks(folder: Path, args: list[str], fail_at_step: int | None = None, timeout: float = 300) -> list[int]:
    """Run both ranks as processes of their own; their exit codes (a rank still running at `timeout` is killed and
    fails the test: a rank must never wait forever)."""
    context = multiprocessing.get_context("spawn")
    port = free_port()
    ranks = [context.Process(target=rank_main, args=(r, port, str(folder), args, fail_at_step)) for r in range(2)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(timeout)
    hung = [r for r, p in enumerate(ranks) if p.is_alive()]
    for p in ranks:
        if p.is_alive():
            p.kill()
    assert not hung, f"rank(s) {hung} still waiting after {timeout} s"
    return [p.exitcode for p in ranks]


@pytest.mark.slow
def test_the_ranks_hold_the_same_weights_and_optimizer_states_after_every_epoch(tmp_path):
    codes = two_ranks(tmp_path, ["run", "--epochs", "7", "--seed", "1", *GROWING, "--workspace", str(tmp_path / "ws")])
    assert codes == [0, 0], [Path(tmp_path, f"stderr-{r}.txt").read_text() for r in range(2)]
    zero, one = (json.loads(Path(tmp_path, f"digests-{r}.json").read_text()) for r in range(2))
    assert len(zero) == 7 and zero == one
    [events] = runs_in(tmp_path / "ws").values()
    assert {"SeedGerminated", "RunFinished"} <= {type(e).__name__ for e in events}, "no seed grew to compare"


@pytest.mark.slow
def test_a_finished_ranked_run_ends_its_process_group_threads_before_the_interpreter_ends(tmp_path):
    """gloo's threads still running while Python finalizes can abort a finished rank (`ranks._import_before_the_group`)."""
    codes = two_ranks(tmp_path, ["run", "--epochs", "1", "--seed", "2", "--workspace", str(tmp_path / "ws")])
    assert codes == [0, 0], [Path(tmp_path, f"stderr-{r}.txt").read_text() for r in range(2)]
    for rank in range(2):
        during, after = (json.loads(Path(tmp_path, f"threads-{when}-{rank}.json").read_text())
                         for when in ("during", "after"))
        assert any("gloo" in name for name in during), during
        assert not any("gloo" in name for name in after), after


@pytest.mark.slow
def test_a_rank_that_fails_stops_the_run_instead_of_hanging(tmp_path):
    codes = two_ranks(tmp_path, ["run", "--epochs", "4", "--workspace", str(tmp_path / "ws")], fail_at_step=60)
    assert codes == [1, 1]
    [events] = runs_in(tmp_path / "ws").values()
    assert isinstance(events[-1], RunFailed) and "lost the other ranks" in events[-1].error
    for rank, expected in ((0, "esper: rank 0 lost the other ranks"), (1, "esper: internal error: RuntimeError: rank 1 broke")):
        lines = Path(tmp_path, f"stderr-{rank}.txt").read_text().strip().splitlines()
        assert lines[-1].startswith(expected) and "Traceback" not in "".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("args, says", [
    (("run", "--task", "nope"), "esper: unknown task 'nope'"),  # found by rank 0, which stops rank 1
    (("run", "--device", "cuda:1"), "esper: under torchrun each rank trains on cuda:LOCAL_RANK"),  # by each rank
    (("ppo", "--out", "p.pt"), "esper: under torchrun only `esper run` trains, one run shared by the ranks: run "
                               "`esper ppo` without torchrun"),  # by each rank, said by rank 0 alone
    (("run", "--seeds", "0-1"), "esper: under torchrun only `esper run` trains"),
    pytest.param(("run", "--device", "cuda"), "esper: device cuda asked for, but CUDA is not available here (use cpu)",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="where CUDA exists, the ranks train")),
])
def test_bad_input_under_torchrun_is_one_line_from_rank_0(tmp_path, args, says):
    done = torchrun(*args, workspace=tmp_path, timeout=300)
    assert done.returncode != 0
    ours = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("esper: ")]
    assert len(ours) == 1 and ours[0].startswith(says), ours
    assert not list(tmp_path.glob("*.duckdb"))
