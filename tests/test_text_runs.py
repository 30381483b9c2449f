"""Real runs of the text task at a test's size: controllers unchanged, bits per character logged, corpus checked."""

import json
from pathlib import Path

import duckdb
import pytest
from cli_runner import invoke, one_line_error
from fake_runs import write_run

pytestmark = pytest.mark.slow  # real training runs

TINY = ("--host-option", "width=16", "--host-option", "context=16", "--batch-size", "128")
"""A transformer small enough that an epoch of the preset's windows takes a moment."""
KNOBS = ("--heuristic", "warmup_epochs=1", "--heuristic", "min_gain=1.0", "--heuristic", "finish_epochs=0")


def corpus(folder: Path) -> Path:
    path = folder / "corpus.txt"
    path.write_text("def grow(model, slots):\n    return esper.grow(model, slots)  # naïve\n" * 400)
    return path


def payloads(ws: Path, kind: str) -> list[dict]:
    rows = []
    for store in sorted(ws.glob("*.duckdb")):
        with duckdb.connect(str(store), read_only=True) as con:
            rows += [json.loads(p) for p, in con.execute(f"SELECT payload FROM events WHERE type = '{kind}' ORDER BY seq").fetchall()]
    return rows


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    ws = tmp_path_factory.mktemp("text")
    data = corpus(ws)
    ran = invoke("run", "--task", "text", "--data-dir", data, *TINY, *KNOBS, "--epochs", "6", "--json", workspace=ws)
    assert ran.exit_code == 0, ran.stderr
    return ws, data, json.loads(ran.stdout)


def test_the_heuristic_grows_the_transformer_and_bits_per_char_are_logged(grown):
    ws, data, result = grown
    assert result["seeds"] and 0 < result["val_accuracy"] <= 1 and result["test_bits_per_char"] > 0
    (started,) = payloads(ws, "RunStarted")
    assert started["corpus"]["source"] == "data_dir" and started["corpus"]["path"] == str(data.resolve())
    assert started["corpus"]["bytes"] == data.stat().st_size and started["seed_sizes"]["early"]["mlp"] > 0
    assert "repeat" not in started["seed_sizes"]["early"]  # as text runs recorded it before there was a repeat
    epochs = payloads(ws, "EpochEnded")
    assert len(epochs) == 6 and all(e["val_bits_per_char"] > 0 for e in epochs)
    assert epochs[-1]["val_bits_per_char"] < epochs[0]["val_bits_per_char"]
    (finished,) = payloads(ws, "RunFinished")
    assert finished["test_bits_per_char"] == result["test_bits_per_char"]
    germinated = payloads(ws, "SeedGerminated")
    assert germinated and {g["blueprint"] for g in germinated} <= {"mlp", "attention", "lowrank", "norm"}


def test_a_text_run_re_executes_and_verify_refuses_another_corpus(grown):
    ws, data, result = grown
    assert invoke("replay", result["run_id"], "--verify", workspace=ws).exit_code == 0
    original = data.read_bytes()
    data.write_bytes(original.replace(b"slots", b"stems"))
    try:
        error = one_line_error(invoke("replay", result["run_id"], "--verify", workspace=ws))
    finally:
        data.write_bytes(original)
    assert "the text corpus is not the run's" in error and "sha256" in error
    moved = data.with_name("moved.txt")
    data.rename(moved)
    try:
        error = one_line_error(invoke("replay", result["run_id"], "--verify", workspace=ws))
    finally:
        moved.rename(data)
    assert error.startswith(f"esper: the run's data is not here: it was recorded with --data-dir {data.resolve()}")
    assert error.endswith("re-run where that data is")


def test_a_comparison_across_tasks_is_drawn_with_a_note(grown, tmp_path):
    ws, _, result = grown
    for store in ws.glob("*.duckdb"):
        (tmp_path / store.name).write_bytes(store.read_bytes())
    other = write_run(tmp_path, "static", 0, epochs=3)  # an mnist1d run beside the text one
    compared = invoke("report", "--compare", result["run_id"], other, "--out", tmp_path / "c.html", workspace=tmp_path)
    assert compared.exit_code == 0, compared.stderr
    assert "note: these runs are of different tasks (mnist1d, text): their curves are not comparable" in compared.stderr


def test_the_random_controller_runs_on_text_unchanged(tmp_path):
    ran = invoke("run", "--task", "text", "--data-dir", corpus(tmp_path), *TINY, "--controller", "random",
                 "--epochs", "4", "--json", workspace=tmp_path)
    assert ran.exit_code == 0, ran.stderr
    issued = payloads(tmp_path, "CommandIssued")
    assert len(issued) == 4 and any(i["command"]["op"] != "Wait" for i in issued)


def test_a_relative_data_dir_is_recorded_absolute_so_the_run_re_executes_from_any_folder(tmp_path, monkeypatch):
    corpus(tmp_path)
    monkeypatch.chdir(tmp_path)
    ran = invoke("run", "--task", "text", "--data-dir", "corpus.txt", *TINY, "--controller", "static", "--epochs", "1",
                 "--json", workspace=tmp_path / "ws")
    assert ran.exit_code == 0, ran.stderr
    (started,) = payloads(tmp_path / "ws", "RunStarted")
    assert started["config"]["data_dir"] == str(tmp_path / "corpus.txt")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    verified = invoke("replay", json.loads(ran.stdout)["run_id"], "--verify", workspace=tmp_path / "ws")
    assert verified.exit_code == 0, verified.stderr


def test_a_run_grown_by_depth_re_executes_and_scratch_builds_its_blocks_afresh(tmp_path):
    """`--blueprint repeat`: every seed a copy of the block before its slot, recorded as the run's only blueprint; the
    run re-executes bit for bit, and scratch of its architecture builds the same blocks (new weights)."""
    data = corpus(tmp_path)
    ran = invoke("run", "--task", "text", "--data-dir", data, *TINY, *KNOBS, "--blueprint", "repeat", "--epochs", "6",
                 "--json", workspace=tmp_path / "ws")
    assert ran.exit_code == 0, ran.stderr
    result = json.loads(ran.stdout)
    (started,) = payloads(tmp_path / "ws", "RunStarted")
    assert started["blueprints"] == ["repeat"] and started["preset"]["blueprints"] == ["repeat"]
    assert started["seed_sizes"]["early"]["repeat"] == started["seed_sizes"]["late"]["repeat"] > 0
    germinated = payloads(tmp_path / "ws", "SeedGerminated")
    assert {g["blueprint"] for g in germinated} == {"repeat"}
    assert invoke("replay", result["run_id"], "--verify", workspace=tmp_path / "ws").exit_code == 0
    built = invoke("run", "--controller", "scratch", "--like", result["run_id"], "--json", workspace=tmp_path / "ws")
    assert built.exit_code == 0, built.stderr
    assert json.loads(built.stdout)["params"] == result["params"]


def test_scratch_like_a_text_run_takes_its_task_without_being_told(grown, tmp_path):
    ws, _, result = grown
    for store in ws.glob("*.duckdb"):
        (tmp_path / store.name).write_bytes(store.read_bytes())
    ran = invoke("run", "--controller", "scratch", "--like", result["run_id"], "--epochs", "1", "--print-config",
                 workspace=tmp_path)
    assert ran.exit_code == 0, ran.stderr
    assert 'task = "text"' in ran.stdout.splitlines()
    built = invoke("run", "--controller", "scratch", "--like", result["run_id"], "--epochs", "1", "--json",
                   workspace=tmp_path)
    assert built.exit_code == 0, built.stderr
    assert json.loads(built.stdout)["run_id"].startswith("text-scratch-")
