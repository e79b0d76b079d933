"""ResNet20 (He et al. 2016, the CIFAR variant): 3 stages of 3 basic blocks, 16/32/64 channels,
global average pooling; then ReLU fully connected layers and the linear head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layerwise import LayerwiseNet


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.pad = c_out - c_in
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        # Option A of the paper: subsample and zero-pad channels, no extra parameters.
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20Trunk(nn.Module):
    out_features = 64
    eval_chunk = 64  # samples per piece outside training on the CPU (LayerwiseNet.features)

    def __init__(self, in_channels: int = 3, blocks_per_stage: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks, c_in = [], 16
        for stage, c_out in enumerate((16, 32, 64)):
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(c_in, c_out, 2 if (stage > 0 and b == 0) else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)


class ResNet20(LayerwiseNet):
    """ResNet20's convolutional trunk (He et al.'s CIFAR ResNet, 64 features after pooling) with the
    paper's head: `nonlinear_depth` activated fully connected layers, then `linear_depth` linear ones.

    Args:
        in_shape: the shape of one input, [channels, height, width].
        num_classes: K, the width of the output.
        nonlinear_depth: activated fully connected layers after the trunk.
        linear_depth: layers of the linear head.
        **kwargs: LayerwiseNet's (width, activation, activation_kwargs, bias, init, init_scale).

    Example::

        net = ResNet20([3, 32, 32], 10, nonlinear_depth=3, linear_depth=3, width=128)
        logits = net(torch.randn(4, 3, 32, 32))   # [4, 10]
    """

    def __init__(self, in_shape, num_classes: int, nonlinear_depth: int, linear_depth: int, **kwargs):
        trunk = ResNet20Trunk(in_channels=in_shape[0])
        super().__init__(trunk, trunk.out_features, num_classes, nonlinear_depth, linear_depth, **kwargs)
