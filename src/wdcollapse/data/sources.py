"""Load one split of a dataset as tensors: uint8 images [N, C, H, W] and int64 labels [N]."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import datasets
from torchvision.datasets.utils import check_integrity

from ..io import atomic_write
from . import prepare
from .errors import DataCorruptError, DataNotFoundError

log = logging.getLogger(__name__)

NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10}
MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
# Sorted by name, which is also CIFAR-10's label order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_CACHE_VERSION = 1

_CIFAR_HELP = (
    "Either pass data.image_folder=<dir of train/ and test/ JPEG class folders> "
    "(e.g. `wdcollapse-data cifar10 --tarball cifar10-jpg.tar.gz`, then "
    "data.image_folder=data/cifar10-jpg), or download CIFAR-10 with data.download=true on a machine "
    "with internet."
)


def load_split(name: str, root, train: bool, download: bool = False, image_folder=None):
    """Return ``(images, labels)`` of the train or test split of dataset ``name``."""
    if name not in NUM_CLASSES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(NUM_CLASSES)}")
    if name == "cifar10":
        if image_folder is not None:
            return load_image_folder(image_folder, train)
        return _load_cifar10(root, train, download)
    return _load_idx(name, root, train, download)


def _load_idx(name: str, root, train: bool, download: bool):
    raw = prepare.raw_dir(root, name)
    expected = prepare.EXPECTED_MD5[name]
    if not all((raw / f).is_file() for f in expected):
        try:
            getattr(prepare, f"prepare_{name}")(root)  # looked up late so tests can patch it
        except DataNotFoundError as e:
            problem = f"{name}: raw files missing in {raw} and they cannot be prepared here"
            if not download:
                raise DataNotFoundError(f"{problem}. {e}") from e
            try:
                _torchvision_class(name)(str(root), train=train, download=True)
            except (OSError, RuntimeError) as download_error:  # torchvision wraps URLErrors
                raise DataNotFoundError(f"{problem} nor downloaded ({download_error}). {e}") from download_error
        except OSError as e:  # (DataNotFoundError is one too) data.root under a file, or in a folder not writable
            raise DataNotFoundError(
                f"{name}: raw files missing in {raw}, and they cannot be written there ({e.strerror}: "
                f"{e.filename}); point data.root (or WDCOLLAPSE_DATA_DIR) at a writable folder, or at one "
                f"that holds {name}'s raw files"
            ) from None
    prefix = "train" if train else "t10k"
    for kind in ("images-idx3", "labels-idx1"):
        fname = f"{prefix}-{kind}-ubyte"
        prepare.verify_md5(raw / fname, expected[fname])
    ds = _torchvision_class(name)(str(root), train=train, download=False)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long()


def _torchvision_class(name: str):
    return {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]


def _load_cifar10(root, train: bool, download: bool):
    cls = datasets.CIFAR10
    base = Path(root) / cls.base_folder
    files = [*(cls.train_list if train else cls.test_list), [cls.meta["filename"], cls.meta["md5"]]]
    if not download:
        missing = [f for f, _ in files if not (base / f).is_file()]
        if missing:
            raise DataNotFoundError(f"CIFAR-10 files {missing} not found in {base}. {_CIFAR_HELP}")
    try:
        ds = cls(str(root), train=train, download=download)
    except OSError as e:  # no internet: URLError and friends
        raise DataNotFoundError(f"could not download CIFAR-10 ({e}). {_CIFAR_HELP}") from e
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        bad = [str(base / f) for f, md5 in files if not check_integrity(str(base / f), md5)]
        raise DataCorruptError(
            f"CIFAR-10 files fail torchvision's MD5 check: {bad}. Delete them and "
            f"re-download with data.download=true, or use data.image_folder=... instead."
        ) from e
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(ds.targets, dtype=torch.int64)


def load_image_folder(folder, train: bool):
    """Read ``<folder>/{train,test}/<class>/*.{jpg,png}``, cached in ``<folder>/.cache-<split>.pt``."""
    folder = Path(folder)
    split = "train" if train else "test"
    split_dir = folder / split
    entries = _list_images(split_dir)
    key = hashlib.sha256("\n".join(f"{rel}\t{size}\t{mtime}" for rel, size, mtime, _ in entries).encode()).hexdigest()
    cache = folder / f".cache-{split}.pt"
    cached = _read_cache(cache, key)
    if cached is not None:
        return cached
    images = _decode(split_dir, [rel for rel, *_ in entries])
    labels = torch.tensor([label for *_, label in entries], dtype=torch.int64)
    _write_cache(cache, {"version": _CACHE_VERSION, "key": key, "images": images, "labels": labels})
    return images, labels


def _list_images(split_dir: Path):
    """``(relative path, size, mtime_ns, label)`` of every image, in label then name order."""
    if not split_dir.is_dir():
        raise DataNotFoundError(
            f"{split_dir} not found. data.image_folder must hold train/ and "
            f"test/ with one folder per class. {_CIFAR_HELP}"
        )
    present = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if present != list(CIFAR10_CLASSES):
        raise DataCorruptError(f"{split_dir}: class folders {present}, expected exactly {list(CIFAR10_CLASSES)}")
    entries = []
    for label, cls in enumerate(CIFAR10_CLASSES):
        with os.scandir(split_dir / cls) as it:
            found = sorted(
                (e for e in it if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)), key=lambda e: e.name
            )
        for e in found:
            st = e.stat()
            entries.append((f"{cls}/{e.name}", st.st_size, st.st_mtime_ns, label))
    if not entries:
        raise DataNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {split_dir}")
    return entries


def _decode(split_dir: Path, rels) -> torch.Tensor:
    out = None
    for i, rel in enumerate(rels):
        path = split_dir / rel
        try:
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            raise DataCorruptError(f"{path}: cannot decode image ({e}); delete or replace it") from e
        if out is None:
            out = np.empty((len(rels), *pixels.shape), dtype=np.uint8)
        elif pixels.shape != out.shape[1:]:
            raise DataCorruptError(
                f"{path}: size {pixels.shape[1]}x{pixels.shape[0]}, expected "
                f"{out.shape[2]}x{out.shape[1]} like the other images"
            )
        out[i] = pixels
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _read_cache(cache: Path, key: str):
    try:
        blob = torch.load(cache, weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as e:  # truncated / foreign file: just rebuild it
        log.warning("ignoring unreadable cache %s (%s)", cache, e)
        return None
    if not isinstance(blob, dict) or blob.get("version") != _CACHE_VERSION or blob.get("key") != key:
        log.info("cache %s is stale, rebuilding", cache)
        return None
    return blob["images"], blob["labels"]


def _write_cache(cache: Path, blob: dict) -> None:
    try:
        with atomic_write(cache, "wb") as f:
            torch.save(blob, f)
    except OSError as e:  # a read-only folder: work without a cache
        log.warning("cannot write cache next to %s (%s); decoding again next time", cache, e)
