"""Validation during training: fixed cubes of the validation part, loss and accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ntclass import stores
from ntclass.cubes import CubeReader, cpu_count
from ntclass.intensity import Intensity, intensity_of, to_network
from ntclass.sources.synapses import LOCATION
from ntclass.volumes import SLICE_CACHE_BYTES, RawVolume, open_raw_cached


def read_cubes(volume: RawVolume, locations: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The cubes around `locations` (N x 3 nm), read as prediction reads them: in
    spatial order, each chunk they touch once (remote and compressed raw included)."""
    order = np.lexsort(np.floor(np.asarray(locations) / 1000).T[::-1])
    # the context of the training samples' reads: chunks read here stay in its cache
    reader = CubeReader(volume, shape, cpu_count(), stores.context(0, SLICE_CACHE_BYTES))
    pending, _ = reader.submit(locations[order])
    cubes = np.empty((len(locations), *shape), dtype=volume.dtype)
    for i, cube in zip(order, pending):
        cube.result(cubes[i])
    return cubes


class ValidationSet:
    """Un-augmented cubes centred on (a seeded sample of) the validation synapses, read
    once and held in memory in their raw dtype, so that every validation sees exactly the
    same inputs. Cubes are grouped by the intensity mapping of the volume they come from."""

    def __init__(self, synapses: pd.DataFrame, classes: Sequence[str],
                 input_shape: Sequence[int], voxel_size: Sequence[int] | None,
                 max_synapses: int, seed: int = 0,
                 intensity_range: Sequence[float] | None = None):
        if len(synapses) > max_synapses:
            synapses = synapses.sample(n=max_synapses, random_state=seed)
        synapses = synapses[synapses["nt"].isin(list(classes))].reset_index(drop=True)
        index = {nt: i for i, nt in enumerate(classes)}
        labels = synapses["nt"].map(index).to_numpy(np.int64)
        groups: dict[Intensity, tuple[list, list]] = {}
        for (container, dataset), idx in synapses.groupby(
                ["raw_container", "raw_dataset"], sort=False).indices.items():
            volume = open_raw_cached(container, dataset, voxel_size)
            intensity = intensity_of(volume.dtype, intensity_range, volume.name)
            locations = synapses[LOCATION].to_numpy(dtype=np.float64)[idx]
            cubes = read_cubes(volume, locations, input_shape)
            got = groups.setdefault(intensity, ([], []))
            got[0].append(np.ascontiguousarray(cubes))
            got[1].append(labels[idx])
        self.parts = [(intensity, torch.from_numpy(np.concatenate(c)),
                       torch.from_numpy(np.concatenate(y)))
                      for intensity, (c, y) in groups.items()]

    def __len__(self) -> int:
        return sum(len(y) for _, _, y in self.parts)

    def evaluate(self, model: torch.nn.Module, loss_fn: torch.nn.Module, device: torch.device,
                 batch_size: int = 32) -> tuple[float, float]:
        """Mean loss and accuracy of `model` (left in the mode it was in)."""
        was_training = model.training
        model.eval()
        total_loss, correct = 0.0, 0
        with torch.inference_mode():
            for intensity, cubes, labels in self.parts:
                for start in range(0, len(labels), batch_size):
                    x = to_network(cubes[start:start + batch_size].to(device), intensity)
                    y = labels[start:start + batch_size].to(device)
                    logits = model(x).float()
                    total_loss += float(loss_fn(logits, y)) * len(y)
                    correct += int((logits.argmax(dim=1) == y).sum())
        model.train(was_training)
        return total_loss / len(self), correct / len(self)
