"""A tiny CIFAR-10 folder in the real on-disk format, for tests that go through torchvision's loader.

The real `cifar-10-batches-py` holds Python 2 pickles whose string keys unpickle (with
`encoding="latin1"`, as torchvision reads them) as `str`: `{"data": uint8 (N, 3072), "labels": [...]}`,
rows laid out as 1024 red, then 1024 green, then 1024 blue values, each plane row-major. We write
Python 3 pickles with `str` keys, which torchvision unpickles to the very same dicts.

torchvision's `CIFAR10` verifies the md5 of every file against the real dataset's, so a fixture can
never pass as is. `trust_tiny_cifar10` swaps those expected checksums (class attributes, restored by
`monkeypatch` after the test) for the fixture files' own: the loader still runs unchanged, checksum
check included.
"""

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def red_value(label: int) -> int:
    """Every red pixel of a fixture image of class `label` has this value (so tests can check alignment)."""
    return 20 * label + 10


def write_tiny_cifar10(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Write `root/cifar-10-batches-py` with `n_train` images over `data_batch_1..5` and `n_test` in `test_batch`.

    Labels cycle through the classes, starting at a seeded offset. Each image's red plane is
    `red_value(label)`, its green plane random, its blue plane its index in its split (mod 256).
    Returns the labels written, `{"train": ..., "test": ...}`, in file order.
    """
    folder = Path(root) / _cifar10().base_folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = (np.arange(n) + int(rng.integers(10))) % 10
        data = np.empty((n, 3, 1024), dtype=np.uint8)
        data[:, 0] = np.array([red_value(int(k)) for k in labels], dtype=np.uint8)[:, None]
        data[:, 1] = rng.integers(0, 256, (n, 1024), dtype=np.uint8)
        data[:, 2] = (np.arange(n) % 256).astype(np.uint8)[:, None]
        return data.reshape(n, 3072), labels

    train_data, train_labels = images(n_train)
    chunks = np.array_split(np.arange(n_train), 5)
    for i, chunk in enumerate(chunks, start=1):
        _dump(folder / f"data_batch_{i}", {
            "batch_label": f"training batch {i} of 5",
            "labels": [int(k) for k in train_labels[chunk]],
            "data": train_data[chunk],
            "filenames": [f"train_{j}.png" for j in chunk],
        })
    test_data, test_labels = images(n_test)
    _dump(folder / "test_batch", {
        "batch_label": "testing batch 1 of 1",
        "labels": [int(k) for k in test_labels],
        "data": test_data,
        "filenames": [f"test_{j}.png" for j in range(n_test)],
    })
    _dump(folder / "batches.meta", {"num_cases_per_batch": len(chunks[0]), "label_names": LABEL_NAMES, "num_vis": 3072})
    return {"train": train_labels, "test": test_labels}


def trust_tiny_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make torchvision's `CIFAR10` expect the md5s of the files under `root` instead of the real dataset's."""
    CIFAR10 = _cifar10()
    folder = Path(root) / CIFAR10.base_folder

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(CIFAR10, "train_list", [[name, md5(name)] for name, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[name, md5(name)] for name, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5(CIFAR10.meta["filename"])})


def _dump(path: Path, entry: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def _cifar10() -> type:
    """torchvision's `CIFAR10`, imported when a test first needs it (torchvision takes seconds to import)."""
    from torchvision.datasets import CIFAR10

    return CIFAR10
