"""The MLP: flatten, `nonlinear_depth` activated layers, then a linear head."""

from __future__ import annotations

import math

from torch import nn

from .layerwise import LayerwiseNet


class MLP(LayerwiseNet):
    """The paper's MLP: the input flattened, `nonlinear_depth` activated fully connected layers, then
    a linear head of `linear_depth` bias-free layers (a `LayerwiseNet` with an nn.Flatten trunk).

    Args:
        in_shape: the shape of one input, e.g. [1, 28, 28].
        num_classes: K, the width of the output.
        nonlinear_depth: activated layers (0: a deep linear network).
        linear_depth: layers of the linear head.
        **kwargs: LayerwiseNet's (width, activation, activation_kwargs, bias, init, init_scale).

    Example::

        net = MLP([1, 28, 28], 10, nonlinear_depth=6, linear_depth=3, width=256)
        logits = net(torch.randn(8, 1, 28, 28))   # [8, 10]
    """

    def __init__(self, in_shape, num_classes: int, nonlinear_depth: int, linear_depth: int, **kwargs):
        super().__init__(nn.Flatten(), math.prod(in_shape), num_classes, nonlinear_depth, linear_depth, **kwargs)
