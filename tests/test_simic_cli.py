"""`esper ppo`, `esper iql` and `esper run --controller policy` end to end, with tiny budgets."""

import hashlib
import json
import math
from pathlib import Path

import duckdb
import pytest
import torch
from cli_runner import esper, invoke, one_line_error, start

from esper.simic.features import spec_for_task
from esper.simic.policy import load_policy

pytestmark = pytest.mark.slow  # real training runs or subprocesses of the CLI

def events(workspace: Path, sql: str) -> list[tuple]:
    rows = []
    for path in sorted(workspace.glob("*.duckdb")):
        with duckdb.connect(str(path), read_only=True) as con:
            rows += con.execute(sql).fetchall()
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ws = tmp_path_factory.mktemp("simic")
    out = esper("ppo", "--epochs", "3", "--episodes", "2", "--n-envs", "2", "--out", str(ws / "ppo.pt"), "--json",
                workspace=ws)
    assert out.returncode == 0, out.stderr
    return ws, json.loads(out.stdout), out.stderr


def test_ppo_trains_logs_its_updates_and_writes_a_policy(trained):
    ws, result, stderr = trained
    assert result["episodes"] == 2 and result["updates"] == 1 and Path(result["out"]).is_file()
    assert "update 1/1" in stderr
    (stats,), = events(ws, "SELECT payload->'$.stats' FROM events WHERE type = 'PolicyUpdated'")
    stats = json.loads(stats)
    for k in ("approx_kl", "clipfrac", "explained_variance", "entropy", "env_steps_per_s", "reward.accuracy",
              "reward.params", "reward.contribution", "reward.terminal", "return"):
        assert k in stats, k
    runs = events(ws, "SELECT run_id, count(*) FILTER (WHERE type = 'CommandIssued') FROM events "
                      "WHERE run_id LIKE 'mnist1d-ppo-%' GROUP BY run_id")
    assert len(runs) == 2 and all(n == 3 for _, n in runs)


def test_esper_runs_lists_the_episodes_but_not_the_learner_stream(trained):
    ws, result, _ = trained
    out = esper("runs", "--json", workspace=ws)
    assert out.returncode == 0, out.stderr
    listed = {r["run_id"]: r for r in json.loads(out.stdout)}
    assert result["learner"] not in listed  # PolicyUpdated only: a learner, not a training run
    episodes = [r for r in listed.values() if r["controller"] == "ppo"]
    assert len(episodes) == 2 and all(r["status"] == "finished" for r in episodes)


def test_ppo_resumes_from_its_checkpoint(trained, tmp_path):
    ws, result, _ = trained
    copy = tmp_path / "ppo.pt"
    copy.write_bytes(Path(result["out"]).read_bytes())
    out = esper("ppo", "--resume", "--episodes", "4", "--workers", "2", "--out", str(copy), "--json", workspace=tmp_path)
    assert out.returncode == 0, out.stderr
    resumed = json.loads(out.stdout)
    assert resumed["episodes"] == 4 and "resuming" in out.stderr and "update 2/2" in out.stderr
    assert "split over 2 Ray workers" in out.stderr  # --workers may change on resume: it changes no decision
    seeds = events(tmp_path, "SELECT DISTINCT (payload->>'$.config.seed')::INT FROM events WHERE type = 'RunStarted'")
    assert {seed for seed, in seeds} == {1001}, "the resumed job plays the second update's runs"
    assert len(seeds) == 2, "each of the two Ray workers logs its share of the update in a store file of its own"


def test_a_job_resumed_after_a_partial_update_plays_the_episodes_left(trained, tmp_path):
    ws, result, _ = trained
    copy = tmp_path / "ppo.pt"
    copy.write_bytes(Path(result["out"]).read_bytes())
    for total, update in ((3, 2), (4, 3)):  # two envs: update 2 plays one episode, and so does update 3
        out = invoke("ppo", "--epochs", "3", "--n-envs", "2", "--episodes", str(total), "--out", str(copy), "--json",
                     "--resume", workspace=tmp_path)  # the job's first command again, with --resume: its own settings
        assert out.exit_code == 0, out.stderr
        done = json.loads(out.stdout)
        assert done["episodes"] == total and done["updates"] == update and f"update {update}/{update}" in out.stderr
        assert done["last_update"] and all(math.isfinite(v) for v in done["last_update"].values())
    runs = [n for n, in events(tmp_path, "SELECT count(*) FROM events WHERE type = 'RunStarted'")]
    assert runs == [1, 1], "one episode in each resumed job's store, and no empty store"


