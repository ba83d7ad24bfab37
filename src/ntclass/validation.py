"""Validation during training: fixed cubes of the validation part, loss and accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .synapses import LOCATION
from .volumes import crop_cubes, open_raw_cached


def normalise_cubes(cubes: torch.Tensor) -> torch.Tensor:
    """uint8 cubes (N, z, y, x) to the network's input: float in [-1, 1], one channel.

    The same mapping as the training pipeline (Normalize, then IntensityScaleShift(2, -1)).
    """
    return cubes.to(torch.float32)[:, None] * (2 / 255) - 1


class ValidationSet:
    """Un-augmented cubes centred on (a seeded sample of) the validation synapses, read
    once and held in memory, so that every validation sees exactly the same inputs."""

    def __init__(self, synapses: pd.DataFrame, classes: Sequence[str],
                 input_shape: Sequence[int], voxel_size: Sequence[int],
                 max_synapses: int, seed: int = 0):
        if len(synapses) > max_synapses:
            synapses = synapses.sample(n=max_synapses, random_state=seed)
        synapses = synapses[synapses["nt"].isin(list(classes))].reset_index(drop=True)
        index = {nt: i for i, nt in enumerate(classes)}
        self.labels = torch.as_tensor(synapses["nt"].map(index).to_numpy(np.int64))
        cubes = np.zeros((len(synapses), *input_shape), dtype=np.uint8)
        for (container, dataset), idx in synapses.groupby(
                ["raw_container", "raw_dataset"], sort=False).indices.items():
            volume = open_raw_cached(container, dataset, tuple(voxel_size))
            locations = synapses[LOCATION].to_numpy(dtype=np.float64)[idx]
            cubes[idx], _ = crop_cubes(volume, locations, input_shape)
        self.cubes = torch.from_numpy(cubes)

    def __len__(self) -> int:
        return len(self.labels)

    def evaluate(self, model: torch.nn.Module, loss_fn: torch.nn.Module, device: torch.device,
                 batch_size: int = 32) -> tuple[float, float]:
        """Mean loss and accuracy of `model` (left in the mode it was in)."""
        was_training = model.training
        model.eval()
        total_loss, correct = 0.0, 0
        with torch.inference_mode():
            for start in range(0, len(self), batch_size):
                x = normalise_cubes(self.cubes[start:start + batch_size].to(device))
                y = self.labels[start:start + batch_size].to(device)
                logits = model(x).float()
                total_loss += float(loss_fn(logits, y)) * len(y)
                correct += int((logits.argmax(dim=1) == y).sum())
        model.train(was_training)
        return total_loss / len(self), correct / len(self)
