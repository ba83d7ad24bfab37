"""A 3D ResNet (18- and 34-style depths) with anisotropic early stages: for 40x4x4 nm
data the first stages downsample only in y and x until the voxels are about isotropic."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ntclass.models import register

DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    def __init__(self, channels_in: int, channels: int, stride: Sequence[int]):
        super().__init__()
        self.conv1 = nn.Conv3d(channels_in, channels, 3, stride=tuple(stride), padding=1,
                               bias=False)
        self.bn1 = nn.BatchNorm3d(channels)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if channels_in != channels or any(s != 1 for s in stride):
            self.shortcut = nn.Sequential(
                nn.Conv3d(channels_in, channels, 1, stride=tuple(stride), bias=False),
                nn.BatchNorm3d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@register("resnet3d")
class ResNet3D(nn.Module):
    def __init__(self, input_shape: Sequence[int], n_classes: int, depth: int = 18,
                 fmaps: int = 32, strides: Sequence[Sequence[int]] = (
                     (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)),
                 stem_kernel: Sequence[int] = (1, 7, 7), stem_stride: Sequence[int] = (1, 2, 2)):
        super().__init__()
        if depth not in DEPTHS:
            raise TypeError(f"depth {depth} is not supported; expected one of {sorted(DEPTHS)}")
        if len(strides) != 4:
            raise TypeError("strides needs one (z, y, x) stride per stage, 4 stages")
        padding = tuple(k // 2 for k in stem_kernel)
        self.stem = nn.Sequential(
            nn.Conv3d(1, fmaps, tuple(stem_kernel), stride=tuple(stem_stride), padding=padding,
                      bias=False),
            nn.BatchNorm3d(fmaps), nn.ReLU(inplace=True))
        stages = []
        channels_in = fmaps
        for stage, (n_blocks, stride) in enumerate(zip(DEPTHS[depth], strides)):
            channels = fmaps * 2**stage
            blocks = [BasicBlock(channels_in, channels, stride)]
            blocks += [BasicBlock(channels, channels, (1, 1, 1)) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            channels_in = channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(channels_in, n_classes)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(raw))).flatten(1))