@pytest.mark.slow
def test_an_interrupted_job_says_how_to_go_on_and_goes_on(tmp_path):
    out = tmp_path / "ppo.pt"
    job = start("ppo", "--epochs", "1", "--n-envs", "1", "--episodes", "40", "--out", str(out), workspace=tmp_path)
    for line in job.stderr:  # the second update's line: the first one's checkpoint is written
        if line.startswith("update 2/"):
            break
    job.terminate()  # SIGTERM: stops it as Ctrl-C does (which a test's worker process may pass on as ignored)
    rest = job.stderr.read()
    assert job.wait() == 143, rest
    assert f"note: esper ppo --out {out} --resume continues the job" in rest
    resumed = invoke("ppo", "--resume", "--episodes", "3", "--out", str(out), "--json", workspace=tmp_path)
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["episodes"] == 3


def test_resume_refuses_settings_it_would_not_apply(trained):
    ws, result, _ = trained
    checkpoint = Path(result["out"]).read_bytes()
    out = esper("ppo", "--resume", "--episodes", "4", "--lr", "1e-3", "--epochs", "3", "--n-envs", "3",
                "--out", result["out"], workspace=ws)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "drop --lr, --n-envs" in lines[0], out.stderr  # in the order given; --epochs 3 is the job's
    assert Path(result["out"]).read_bytes() == checkpoint, "nothing trained"
    stores = sorted(ws.glob("*.duckdb"))
    error = one_line_error(invoke("ppo", "--resume", "--episodes", "2", "--out", result["out"], workspace=ws))
    assert "has played 2 of its 2 episodes; episodes is the total to reach, so ask for more than 2" in error
    error = one_line_error(invoke("ppo", "--resume", "--out", result["out"], workspace=ws))  # to its own total
    assert "has played 2 of its 2 episodes" in error
    error = one_line_error(invoke("ppo", "--episodes", "4", "--out", result["out"], workspace=ws))  # --resume forgotten
    assert f"{result['out']} already exists: if it is an esper ppo checkpoint, --resume continues its job" in error
    assert sorted(ws.glob("*.duckdb")) == stores and Path(result["out"]).read_bytes() == checkpoint


def test_iql_refuses_an_altered_run_by_name_and_learns_without_it(trained, tmp_path):
    ws, _, _ = trained
    for store in ws.glob("ppo-*.duckdb"):
        (tmp_path / store.name).write_bytes(store.read_bytes())
    [store] = tmp_path.glob("ppo-*.duckdb")
    with duckdb.connect(str(store)) as con:  # one epoch's accuracy edited behind Esper's back
        run_id, seq = con.execute("SELECT run_id, min(seq) FROM events WHERE type = 'EpochEnded' GROUP BY 1 "
                                  "ORDER BY 1 LIMIT 1").fetchall()[0]
        con.execute("UPDATE events SET payload = json_merge_patch(payload, '{\"val_accuracy\": 0.99}') "
                    "WHERE run_id = ? AND seq = ?", [run_id, seq])
    args = ("iql", "--steps", "5", "--batch-size", "4", "--out", str(tmp_path / "iql.pt"))
    error = one_line_error(invoke(*args, workspace=tmp_path), code=1)
    assert f"log altered at seq {seq} (EpochEnded) in run {run_id}" in error
    assert f"leave it out of the dataset by adding run_id <> '{run_id}' to --runs" in error
    assert not (tmp_path / "iql.pt").exists()
    learnt = invoke(*args, "--runs", f"run_id <> '{run_id}'", "--json", workspace=tmp_path)
    assert learnt.exit_code == 0, learnt.stderr
    assert json.loads(learnt.stdout)["runs"] == 1


