"""Synister's 3D VGG: blocks of 3x3x3 convolutions and max pooling, then three fully
connected layers. The FAFB setting is fmaps 12 (production 16), downsample (1,2,2) x3 then
(2,2,2), two convolutions per level, on 16x160x160 cubes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ntclass.models import register


def _per_level(value, n_levels: int, name: str) -> list:
    values = list(value) if isinstance(value, Sequence) else [value] * n_levels
    if len(values) != n_levels:
        raise TypeError(f"{name} has {len(values)} entries but there are {n_levels} levels")
    return values


@register("vgg3d")
class Vgg3D(nn.Module):
    def __init__(self, input_shape: Sequence[int], n_classes: int, fmaps: int = 12,
                 fmap_increase: int | Sequence[int] = 2,
                 downsample_factors: Sequence[Sequence[int]] = (
                     (1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)),
                 convolutions_per_level: int | Sequence[int] = 2, fc_size: int = 4096,
                 dropout: float = 0.5, batch_norm: bool = True, global_pool: bool = False):
        super().__init__()
        n_levels = len(downsample_factors)
        increases = _per_level(fmap_increase, n_levels, "fmap_increase")
        n_convs = _per_level(convolutions_per_level, n_levels, "convolutions_per_level")
        layers: list[nn.Module] = []
        size = np.array(input_shape)
        channels_in, channels = 1, fmaps
        for factor, increase, convs in zip(downsample_factors, increases, n_convs):
            for _ in range(convs):
                layers.append(nn.Conv3d(channels_in, channels, 3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm3d(channels))
                layers.append(nn.ReLU(inplace=True))
                channels_in = channels
            layers.append(nn.MaxPool3d(tuple(factor)))
            size = size // np.array(factor)
            channels = channels * increase
        if np.any(size < 1):
            raise TypeError(f"input_shape {list(input_shape)} is too small for "
                            f"downsample_factors {[list(f) for f in downsample_factors]}")
        if global_pool:
            # averaging over space makes the head position-invariant: fewer parameters,
            # faster to learn from few synapses (not Synister's default)
            layers.append(nn.AdaptiveAvgPool3d(1))
            size = np.ones(3, dtype=int)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(int(np.prod(size)) * channels_in, fc_size), nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc_size, fc_size), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(fc_size, n_classes),
        )

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(raw).flatten(1))
