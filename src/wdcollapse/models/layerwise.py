"""The per-layer interface every model exposes to the metric callbacks.

A model is a trunk (a flatten for the MLP, a conv net for ResNet20) followed by L fully
connected layers, numbered l = 1..L from the first fully connected layer:
    Z_l = sigma(W_l Z_{l-1})  for l <= nonlinear_depth  (the non-linear part, L1 layers)
    Z_l = W_l Z_{l-1}         for l >  nonlinear_depth  (the linear head, L2 layers)
Z_0 is the trunk's output and Z_L the network output.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..interfaces import PaperLayout
from ..names import Init, names
from .activations import make_activation


@dataclass
class LayerTrace:
    """Everything one forward pass shows about the fully connected layers (index l-1 is layer l)."""

    output: torch.Tensor
    preacts: list[torch.Tensor]  # W_l Z_{l-1} (+ bias)
    outputs: list[torch.Tensor]  # Z_l


def layer_widths(width: int | list[int], num_layers: int, num_classes: int) -> list[int]:
    """Output widths of the L layers: the hidden widths, then the number of classes."""
    if isinstance(width, int):
        hidden = [width] * (num_layers - 1)
    else:
        hidden = [int(w) for w in width]
        if len(hidden) != num_layers - 1:
            raise ValueError(
                f"model.width lists {len(hidden)} widths but the network has {num_layers} layers, "
                f"so it needs {num_layers - 1} hidden widths (or one integer for all)"
            )
    if any(w < 1 for w in hidden):
        raise ValueError(f"model.width must be >= 1, got {width}")
    return hidden + [num_classes]


class LayerwiseNet(PaperLayout, nn.Module):
    def __init__(
        self,
        trunk: nn.Module,
        in_features: int,
        num_classes: int,
        nonlinear_depth: int,
        linear_depth: int,
        width: int | list[int] = 256,
        activation: str = "relu",
        activation_kwargs: dict | None = None,
        bias: bool = False,
        init: str = "he",
        init_scale: float = 1.0,
    ):
        super().__init__()
        if nonlinear_depth < 0 or linear_depth < 1:
            raise ValueError(f"need nonlinear_depth >= 0 and linear_depth >= 1, got {nonlinear_depth}, {linear_depth}")
        self.trunk = trunk
        self.nonlinear_depth = nonlinear_depth
        self.linear_depth = linear_depth
        self.activation_name = activation
        self.activation = make_activation(activation, **(activation_kwargs or {}))
        widths = layer_widths(width, nonlinear_depth + linear_depth, num_classes)
        fan_ins = [in_features] + widths[:-1]
        # The linear head is bias-free: the theory's linear layers are pure matrices.
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out, bias=bias and l < nonlinear_depth)
            for l, (n_in, n_out) in enumerate(zip(fan_ins, widths))
        )
        initialise(self.layers, nonlinear_depth, init, init_scale)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def weights(self) -> list[torch.Tensor]:
        """W_1..W_L in PyTorch's [n_l, n_{l-1}] layout."""
        return [layer.weight for layer in self.layers]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Z_0, the trunk's output. Outside training, a trunk with an `eval_chunk` attribute
        runs on the CPU in pieces of that many samples: a conv trunk's activations then stay in
        the cache (ResNet20: BENCHMARKS.md compares piece sizes against whole 4096-image chunks
        of the metric pass). In training mode never: BatchNorm's statistics are the batch's. Nor
        inside torch.compile (`compile=true`): the loop would put a copy of the trunk per piece
        into the graph."""
        piece = getattr(self.trunk, "eval_chunk", None)
        if (
            piece
            and not self.trunk.training
            and x.device.type == "cpu"
            and len(x) > piece
            and not torch.compiler.is_compiling()
        ):
            return torch.cat([self.trunk(part) for part in x.split(piece)])
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)
        for l, layer in enumerate(self.layers):
            z = layer(z)
            if l < self.nonlinear_depth:
                z = self.activation(z)
        return z

    def iter_layers(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(W_l Z_{l-1}, Z_l) for l = 1..L, one layer at a time: a consumer can use each layer
        while it is still in the cache and let it go (the metric pass does)."""
        z = self.features(x)
        for l, layer in enumerate(self.layers):
            pre = layer(z)
            z = self.activation(pre) if l < self.nonlinear_depth else pre
            yield pre, z

    def forward_layers(self, x: torch.Tensor) -> LayerTrace:
        preacts, outputs = zip(*self.iter_layers(x))
        return LayerTrace(output=outputs[-1], preacts=list(preacts), outputs=list(outputs))


INITS = names(Init)


def initialise(layers: nn.ModuleList, nonlinear_depth: int, init: str, scale: float = 1.0) -> None:
    """`default`: PyTorch's uniform init. `he`: N(0, 2/fan_in) for the non-linear layers and
    N(0, 1/fan_in) for the linear head (keeps the signal's scale at any depth). `lecun`:
    N(0, 1/fan_in) everywhere (Theorem 4.4's setting). Biases start at zero except for `default`.
    `scale` multiplies every layer's initial weights (for `default` too): a plain network's
    initial output then scales as scale^L."""
    if init not in INITS:
        raise ValueError(f"unknown model.init {init!r}; choose one of {INITS}")
    if not scale > 0:
        raise ValueError(f"model.init_scale must be > 0, got {scale}")
    for l, layer in enumerate(layers):
        if init != "default":
            gain = 2.0 if (init == "he" and l < nonlinear_depth) else 1.0
            nn.init.normal_(layer.weight, std=math.sqrt(gain / layer.in_features))
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        if scale != 1.0:
            with torch.no_grad():
                layer.weight.mul_(scale)