def test_iql_learns_from_the_logs_and_its_policy_runs(trained):
    ws, result, _ = trained
    out = esper("iql", "--steps", "40", "--batch-size", "8", "--runs", "controller = 'ppo'",
                "--out", str(ws / "iql.pt"), "--json", workspace=ws)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["runs"] == 2 and summary["transitions"] == 6
    ran = esper("run", "--controller", "policy", "--policy", str(ws / "iql.pt"), "--epochs", "2", "--json", workspace=ws)
    assert ran.returncode == 0, ran.stderr
    assert 0.0 <= json.loads(ran.stdout)["val_accuracy"] <= 1.0
    # PPO can start from the IQL policy; with a critic warm-up its one update leaves the IQL actor as it was
    started = esper("ppo", "--init", str(ws / "iql.pt"), "--epochs", "2", "--episodes", "1", "--n-envs", "1",
                    "--critic-warmup", "1", "--out", str(ws / "from-iql.pt"), workspace=ws)
    assert started.returncode == 0, started.stderr
    assert "critic warm-up: actor frozen" in started.stderr
    assert "note: the critic warm-up (1 update) covers every update of this job (1), so the actor stays" in started.stderr
    (iql_net, _), (ppo_net, _) = load_policy(ws / "iql.pt"), load_policy(ws / "from-iql.pt")
    before, after = iql_net.state_dict(), ppo_net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if not k.startswith("critic."))
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("critic."))
    frozen = events(ws, "SELECT payload->'$.stats.actor_frozen' FROM events "
                        "WHERE type = 'PolicyUpdated' AND run_id LIKE 'ppo-%'")
    assert sorted(float(f) for f, in frozen) == [0.0, 1.0]  # the fixture's job trained its actor, this one did not


