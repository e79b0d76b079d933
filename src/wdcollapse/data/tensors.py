"""In-memory data: the whole (sub)set as one tensor, batches by indexing a permutation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch

from ..names import Normalize, names
from .sources import MEAN_STD, NUM_CLASSES, load_split


def class_balanced_subset(
    labels: torch.Tensor,
    num_per_class: int,
    num_classes: int,
    seed: int,
    setting: str = "data.num_per_class",
    split: str = "training",
) -> torch.Tensor:
    """Indices of `num_per_class` samples of each class, drawn by `seed`, in ascending order.
    `setting` and `split` name what the error message is about."""
    counts = torch.bincount(labels, minlength=num_classes)
    smallest = int(counts.argmin())
    if num_per_class > counts[smallest]:
        raise ValueError(
            f"{setting}={num_per_class} but class {smallest}, the smallest, has only {int(counts[smallest])} "
            f"{split} samples; use at most {int(counts[smallest])} (or null for the whole set)"
        )
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        picked.append(idx[torch.randperm(len(idx), generator=g)[:num_per_class]])
    return torch.cat(picked).sort().values


class PermutationBatches:
    """Shuffled batches of in-memory tensors. The permutation of epoch e depends only on
    (seed, e), so a resumed run sees exactly the batches an uninterrupted one would.

    Under data parallelism (`world` > 1 processes) every rank draws the same permutation,
    pads it by wrapping around to a multiple of `world` and takes its disjoint shard
    perm[rank::world], as torch's DistributedSampler does; `batch_size` is per process.
    With `world` = 1 the batches are those of the single-process run, in its order."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        seed: int,
        epoch: Callable[[], int],
        rank: int = 0,
        world: int = 1,
    ):
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        self.x, self.y, self.batch_size, self.seed, self.epoch = x, y, batch_size, seed, epoch
        self.rank, self.world = rank, world

    @property
    def shard_size(self) -> int:
        """Samples per rank and epoch: ceil(N / world)."""
        return -(-len(self.y) // self.world)

    def __len__(self) -> int:
        return -(-self.shard_size // self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices of the current epoch, in batch order."""
        # A CPU generator gives the same permutation on every device (a run may resume on
        # another) and on every rank.
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch())
        perm = torch.randperm(len(self.y), generator=g)
        if self.world > 1:
            total = self.shard_size * self.world
            if total > len(perm):  # wrap around (repeatedly, if N < world)
                perm = perm.repeat(-(-total // len(perm)))[:total]
            perm = perm[self.rank :: self.world]
        return perm

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # The permutation moves to the data's device once per epoch, and each batch is a
        # gather there: no workers, no host-to-device copies.
        perm = self.indices().to(self.y.device)
        for idx in perm.split(self.batch_size):
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)


class StepGroups:
    """The batches of `batches`, `size` consecutive ones at a time (the last group may be
    shorter): what `CollapseModule.training_step` takes per call. Not stateful: a run resumes at
    an epoch boundary (our checkpoints), and Lightning warns about a mid-epoch checkpoint."""

    def __init__(self, batches: PermutationBatches, size: int):
        if int(size) != size or size < 1:
            raise ValueError(f"steps_per_call must be a positive integer, got {size}")
        self.batches, self.size = batches, int(size)

    def __len__(self) -> int:
        return -(-len(self.batches) // self.size)

    def __iter__(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        group = []
        for batch in self.batches:
            group.append(batch)
            if len(group) == self.size:
                yield group
                group = []
        if group:
            yield group


# data.normalize: the schema's mode names, and true / false for the configs written before `pixel` existed
NORMALIZE = {True: "channel", False: "none", **{mode: mode for mode in names(Normalize)}}


class TensorDataModule(pl.LightningDataModule):
    """A dataset held in memory as float tensors (normalised), with optional class-balanced
    training and test subsets. `batch_size: null` means full-batch (gradient descent)."""

    def __init__(
        self,
        name: str,
        root: str | Path,
        num_per_class: int | None = None,
        test_num_per_class: int | None = None,
        batch_size: int | None = 128,
        normalize: bool | str = True,
        download: bool = False,
        image_folder: str | None = None,
        subset_seed: int = 0,
        shuffle_seed: int = 0,
        eval_chunk: int = 4096,
        num_classes: int | None = None,
        in_shape: list[int] | None = None,
        steps_per_call: int = 1,
    ):
        super().__init__()
        if name not in NUM_CLASSES:
            raise ValueError(f"unknown data.name {name!r}; choose one of {sorted(NUM_CLASSES)}")
        self.name, self.root = name, Path(root)
        self.num_classes = NUM_CLASSES[name]
        if num_classes is not None and num_classes != self.num_classes:
            raise ValueError(f"data.num_classes={num_classes} but {name} has {self.num_classes} classes")
        self.in_shape = list(in_shape) if in_shape is not None else None
        self.num_per_class, self.test_num_per_class = num_per_class, test_num_per_class
        self.batch_size = batch_size
        self.normalize = NORMALIZE.get(normalize) if isinstance(normalize, (bool, str)) else None
        if self.normalize is None:
            raise ValueError(f"data.normalize={normalize!r}; choose one of true (= channel), pixel or false (= none)")
        self.download, self.image_folder = download, image_folder
        self.subset_seed, self.shuffle_seed, self.eval_chunk = subset_seed, shuffle_seed, eval_chunk
        self.steps_per_call = steps_per_call  # checked by StepGroups
        self.train_x = self.train_y = self.test_x = self.test_y = None

    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = load_split(self.name, self.root, train, self.download, self.image_folder)
        return images.float().div_(255.0), labels.long()

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        """`channel`: the data set's per-channel mean and std (sources.MEAN_STD). `pixel`: minus the
        training set's mean image, divided by one scalar, the centred training set's std (a
        per-pixel std would blow up MNIST's nearly constant border pixels)."""
        if self.normalize == "channel":
            mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in MEAN_STD[self.name])
            return (x - mean) / std
        if self.normalize == "pixel":
            return (x - self._pixel_mean) / self._pixel_std
        return x

    def setup(self, stage: str | None = None) -> None:
        if self.train_x is not None:
            return
        x, y = self._load(train=True)
        if self.normalize == "pixel":  # statistics of the whole training split, before any subset
            self._pixel_mean = x.mean(0, keepdim=True)
            self._pixel_std = float((x - self._pixel_mean).std())
        x = self._standardise(x)
        if self.in_shape is not None and list(x.shape[1:]) != self.in_shape:
            raise ValueError(f"data.in_shape={self.in_shape} but {self.name} images are {list(x.shape[1:])}")
        if self.num_per_class is not None:
            keep = class_balanced_subset(y, self.num_per_class, self.num_classes, self.subset_seed)
            x, y = x[keep], y[keep]
        self.train_x, self.train_y = x.contiguous(), y
        x, y = self._load(train=False)
        x = self._standardise(x)
        if self.test_num_per_class is not None:
            keep = class_balanced_subset(
                y,
                self.test_num_per_class,
                self.num_classes,
                self.subset_seed,
                setting="data.test_num_per_class",
                split="test",
            )
            x, y = x[keep], y[keep]
        self.test_x, self.test_y = x.contiguous(), y

    def to(self, device: torch.device | str) -> TensorDataModule:
        """Move the whole data set to the training device once: no per-batch copies."""
        self.train_x, self.train_y = self.train_x.to(device), self.train_y.to(device)
        self.test_x, self.test_y = self.test_x.to(device), self.test_y.to(device)
        return self

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def rank_and_world(self) -> tuple[int, int]:
        """(global rank, number of processes) of the attached trainer; (0, 1) without one."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def train_batches(self) -> PermutationBatches:
        """This process's training batches of the current epoch, one per optimizer step."""
        rank, world = self.rank_and_world()
        # full batch under data parallelism: each rank's whole shard
        batch = self.batch_size or -(-self.num_train // world)
        return PermutationBatches(
            self.train_x, self.train_y, batch, self.shuffle_seed, self._epoch, rank=rank, world=world
        )

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (per process)."""
        return len(self.train_batches())

    def train_dataloader(self) -> StepGroups:
        # Under DDP too: with manual optimization Lightning prepares DDP's gradient reduction
        # before every manual_backward, so each step of a group all-reduces its gradients.
        return StepGroups(self.train_batches(), self.steps_per_call)

    def eval_batches(
        self,
        split: str = "train",
        rank: int = 0,
        world: int = 1,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split in its stored order, in chunks of `eval_chunk` samples. With `world` > 1,
        rank `rank`'s share: the chunks i with i % world == rank, so the ranks' shares are
        disjoint, cover the split, and hold the very chunks of the single-process pass (whose
        per-chunk statistics, float32 on the fast path, are then the same)."""
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        for i, start in enumerate(range(0, len(y), self.eval_chunk)):
            if i % world == rank:
                yield x[start : start + self.eval_chunk], y[start : start + self.eval_chunk]
