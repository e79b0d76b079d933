"""The MLP: flatten, `nonlinear_depth` activated layers, then a linear head."""

from __future__ import annotations

import math

from torch import nn

from .layerwise import LayerwiseNet


def MLP(in_shape, num_classes: int, nonlinear_depth: int, linear_depth: int, **kwargs) -> LayerwiseNet:
    return LayerwiseNet(nn.Flatten(), math.prod(in_shape), num_classes, nonlinear_depth, linear_depth, **kwargs)
