"""What the metric pass and `MetricMonitor` need of a network and of its data, as typed
interfaces, and a second implementation of each that works with any PyTorch code.

`MeasuredNetwork`: the ordered fully connected layers l = 1..L whose features are measured,
which of them are linear (the paper's layout: the last `linear_depth` layers form the linear
head), their weights W_l ([n_l, n_{l-1}]), and `iter_layers(x)`, the pairs (W_l Z_{l-1}, Z_l)
of one forward pass. `wdcollapse.models.LayerwiseNet` implements it directly; `HookedNetwork`
implements it for named submodules of any `torch.nn.Module` through forward hooks.

`MetricData`: the number of classes and training samples and `eval_batches(split, rank,
world)`, the batches of the metric pass (rank `rank`'s share of them under data parallelism).
`wdcollapse.data.tensors.TensorDataModule` implements it; `LoaderData` wraps plain PyTorch
DataLoaders (any iterables of (inputs, labels)).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class MeasuredNetwork(Protocol):
    num_layers: int
    nonlinear_depth: int  # layers 1..nonlinear_depth are activated, the rest is the linear head
    linear_depth: int

    @property
    def weights(self) -> list[torch.Tensor]: ...

    @property
    def is_linear(self) -> list[bool]: ...

    def iter_layers(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class MetricData(Protocol):
    num_classes: int
    num_train: int

    def eval_batches(
        self, split: str = "train", rank: int = 0, world: int = 1
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...


def missing(obj, protocol) -> list[str]:
    """The members of `protocol` that `obj` lacks (an instance: its instance attributes count)."""
    members = [m for m in vars(protocol).get("__annotations__", {})]
    members += [m for m, v in vars(protocol).items() if callable(v) or isinstance(v, property)]
    members = [m for m in dict.fromkeys(members) if not m.startswith("_") or m == "__call__"]
    return [m for m in members if not hasattr(obj, m)]


class PaperLayout:
    """`is_linear` of the paper's layout: layers 1..nonlinear_depth are activated, the rest
    (linear_depth layers) form the linear head."""

    @property
    def is_linear(self) -> list[bool]:
        return [l >= self.nonlinear_depth for l in range(self.num_layers)]


class HookedNetwork(PaperLayout):
    """`MeasuredNetwork` for named submodules of any module: `layers` are names from
    `module.named_modules()` ("head.0", "fc", ...) of fully connected layers (2-D weights), in
    forward order; the last `linear_depth` of them form the linear head. Z_l is what layer l+1
    receives (the activation between them applied), Z_L the last layer's output (the logits),
    W_l Z_{l-1} each layer's own output. One forward hook per layer, held only during a pass."""

    def __init__(self, module: nn.Module, layers: list[str], linear_depth: int):
        if not layers:
            raise ValueError("HookedNetwork needs at least one layer name")
        if not 0 <= linear_depth <= len(layers):
            raise ValueError(f"linear_depth={linear_depth} but only {len(layers)} layers are named")
        names = dict(module.named_modules())
        unknown = [name for name in layers if name not in names]
        if unknown:
            raise ValueError(f"no submodule named {unknown} in {type(module).__name__}; names: {sorted(names)[:12]}...")
        self.module, self.names = module, list(layers)
        self.modules = [names[name] for name in layers]
        for name, m in zip(layers, self.modules):
            weight = getattr(m, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
                shape = None if weight is None else tuple(weight.shape)
                raise ValueError(f"layer {name!r} ({type(m).__name__}) needs a 2-D weight [out, in]; it has {shape}")
        self.num_layers = len(layers)
        self.linear_depth = linear_depth
        self.nonlinear_depth = self.num_layers - linear_depth

    @property
    def weights(self) -> list[torch.Tensor]:
        return [m.weight for m in self.modules]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def forward_and_capture(self, x: torch.Tensor) -> tuple[torch.Tensor, list, list]:
        """(the module's output, each layer's input, each layer's output) of one forward pass."""
        inputs: list = [None] * self.num_layers
        outputs: list = [None] * self.num_layers

        def hook(l):
            def record(_module, args, output):
                if outputs[l] is not None:
                    raise RuntimeError(f"layer {self.names[l]!r} ran twice in one forward pass; name each use once")
                # a copy: an in-place activation after the layer (ReLU(inplace=True)) would
                # otherwise turn the stored W_l Z_{l-1} into Z_l
                inputs[l], outputs[l] = args[0], output.clone()

            return record

        handles = [m.register_forward_hook(hook(l)) for l, m in enumerate(self.modules)]
        try:
            result = self.module(x)
        finally:
            for handle in handles:
                handle.remove()
        never = [self.names[l] for l, o in enumerate(outputs) if o is None]
        if never:
            raise RuntimeError(f"layers {never} did not run in the forward pass")
        return result, inputs, outputs

    def iter_layers(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        _, inputs, outputs = self.forward_and_capture(x)
        for l in range(self.num_layers):
            pre = outputs[l].flatten(1)
            out = inputs[l + 1].flatten(1) if l + 1 < self.num_layers else pre
            yield pre, out


class LoaderData:
    """`MetricData` over plain PyTorch DataLoaders (any re-iterable of (inputs, labels)
    batches): the metric pass takes the training loader's batches in its order (use one without
    shuffling and augmentation), under data parallelism batch i goes to rank i % world."""

    def __init__(self, train: Iterable, num_classes: int, test: Iterable | None = None):
        self.train, self.test, self.num_classes = train, test, int(num_classes)
        dataset = getattr(train, "dataset", None)
        self._num_train = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None

    @property
    def num_train(self) -> int:
        if self._num_train is None:
            self._num_train = sum(len(y) for _, y in self.train)
        return self._num_train

    def eval_batches(self, split: str = "train", rank: int = 0, world: int = 1):
        loader = self.train if split == "train" else self.test
        if loader is None:
            raise ValueError("LoaderData has no test loader: pass test=... or set test_acc=False")
        for i, (x, y) in enumerate(loader):
            if i % world == rank:
                yield x, y