def test_ppo_with_max_params_masks_what_does_not_fit_and_its_policy_keeps_the_cap(tmp_path):
    cap = 1258 + 16 + 16  # the host and two norm seeds: every other blueprint is too big from the start
    out = esper("ppo", "--epochs", "4", "--episodes", "2", "--n-envs", "2", "--max-params", str(cap),
                "--ent-coef", "0.5", "--out", str(tmp_path / "capped.pt"), workspace=tmp_path)
    assert out.returncode == 0, out.stderr
    blueprints = spec_for_task("mnist1d").blueprints
    masks = events(tmp_path, "SELECT payload->'$.mask' FROM events WHERE type = 'CommandIssued'")
    assert len(masks) == 8
    for (mask,) in masks:
        for slot_row in (v for k, v in json.loads(mask).items() if k.startswith("blueprint.")):
            assert [b for b, ok in zip(blueprints, slot_row) if ok] in ([], ["norm"])
    finished = events(tmp_path, "SELECT (payload->>'$.params')::INT FROM events WHERE type = 'RunFinished'")
    assert len(finished) == 2 and all(p <= cap for p, in finished)

    ran = esper("run", "--controller", "policy", "--policy", str(tmp_path / "capped.pt"), "--epochs", "2", "--json",
                workspace=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert f"at most {cap:,} params" in ran.stderr, "a policy's runs keep the cap it was trained under"
    uncapped = esper("run", "--controller", "policy", "--policy", str(tmp_path / "capped.pt"), "--epochs", "2",
                     "--max-params", "0", "--json", workspace=tmp_path)
    assert uncapped.returncode == 0 and "at most" not in uncapped.stderr, uncapped.stderr
    caps = events(tmp_path, "SELECT (payload->>'$.config.lifecycle.max_params')::INT FROM events "
                            "WHERE type = 'RunStarted' AND run_id LIKE 'mnist1d-policy-%' ORDER BY ts")
    assert sorted(c for c, in caps) == [0, cap]


@pytest.mark.parametrize("args, message", [
    (["ppo", "--n-envs", "0", "--out", "x.pt"], "n_envs and episodes must"),
    (["ppo", "--workers", "0", "--out", "x.pt"], "workers must be at least 1"),
    (["ppo", "--init-temperature", "0", "--out", "x.pt"], "init_temperature must be positive"),
    (["ppo", "--init-temperature", "2", "--out", "x.pt"], "softens a starting policy"),
    (["ppo", "--devices", "tpu", "--out", "x.pt"], "device"),
    (["ppo", "--devices", "", "--out", "x.pt"], "--devices '' names an empty device"),
    (["ppo", "--devices", "cpu,,cpu", "--out", "x.pt"], "--devices 'cpu,,cpu' names an empty device"),
    (["ppo", "--resume", "--out", "missing.pt"], "no checkpoint"),
    (["ppo", "--lr", "-1", "--out", "x.pt"], "learning_rate must be a positive number"),
    (["ppo", "--gamma", "1.5", "--out", "x.pt"], "gamma must be in (0, 1]"),
    (["ppo", "--param-budget", "-5", "--out", "x.pt"], "param_budget must be 0"),
    (["ppo", "--critic-warmup", "-1", "--out", "x.pt"], "critic_warmup must not be negative"),
    (["ppo", "--task", "cifar10", "--out", "x.pt"], "cifar10 needs --data-dir, which ppo does not take"),
    (["ppo", "--max-params", "100", "--out", "x.pt"], "below the mnist1d host's own"),
    (["ppo", "--select-every", "-1", "--out", "x.pt"], "select_every must not be negative"),
    (["ppo", "--select-every", "2", "--select-runs", "0", "--out", "x.pt"], "select_runs must be between"),
    (["ppo", "--select-runs", "8", "--out", "x.pt"], "--select-runs is how many runs checkpoint selection plays: turn"),
    (["ppo", "--select-every", "1", "--n-envs", "1", "--episodes", "90001", "--out", "x.pt"],
     "a selecting job plays at most 90,000 updates"),
    (["ppo", "--seed", "-1", "--out", "x.pt"], "seed must be between 0 and 999,999, got -1"),
    (["ppo", "--seed", "100000000000000", "--out", "x.pt"], "seed must be between 0 and 999,999"),
    (["iql", "--param-budget", "-5", "--out", "x.pt"], "param_budget must be 0"),
    (["iql", "--temperature", "0", "--out", "x.pt"], "temperature must be positive"),
    (["iql", "--seed", "-1", "--out", "x.pt"], "seed must not be negative, got -1"),
    (["ppo", "--ray-address", "auto", "--out", "x.pt"], "--ray-address is for --workers N with N > 1"),
    (["iql", "--expectile", "1.5", "--out", "x.pt"], "expectile must be inside (0, 1)"),
    (["iql", "--runs", "controller = = 'x'", "--out", "x.pt"], "bad runs filter"),
    (["iql", "--runs", "true); delete from events; select 1 where (true", "--out", "x.pt"], "syntax error"),
    (["iql", "--runs", "true); select 1 where (true", "--out", "x.pt"], "syntax error"),
    (["iql", "--runs", "runs.controller = 'nobody'", "--out", "x.pt"], "dataset is empty"),  # the view's name reads
    (["iql", "--runs", "nosuch = 1", "--out", "x.pt"], 'column "nosuch" not found'),
    (["iql", "--runs", "true) union select null --", "--out", "x.pt"], "syntax error"),  # was an internal error
    (["iql", "--runs", "1) or (1=1", "--out", "x.pt"], "syntax error"),  # escaped the task's runs
    (["iql", "--runs", "true; delete from events", "--out", "x.pt"], "bad runs filter"),
    (["iql", "--runs", "controller = 'nobody'", "--out", "x.pt"], "dataset is empty"),
    (["iql", "--task", "mnist1dd", "--out", "x.pt"], "its runs are of mnist1d (--task)"),
    (["iql", "--runs", "  ", "--out", "x.pt"], "the runs filter is empty"),
    (["run", "--controller", "policy", "--policy", "missing.pt"], "no policy file"),
    (["run", "--controller", "policy", "--policy", "."], " is a folder: give the path of a policy file"),
    (["ppo", "--reward-params", "inf", "--out", "x.pt"], "--reward-params must be a finite number, got inf"),
    (["ppo", "--ent-coef", "nan", "--out", "x.pt"], "--ent-coef must be a finite number, got nan"),
    (["iql", "--temperature", "-inf", "--out", "x.pt"], "--temperature must be a finite number"),
])
def test_bad_input_is_one_line_and_exit_2(trained, args, message, tmp_path, monkeypatch):
    ws, _, _ = trained
    monkeypatch.chdir(tmp_path)  # relative --out and --policy paths resolve here, away from the workspace
    assert message in one_line_error(invoke(*args, workspace=ws))


def test_a_file_torch_cannot_load_as_a_policy_says_why(trained, tmp_path):
    ws, _, _ = trained
    text = tmp_path / "notes.pt"
    text.write_text("not a pickle")
    error = one_line_error(invoke("run", "--controller", "policy", "--policy", str(text), workspace=ws))
    assert error.startswith(f"esper: {text} is not a policy file (torch cannot load it: UnpicklingError: "), error
    reason = error.split("UnpicklingError: ", 1)[1]  # torch's first sentence, not a cut through its paragraph
    assert reason.endswith(")") and ". " not in reason and len(reason) <= 125, error


def test_iql_replaces_no_file_a_ppo_job_could_resume_from(trained, tmp_path):
    ws, result, _ = trained
    checkpoint = tmp_path / "ppo.pt"
    checkpoint.write_bytes(Path(result["out"]).read_bytes())
    error = one_line_error(invoke("iql", "--steps", "3", "--out", str(checkpoint), workspace=ws))
    assert error.endswith(f"{checkpoint} already exists: give another --out, or remove that file")
    assert checkpoint.read_bytes() == Path(result["out"]).read_bytes()


@pytest.mark.parametrize("command", [["iql", "--steps", "3"], ["ppo", "--episodes", "1", "--n-envs", "1", "--epochs", "1"]])
def test_an_out_that_cannot_be_written_is_refused_before_any_training(trained, command, tmp_path, monkeypatch):
    ws, _, _ = trained
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    stores = sorted(ws.glob("*.duckdb"))
    error = one_line_error(invoke(*command, "--out", "afile/policy.pt", workspace=ws))
    assert error == "esper: cannot write afile/policy.pt: afile is a file, not a folder"
    assert sorted(ws.glob("*.duckdb")) == stores, "nothing may be trained or logged for a policy that cannot be saved"


# ---- provenance: which policy file each update wrote, which runs IQL learned from, which file a run played ----


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_each_ppo_update_logs_the_checkpoint_it_wrote(trained):
    ws, result, _ = trained
    out = Path(result["out"])
    (saved,), = events(ws, f"SELECT payload FROM events WHERE type = 'CheckpointSaved' AND run_id = '{result['learner']}'")
    saved = json.loads(saved)
    assert (saved["update"], saved["path"], saved["sha256"], saved["size"]) == (
        1, str(out.resolve()), sha256_of(out), out.stat().st_size)


@pytest.mark.parametrize("damage", ["config", "optimizer", "generator", "update", "hidden"])
def test_ppo_resume_refuses_a_damaged_training_state_in_one_line(trained, tmp_path, damage):
    """In a workspace that never logged the file no checksum guards it: each of these was an internal error."""
    blob = torch.load(Path(trained[1]["out"]), weights_only=True)
    train = blob["train"]
    if damage == "config":
        train["config"] = "not a config"
    elif damage == "optimizer":
        del train["optimizer"]
    elif damage == "generator":
        train["generator"] = torch.zeros(3, dtype=torch.uint8)
    elif damage == "update":
        train["update"] = "x"
    else:  # a config whose network is not the file's
        train["config"]["hidden"] = 32
    out = tmp_path / "damaged.pt"
    torch.save(blob, out)
    error = one_line_error(invoke("ppo", "--resume", "--episodes", "4", "--out", out, workspace=tmp_path / "ws"))
    assert error.startswith(f"esper: {out} holds a damaged training state, which cannot be resumed ("), error
    assert ". " not in error.split("cannot be resumed (", 1)[1], error  # the library's first sentence only
    assert not (tmp_path / "ws").exists()


def test_ppo_resume_refuses_a_checkpoint_changed_since_its_job_logged_it(trained):
    ws, result, _ = trained
    out = Path(result["out"])
    original = out.read_bytes()
    blob = torch.load(out, weights_only=True)
    blob["train"]["generator"] = torch.Generator().manual_seed(12345).get_state()
    torch.save(blob, out)
    try:
        error = one_line_error(invoke("ppo", "--resume", "--episodes", "4", "--out", out, workspace=ws))
        assert "is not a checkpoint its job logged" in error
    finally:
        out.write_bytes(original)


def test_iql_logs_its_policy_file_and_the_runs_it_learned_from(trained, tmp_path):
    ws, _, _ = trained
    policy = tmp_path / "iql.pt"
    out = esper("iql", "--steps", "20", "--batch-size", "8", "--runs", "controller = 'ppo'", "--out", str(policy),
                "--json", workspace=ws)
    assert out.returncode == 0, out.stderr
    learner = json.loads(out.stdout)["learner"]
    (saved,), = events(ws, f"SELECT payload FROM events WHERE type = 'CheckpointSaved' AND run_id = '{learner}'")
    saved = json.loads(saved)
    episodes = {r for r, in events(ws, "SELECT DISTINCT run_id FROM events WHERE run_id LIKE 'mnist1d-ppo-%'")}
    assert set(saved["sources"]) == episodes and saved["sha256"] == sha256_of(policy)


def test_a_policy_run_records_its_file_and_verify_refuses_another(trained, tmp_path):
    ws, result, _ = trained
    policy = tmp_path / "policy.pt"
    policy.write_bytes(Path(result["out"]).read_bytes())
    ran = invoke("run", "--controller", "policy", "--policy", policy, "--epochs", "2", "--json", workspace=tmp_path)
    assert ran.exit_code == 0, ran.stderr
    run_id = json.loads(ran.stdout)["run_id"]
    (recorded,), = events(tmp_path, "SELECT payload->>'$.config.policy_sha256' FROM events WHERE type = 'RunStarted'")
    assert recorded == sha256_of(policy)
    assert invoke("replay", run_id, "--verify", workspace=tmp_path).exit_code == 0
    blob = torch.load(policy, weights_only=True)
    blob["max_params"] = 123_456
    torch.save(blob, policy)
    assert "is not the one the run played" in one_line_error(invoke("replay", run_id, "--verify", workspace=tmp_path))


def test_ppo_and_iql_learn_on_text_and_a_policy_of_another_task_is_refused_there(trained, tmp_path):
    mnist1d_policy = Path(trained[1]["out"])
    out = esper("ppo", "--task", "text", "--epochs", "2", "--episodes", "2", "--n-envs", "2",
                "--out", str(tmp_path / "text.pt"), "--json", workspace=tmp_path)
    assert out.returncode == 0, out.stderr
    net, _ = load_policy(tmp_path / "text.pt")
    assert net.spec == spec_for_task("text") and net.spec.blueprints == ("mlp", "attention", "lowrank", "norm")
    out = esper("iql", "--task", "text", "--steps", "5", "--batch-size", "2", "--out", str(tmp_path / "iql.pt"),
                "--json", workspace=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["runs"] == 2
    ran = invoke("run", "--task", "text", "--controller", "policy", "--policy", tmp_path / "iql.pt", "--epochs", "1",
                 "--json", workspace=tmp_path)
    assert ran.exit_code == 0, ran.stderr
    assert json.loads(ran.stdout)["test_bits_per_char"] > 0
    before = sorted(tmp_path.glob("*.duckdb"))
    error = one_line_error(invoke("run", "--task", "text", "--controller", "policy", "--policy", mnist1d_policy,
                                  workspace=tmp_path))
    assert "the policy was trained for slots" in error and "'conv_heavy'" in error and "task text has" in error
    assert error.endswith("it is mnist1d's: add --task mnist1d, or train a policy on it (esper ppo --task ...)")
    error = one_line_error(invoke("ppo", "--task", "text", "--init", mnist1d_policy, "--out", tmp_path / "p.pt",
                                  workspace=tmp_path))
    assert "was trained for task mnist1d, hidden" in error and "this job has task text" in error
    assert sorted(tmp_path.glob("*.duckdb")) == before  # refused before anything is written


def test_an_out_the_system_will_not_write_is_found_before_any_episode(tmp_path, monkeypatch):
    """Permissions can say yes where a write fails (a read-only mount, a kernel folder, for root too): a file made
    and removed in the folder finds it before anything trains or is logged."""
    import errno
    import tempfile

    real = tempfile.mkstemp
    blocked = tmp_path / "mount"
    blocked.mkdir()

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == blocked:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    out = blocked / "p.pt"
    line = one_line_error(invoke("ppo", "--out", str(out), "--episodes", "1", "--n-envs", "1", "--epochs", "1",
                                 "--workspace", str(tmp_path / "ws")))
    assert line == f"esper: cannot write {out}: {blocked} is not writable (Read-only file system)", line
    assert not (tmp_path / "ws").exists() and list(blocked.iterdir()) == []
