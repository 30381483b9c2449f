"""Task presets and in-memory task data (esper.tolaria.tasks, esper.tolaria.data)."""

import random
import socket

import msgspec
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from cifar_fixture import red_value, trust_tiny_cifar10, write_tiny_cifar10

from esper.errors import BadInput
from esper.tolaria import data as data_module
from esper.tolaria.data import CIFAR10_MEAN, CIFAR10_STD, augment, exact_moments, load_task_data
from esper.kasmina import BLUEPRINTS as FAMILIES
from esper.kasmina import preset_host
from esper.tolaria.tasks import TASKS, TaskPreset, get_task


def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in this test")


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a socket or resolve a name fails."""
    monkeypatch.setattr(socket, "socket", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)


@pytest.fixture(scope="module")
def mnist1d():
    return load_task_data("mnist1d", seed=0)  # from the suite's cache (conftest.py) once any run has made it


@pytest.fixture
def tiny_cifar(tmp_path, monkeypatch):
    root = tmp_path / "cifar"
    labels = write_tiny_cifar10(root, n_train=50, n_test=20)
    trust_tiny_cifar10(root, monkeypatch)
    return root, labels


# ---- presets -----------------------------------------------------------------------------------


def test_presets_name_their_host_optimizer_and_blueprints():
    assert get_task("mnist1d").host == "cnn1d" and get_task("mnist1d").epochs == 25
    assert get_task("cifar10").host == "resnet" and get_task("cifar10").epochs == 30
    for name, preset in TASKS.items():
        assert preset.name == name
        assert preset.optimizer in ("adam", "sgd")
        assert preset.lr > 0 and preset.seed_lr > 0 and preset.batch_size > 0 and preset.weight_decay >= 0
        with torch.device("meta"):
            slots = preset_host(preset).slots.values()
        offered = {b for slot in slots for b in FAMILIES[slot.family]}
        assert preset.blueprints and set(preset.blueprints) <= offered, name


def test_presets_are_frozen():
    with pytest.raises(AttributeError):
        get_task("mnist1d").lr = 1.0  # type: ignore[misc]
    assert msgspec.json.decode(msgspec.json.encode(get_task("cifar10")), type=TaskPreset) == get_task("cifar10")


def test_unknown_task_is_bad_input_listing_the_known_ones():
    for call in (lambda: get_task("imagenet"), lambda: load_task_data("imagenet", seed=0)):
        with pytest.raises(BadInput) as err:
            call()
        message = str(err.value)
        assert "imagenet" in message and "mnist1d" in message and "cifar10" in message and "\n" not in message


# ---- mnist1d -----------------------------------------------------------------------------------


def test_mnist1d_splits(mnist1d):
    assert (len(mnist1d.train), len(mnist1d.val), len(mnist1d.test)) == (3200, 800, 1000)
    assert mnist1d.input_shape == (1, 40) and mnist1d.num_classes == 10
    for split in (mnist1d.train, mnist1d.val, mnist1d.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 40)
        assert set(split.y.tolist()) == set(range(10))


def test_mnist1d_is_standardised_on_train(mnist1d):
    assert abs(mnist1d.train.x.mean().item()) < 1e-5
    assert abs(mnist1d.train.x.std().item() - 1) < 1e-3
    for split in (mnist1d.val, mnist1d.test):  # same transform, so only close to 0 / 1
        assert abs(split.x.mean().item()) < 0.1 and abs(split.x.std().item() - 1) < 0.1


@pytest.mark.slow  # generates the dataset twice more
def test_mnist1d_generates_offline_deterministically_and_caches_on_disk(tmp_path, monkeypatch, offline, mnist1d):
    monkeypatch.setenv("ESPER_CACHE", str(tmp_path))
    data_module._mnist1d_arrays.cache_clear()
    py_state, np_state = random.getstate(), np.random.get_state()

    generated = load_task_data("mnist1d", seed=0)  # made again here, with every socket refused
    (cached,) = tmp_path.glob("mnist1d-*-seed0.npz")
    assert random.getstate() == py_state  # mnist1d reseeds the global RNGs: we put them back
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))

    data_module._mnist1d_arrays.cache_clear()
    from_disk = load_task_data("mnist1d", seed=0)
    for other in (generated, from_disk):
        for s in ("train", "val", "test"):
            assert torch.equal(mnist1d.split(s).x, other.split(s).x)
            assert torch.equal(mnist1d.split(s).y, other.split(s).y)


def test_mnist1d_unreadable_cache_is_ignored(tmp_path, mnist1d):
    path = tmp_path / "mnist1d.npz"
    assert data_module._read_npz(path) is None
    path.write_bytes(b"not a zip file")
    assert data_module._read_npz(path) is None
    arrays = tuple(np.asarray(t) for t in (mnist1d.train.x, mnist1d.train.y, mnist1d.test.x, mnist1d.test.y))
    data_module._write_npz(path, arrays)
    assert data_module._read_npz(path) is None  # written, but not the 2-D arrays we cache
    path.write_bytes(path.read_bytes()[:100])
    assert data_module._read_npz(path) is None


def test_a_cache_that_cannot_be_written_costs_only_the_cache(tmp_path, mnist1d):
    """A cache path under a file (ESPER_CACHE=/etc/passwd, say) or a cache folder that is a file: writing is best
    effort, so the data is still returned and nothing is raised."""
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    arrays = tuple(np.asarray(t) for t in (mnist1d.train.x[:, 0], mnist1d.train.y, mnist1d.test.x[:, 0], mnist1d.test.y))
    for path in (blocker / "mnist1d.npz", blocker / "sub" / "mnist1d.npz"):
        data_module._write_npz(path, arrays)
        assert data_module._read_npz(path) is None
    assert blocker.read_text() == "not a folder" and sorted(tmp_path.iterdir()) == [blocker]


@pytest.mark.slow  # generates another dataset
def test_mnist1d_seed_changes_the_data(mnist1d):
    other = load_task_data("mnist1d", seed=1)
    assert not torch.equal(other.train.x, mnist1d.train.x)
    assert (len(other.train), len(other.val), len(other.test)) == (3200, 800, 1000)


# ---- batches and augmentation ------------------------------------------------------------------


def _epoch(data, seed, batch_size=256):
    return list(data.batches("train", batch_size, torch.Generator().manual_seed(seed)))


def test_train_batches_are_a_seeded_shuffle_covering_the_split_once(mnist1d):
    a, b, c = _epoch(mnist1d, 0), _epoch(mnist1d, 0), _epoch(mnist1d, 1)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    assert [len(y) for _, y in a] == [256] * 12 + [128]
    seen = torch.cat([x for x, _ in a]).flatten(1)
    order = torch.cat([x for x, _ in c]).flatten(1)
    assert torch.equal(seen.sort(dim=0).values, mnist1d.train.x.flatten(1).sort(dim=0).values)
    assert not torch.equal(seen, mnist1d.train.x.flatten(1)) and not torch.equal(seen, order)


def test_eval_batches_come_in_order_and_train_needs_a_generator(mnist1d):
    batches = list(mnist1d.batches("val", 300))
    assert [len(y) for _, y in batches] == [300, 300, 200]
    assert torch.equal(torch.cat([x for x, _ in batches]), mnist1d.val.x)
    assert [len(y) for _, y in mnist1d.batches("test", 300, drop_last=True)] == [300] * 3
    with pytest.raises(ValueError):
        mnist1d.batches("train", 64)
    with pytest.raises(ValueError):
        mnist1d.batches("holdout", 64)


def test_augment_crops_and_flips_reproducibly():
    x = torch.randn(64, 3, 32, 32)
    out = augment(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(3)))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    seen = set()
    for image, source in zip(out, padded):
        match = [
            (top, left, flipped)
            for top in range(9)
            for left in range(9)
            for flipped in (False, True)
            if torch.equal(image, _crop(source, top, left, flipped))
        ]
        assert match, "every output is a crop of the padded image, maybe mirrored"
        seen.update(match)
    assert {flipped for _, _, flipped in seen} == {False, True}
    assert len({(top, left) for top, left, _ in seen}) > 10


def _crop(image, top, left, flipped):
    crop = image[:, top : top + 32, left : left + 32]
    return crop.flip(-1) if flipped else crop


# ---- cifar10 -----------------------------------------------------------------------------------


def test_cifar10_loads_the_fixture_through_torchvision(tiny_cifar, offline):
    root, labels = tiny_cifar
    data = load_task_data("cifar10", seed=0, data_dir=str(root))
    assert (len(data.train), len(data.val), len(data.test)) == (45, 5, 20)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    assert data.train.y.tolist() + data.val.y.tolist() == labels["train"].tolist()
    assert data.test.y.tolist() == labels["test"].tolist()
    pixels = data.test.x * torch.tensor(CIFAR10_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    pixels = (pixels * 255).round()
    expected_red = torch.tensor([red_value(k) for k in labels["test"]], dtype=torch.float32)
    assert torch.equal(pixels[:, 0], expected_red.view(-1, 1, 1).expand(-1, 32, 32))
    assert torch.equal(pixels[:, 2], torch.arange(20, dtype=torch.float32).view(-1, 1, 1).expand(-1, 32, 32))
    assert augment(data.train.x[:8], torch.Generator().manual_seed(0)).shape == (8, 3, 32, 32)


def test_cifar10_given_its_batches_folder_itself_reads_it(tiny_cifar, offline):
    """--data-dir .../cifar-10-batches-py, the folder the data is in, rather than the one holding it: the likeliest
    slip there is, and it said there was no data."""
    root, labels = tiny_cifar
    data = load_task_data("cifar10", seed=0, data_dir=root / "cifar-10-batches-py")
    assert data.test.y.tolist() == labels["test"].tolist() and len(data.train) == 45


def test_cifar10_limit(tiny_cifar):
    root, _ = tiny_cifar
    data = load_task_data("cifar10", seed=0, data_dir=root, limit=4)
    assert (len(data.train), len(data.val), len(data.test)) == (4, 4, 4)


def test_cifar10_without_data_is_bad_input(tmp_path, offline, monkeypatch):
    monkeypatch.setenv("ESPER_CACHE", str(tmp_path / "cache"))  # nothing downloaded before either
    for data_dir, download in ((None, False), (tmp_path / "nothing-here", False), (tmp_path / "empty", True),
                               (tmp_path / "empty" / "a" / "b", True)):
        with pytest.raises(BadInput) as err:
            load_task_data("cifar10", seed=0, data_dir=data_dir, download=download)
        message = str(err.value)
        assert "--data-dir" in message and "\n" not in message
        if not download:
            assert "download" in message
    assert not (tmp_path / "empty").exists()  # the folders a failed download made are not left behind


def test_cifar10_given_no_folder_reads_what_a_download_left_in_the_cache(tmp_path, offline, monkeypatch):
    """A run made with --download records no --data-dir: re-executing or resuming it reads the cached copy."""
    monkeypatch.setenv("ESPER_CACHE", str(tmp_path / "cache"))
    write_tiny_cifar10(tmp_path / "cache" / "cifar10", n_train=50, n_test=20)
    trust_tiny_cifar10(tmp_path / "cache" / "cifar10", monkeypatch)
    data = load_task_data("cifar10", seed=0, data_dir=None, download=False)
    assert len(data.test) == 20


def test_cifar10_checksums_are_still_verified(tiny_cifar, monkeypatch):
    root, _ = tiny_cifar
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"tampered")
    with pytest.raises(BadInput):
        load_task_data("cifar10", seed=0, data_dir=root)


@given(st.lists(st.floats(-1e3, 1e3, width=32), min_size=2, max_size=300), st.randoms())
def test_exact_moments_are_the_same_bits_in_any_order(values, rnd):
    """What a numpy version or a CPU's vector width changes is the order values are added in: exact moments do not
    depend on it (numpy's float32 ones do)."""
    shuffled = list(values)
    rnd.shuffle(shuffled)
    mean, std = exact_moments(np.array(values, np.float32))
    assert (mean, std) == exact_moments(np.array(shuffled, np.float32))
    assert mean == pytest.approx(np.mean(values, dtype=np.float64), rel=1e-9, abs=1e-9) and std >= 0.0

