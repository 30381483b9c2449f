"""The text task: its corpus, splits, windows and measures, and its bad input."""

import hashlib
import math
import sysconfig
from pathlib import Path

import pytest
import torch
from cli_runner import invoke, one_line_error

from esper.errors import BadInput
from esper.leyline.events import EpochEnded, RunFinished, decode
from esper.tolaria import text
from esper.tolaria.data import load_task_data
from esper.tolaria.tasks import get_task

SAMPLE = "def grow(model):\n    return model  # naïve ✓\n" * 200
"""About 9 kB of UTF-8 text with characters of two and three bytes."""


def sample_file(tmp_path: Path, content: str | bytes = SAMPLE) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_the_default_corpus_is_a_fixed_cut_of_the_standard_librarys_sources():
    data = load_task_data("text", 0)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = text.stdlib_files(root)
    assert files == sorted(files) and "__future__.py" in files
    assert not any(f.split("/")[0] in ("test", "site-packages") or "/tests/" in f or "_sysconfigdata_" in f for f in files)
    corpus = data.corpus
    assert (corpus.source, corpus.path, corpus.bytes) == ("stdlib", str(root), text.STDLIB_BYTES)
    raw = b"".join((root / f).read_bytes() for f in files[:corpus.files])[:text.STDLIB_BYTES]
    assert len(raw) == text.STDLIB_BYTES
    assert corpus.sha256 == hashlib.sha256(raw).hexdigest()
    assert load_task_data("text", 1).corpus == corpus  # the data seed changes nothing


def test_splits_are_by_position_and_evaluation_windows_come_in_order(tmp_path):
    data = text.load_text("text", sample_file(tmp_path), context=16, windows=10)
    raw = torch.tensor(list(SAMPLE.encode()), dtype=torch.uint8)  # a byte a byte: a corpus takes its own size
    held_out = int(len(raw) * text.HELD_OUT_FRACTION)
    assert torch.equal(torch.cat([data.splits[s] for s in ("train", "val", "test")]), raw)
    assert len(data.splits["val"]) == len(data.splits["test"]) == held_out
    (x, y), *rest = list(data.batches("val", 1000))
    assert not rest and x.shape == y.shape == ((held_out - 1) // 16, 16) and x.dtype == y.dtype == torch.int64
    val = data.splits["val"].long()
    assert torch.equal(x[1], val[16:32]) and torch.equal(y[0], val[1:17])


def test_training_windows_are_drawn_from_the_generator(tmp_path):
    data = text.load_text("text", sample_file(tmp_path), context=16, windows=10)
    draw = lambda seed: [x for x, _ in data.batches("train", 4, torch.Generator().manual_seed(seed))]
    first = draw(0)
    assert [len(x) for x in first] == [4, 4, 2] and data.steps(4) == 3
    assert all(torch.equal(a, b) for a, b in zip(first, draw(0)))
    assert not all(torch.equal(a, b) for a, b in zip(first, draw(1)))


def test_bits_per_char_count_characters_not_bytes(tmp_path):
    data = text.load_text("text", sample_file(tmp_path), context=16, windows=10)
    x, y = next(data.batches("test", 1000))
    uniform = torch.zeros(*y.shape, 256)
    loss = data.loss(uniform, y).item()
    assert loss == pytest.approx(math.log(256))
    predicted = bytes(y.flatten().tolist()).decode("utf-8", errors="ignore")
    chars = data.chars["test"]
    assert len(predicted) <= chars < len(predicted) + 3  # a window may cut a character at either end
    assert data.bits_per_char("test", loss) == pytest.approx(8 * y.numel() / chars)
    assert data.correct(uniform, y) == pytest.approx((y == 0).float().mean(1).sum())


def test_a_folder_is_read_whole_in_sorted_order_without_hidden_files_or_bytecode(tmp_path):
    (tmp_path / "b.txt").write_text(SAMPLE[:5000])
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "z.txt").write_text(SAMPLE[5000:])
    for binary in (tmp_path / ".git" / "index", tmp_path / "a" / "__pycache__" / "z.cpython-311.pyc"):
        binary.parent.mkdir()
        binary.write_bytes(b"\xff\x00")
    data = text.load_text("text", tmp_path, context=16, windows=10)
    assert (data.corpus.source, data.corpus.files) == ("data_dir", 2)
    whole = (SAMPLE[5000:] + SAMPLE[:5000]).encode()
    assert data.corpus.bytes == len(whole)


@pytest.mark.parametrize("content,message", [
    (b"caf\xe9 au lait " * 1000, r"is not UTF-8 text \(byte 3 cannot be decoded\)"),
    (b"ab\x00cd" * 1000, "holds NUL bytes: it is a binary file"),
    ("tiny text", "holds 9 bytes of text: the text task needs at least"),
])
def test_text_that_cannot_train_is_refused_in_one_line(tmp_path, content, message):
    path = sample_file(tmp_path, content)
    with pytest.raises(BadInput, match=message):
        text.load_text("text", path, context=64, windows=10)
    result = invoke("run", "--task", "text", "--data-dir", path, workspace=tmp_path / "ws")
    assert str(path) in one_line_error(result)
    assert not (tmp_path / "ws").exists() or not list((tmp_path / "ws").glob("*.duckdb"))


def test_a_data_dir_that_does_not_exist_is_one_line(tmp_path):
    result = invoke("run", "--task", "text", "--data-dir", tmp_path / "nope", workspace=tmp_path)
    assert "no such file or folder" in one_line_error(result)


def test_the_preset_windows_follow_the_hosts_context(tmp_path):
    preset = get_task("text")
    data = load_task_data("text", 0, sample_file(tmp_path), preset=preset)
    assert (data.context, data.windows) == (preset.host_options["context"], preset.epoch_windows)


def test_logs_written_before_bits_per_char_existed_still_read():
    old = decode(b'{"type":"EpochEnded","epoch":1,"train_loss":1.0,"val_loss":1.0,"val_accuracy":0.5,"params":3}')
    assert isinstance(old, EpochEnded) and old.val_bits_per_char is None
    old = decode(b'{"type":"RunFinished","epoch":1,"val_accuracy":0.5,"test_accuracy":0.5,"params":3}')
    assert isinstance(old, RunFinished) and old.test_bits_per_char is None
