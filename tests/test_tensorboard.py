"""TensorBoard event files are a projection of the log: what they hold equals what the events say."""

import builtins
from pathlib import Path

import pytest
from cli_runner import invoke, one_line_error
from fake_runs import plan_run, write_run

from tensorboard.backend.event_processing import event_accumulator

from esper.leyline import EpochEnded, RunFinished, SeedTransitioned


def read_back(folder: Path) -> event_accumulator.EventAccumulator:
    [run_dir] = [p for p in folder.iterdir() if p.is_dir()]
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.SCALARS: 0,
                                                                           event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc


def test_exported_scalars_equal_the_logs(tmp_path):
    run_id = write_run(tmp_path / "ws")
    events = [e for batch in plan_run() for e in batch]
    result = invoke("export", run_id, "--format", "tensorboard", "--out", tmp_path / "tb", workspace=tmp_path / "ws")
    assert result.exit_code == 0, result.stderr
    acc = read_back(tmp_path / "tb")
    epochs = [e for e in events if isinstance(e, EpochEnded)]
    val = {s.step: s.value for s in acc.Scalars("accuracy/val")}
    assert val == {e.epoch: pytest.approx(e.val_accuracy, rel=1e-6) for e in epochs}
    assert [s.value for s in acc.Scalars("params")] == [e.params for e in epochs]
    [test] = acc.Scalars("accuracy/test")
    finished = next(e for e in events if isinstance(e, RunFinished))
    assert test.value == pytest.approx(finished.test_accuracy, rel=1e-6)
    seeds = {seed.seed_id for e in epochs for seed in e.seeds}
    assert seeds and all(f"seed/{s}/alpha" in acc.Tags()["scalars"] for s in seeds)
    # a second export into the same folder would put every curve in it twice: refused, the first left as it is
    files = sorted((tmp_path / "tb" / run_id).iterdir())
    again = invoke("export", run_id, "--format", "tensorboard", "--out", tmp_path / "tb", workspace=tmp_path / "ws")
    assert "already holds TensorBoard event files" in one_line_error(again)
    assert sorted((tmp_path / "tb" / run_id).iterdir()) == files
    transitions = [e for e in events if isinstance(e, SeedTransitioned)]
    assert len(acc.Tensors("lifecycle/text_summary")) == len(transitions)


def test_export_without_tensorboard_installed_is_one_line(tmp_path, monkeypatch):
    run_id = write_run(tmp_path / "ws")
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    result = invoke("export", run_id, "--format", "tensorboard", "--out", tmp_path / "tb", workspace=tmp_path / "ws")
    assert "pip install -e '.[tensorboard]'" in one_line_error(result)
    assert not (tmp_path / "tb").exists()


def test_export_to_a_folder_that_cannot_be_made_is_one_line(tmp_path):
    run_id = write_run(tmp_path / "ws")
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", tmp_path / "afile" / "tb"):
        result = invoke("export", run_id, "--format", "tensorboard", "--out", out, workspace=tmp_path / "ws")
        assert f"cannot create the TensorBoard folder {out}: {tmp_path / 'afile'} is a file" in one_line_error(result)


@pytest.mark.parametrize("name, kind", [("tb.jsonl", "a jsonl"), ("tb.parquet", "a parquet"), ("tb.csv", "a CSV")])
def test_a_tensorboard_export_to_a_name_that_says_file_is_refused(tmp_path, name, kind):
    run_id = write_run(tmp_path / "ws")
    result = invoke("export", run_id, "-f", "tensorboard", "--out", tmp_path / name, workspace=tmp_path / "ws")
    line = one_line_error(result)
    assert f"--out {tmp_path / name} names {kind} file: name a folder (--out tb)" in line
    assert ("drop --format" in line) is (kind != "a CSV")  # export writes jsonl or parquet, never CSV
    assert not (tmp_path / name).exists()


def test_a_text_runs_bits_per_character_are_exported(tmp_path):
    from test_nissa_edges import text_batches

    from fake_runs import write_batches

    write_batches(tmp_path / "ws", text_batches(), "text-run")
    result = invoke("export", "text-run", "--format", "tensorboard", "--out", tmp_path / "tb",
                    workspace=tmp_path / "ws")
    assert result.exit_code == 0, result.stderr
    acc = read_back(tmp_path / "tb")
    val = {s.step: s.value for s in acc.Scalars("bits_per_char/val")}
    assert val == {epoch: pytest.approx(4.0 - epoch / 10, rel=1e-6) for epoch in range(1, 7)}
    [test] = acc.Scalars("bits_per_char/test")
    assert (test.step, test.value) == (6, pytest.approx(3.45, rel=1e-6))


def test_a_run_of_an_accuracy_task_exports_no_bits_per_character(tmp_path):
    run_id = write_run(tmp_path / "ws", epochs=3)
    assert invoke("export", run_id, "--format", "tensorboard", "--out", tmp_path / "tb",
                  workspace=tmp_path / "ws").exit_code == 0
    assert not any(tag.startswith("bits_per_char") for tag in read_back(tmp_path / "tb").Tags()["scalars"])


def test_an_interrupted_and_resumed_run_is_not_said_to_have_failed(tmp_path):
    from fake_runs import checkpointed, interrupted, write_batches

    write_batches(tmp_path / "ws", interrupted(checkpointed(plan_run(epochs=6)), 3), "resumed")
    assert invoke("export", "resumed", "--format", "tensorboard", "--out", tmp_path / "tb",
                  workspace=tmp_path / "ws").exit_code == 0
    texts = read_back(tmp_path / "tb").Tensors("run/text_summary")
    said = [(t.step, t.tensor_proto.string_val[0].decode()) for t in texts]
    assert said[1:] == [(4, "interrupted"), (3, "resumed from its checkpoint of epoch 3")]
