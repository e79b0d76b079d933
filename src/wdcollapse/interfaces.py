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

from .arguments import refuse


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
    """`MeasuredNetwork` for named submodules of any module, through forward hooks. Z_l is what
    layer l+1 receives (the activation between them applied), Z_L the last layer's output (the
    logits), W_l Z_{l-1} each layer's own output. One forward hook per layer, held only during a
    pass.

    Args:
        module: any torch.nn.Module.
        layers: names from `module.named_modules()` ("head.0", "fc", ...) of fully connected
            layers (2-D weights [out, in]), in forward order, each once.
        linear_depth: how many of the last named layers form the linear head (0..len(layers)).

    Raises:
        ArgumentError: a name the module lacks (every candidate is listed), a layer without a
            2-D weight, a name given twice, a wrong type; one line each.

    Example::

        net = HookedNetwork(model, ["head.0", "head.2", "head.4"], linear_depth=2)
        row, grams = metric_pass(net, DataLoader(train_set, batch_size=512), num_classes=10)
    """

    def __init__(self, module: nn.Module, layers: list[str], linear_depth: int):
        call = "HookedNetwork"
        if not isinstance(module, nn.Module):
            raise refuse(call, "module", module, "a torch.nn.Module")
        if isinstance(layers, str) or not all(isinstance(name, str) for name in layers) or not layers:
            raise refuse(call, "layers", layers, "a non-empty list of names from module.named_modules()")
        if isinstance(linear_depth, bool) or not isinstance(linear_depth, int) or not 0 <= linear_depth <= len(layers):
            raise refuse(call, "linear_depth", linear_depth, f"an integer from 0 to the {len(layers)} layers named")
        names = dict(module.named_modules())
        # the candidates: every submodule with a 2-D weight [out, in], in registration order
        candidates = [
            n for n, m in names.items() if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2
        ]
        unknown = [name for name in layers if name not in names]
        if unknown:
            raise refuse(
                call,
                "layers",
                list(layers),
                f"names of {type(module).__name__}'s fully connected submodules: "
                f"{candidates} (no submodule named {unknown})",
            )
        for name in layers:
            weight = getattr(names[name], "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
                shape = None if not isinstance(weight, torch.Tensor) else tuple(weight.shape)
                raise refuse(
                    call,
                    "layers",
                    list(layers),
                    f"layers with a 2-D weight [out, in]: {name!r} "
                    f"({type(names[name]).__name__}) has {shape}; the candidates are {candidates}",
                )
        if len(set(layers)) != len(layers):
            raise refuse(call, "layers", list(layers), "each layer named once")
        self.module, self.names = module, list(layers)
        self.modules = [names[name] for name in layers]
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
    shuffling and augmentation), under data parallelism batch i goes to rank i % world.

    Args:
        train: the training set's loader.
        num_classes: the number of classes (>= 2).
        test: the test set's loader (optional: test/acc and the test_set metrics need it).

    Raises:
        ArgumentError: a loader that is not iterable, a bad num_classes; at the first batch, a
            batch that is not (inputs, labels); in eval_batches, an unknown split or a missing
            test loader.

    Example::

        data = LoaderData(DataLoader(train_set, batch_size=512), 10, test=DataLoader(test_set, batch_size=512))
    """

    def __init__(self, train: Iterable, num_classes: int, test: Iterable | None = None):
        for name, loader in (("train", train), ("test", test)):
            if (loader is not None or name == "train") and (
                not isinstance(loader, Iterable) or isinstance(loader, str)
            ):
                raise refuse("LoaderData", name, loader, "a DataLoader (any re-iterable of (inputs, labels) batches)")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise refuse("LoaderData", "num_classes", num_classes, "an integer >= 2")
        self.train, self.test, self.num_classes = train, test, num_classes
        dataset = getattr(train, "dataset", None)
        self._num_train = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None

    @property
    def num_train(self) -> int:
        if self._num_train is None:
            self._num_train = sum(len(y) for _, y in self.train)
        return self._num_train

    def eval_batches(self, split: str = "train", rank: int = 0, world: int = 1):
        if split not in ("train", "test"):
            raise refuse("LoaderData.eval_batches", "split", split, "'train' or 'test'")
        loader = self.train if split == "train" else self.test
        if loader is None:
            raise refuse(
                "LoaderData.eval_batches",
                "split",
                split,
                "'train' only: this LoaderData has no test loader (pass test=...)",
            )
        for i, batch in enumerate(loader):  # its consumer (the metric pass) checks each batch
            if i % world == rank:
                yield batch
