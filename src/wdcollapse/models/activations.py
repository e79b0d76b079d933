"""Activations: ReLU, leaky ReLU, and a smooth leaky ReLU meeting Assumption 4.2."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..names import Activation, names


class SmoothLeakyReLU(nn.Module):
    """sigma(x) = gamma x + (1 - gamma) (softplus(beta x) - log 2) / beta.

    sigma'(x) = gamma + (1 - gamma) sigmoid(beta x) lies in [gamma, 1], sigma(0) = 0, hence
    |sigma(x)| <= |x|; sigma' is (1 - gamma) beta / 4 -Lipschitz. These are conditions (i)-(iii)
    of Assumption 4.2, and sigma -> leaky ReLU(gamma) uniformly as beta -> infinity.
    """

    def __init__(self, gamma: float = 0.1, beta: float = 4.0):
        super().__init__()
        if not 0.0 < gamma < 1.0 or beta <= 0:
            raise ValueError(f"smooth_leaky_relu needs 0 < gamma < 1 and beta > 0, got {gamma}, {beta}")
        self.gamma, self.beta = gamma, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        soft = (F.softplus(self.beta * x) - math.log(2.0)) / self.beta
        return self.gamma * x + (1.0 - self.gamma) * soft


ACTIVATIONS = names(Activation)


def make_activation(name: str, **kwargs) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope=kwargs.get("negative_slope", 0.01))
    if name == "smooth_leaky_relu":
        return SmoothLeakyReLU(**kwargs)
    raise ValueError(f"unknown model.activation {name!r}; choose one of {ACTIVATIONS}")
