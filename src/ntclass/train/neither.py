"""Synister's optional "neither" class: cubes centred on random locations away from every
known synapse, so that a model learns to say that a location is no synapse at all."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from ntclass.errors import NtclassError
from ntclass.sources.synapses import LOCATION
from ntclass.volumes import open_raw_cached

NEITHER = "neither"


def background_locations(synapses: pd.DataFrame, n: int, min_distance: float,
                         input_shape: Sequence[int], voxel_size: Sequence[int] | None,
                         seed: int) -> pd.DataFrame:
    """`n` locations (nm, voxel corners) whose cubes of `input_shape` lie inside the raw
    volumes of `synapses`, each at least `min_distance` nm from every synapse of the table,
    spread over the volumes in proportion to their synapses. Seeded: the same table and
    settings give the same locations."""
    rng = np.random.default_rng(seed)
    volumes = synapses.groupby(["raw_container", "raw_dataset"], sort=True)
    sizes = volumes.size()
    quota = np.floor(sizes.to_numpy() / sizes.sum() * n).astype(int)
    quota[: n - quota.sum()] += 1
    found = []
    for ((container, dataset), rows), k in zip(volumes, quota):
        if k:
            found.append(_in_volume(container, dataset, rows, int(k), min_distance,
                                    input_shape, voxel_size, rng))
    return pd.concat(found, ignore_index=True)


def _in_volume(container: str, dataset: str, synapses: pd.DataFrame, k: int,
               min_distance: float, input_shape: Sequence[int],
               voxel_size: Sequence[int] | None, rng: np.random.Generator) -> pd.DataFrame:
    volume = open_raw_cached(container, dataset, voxel_size)
    shape = np.array(input_shape)
    lo, hi = shape // 2, np.array(volume.shape) - (shape - shape // 2)
    tree = cKDTree(synapses[LOCATION].to_numpy(dtype=np.float64))
    kept: list[np.ndarray] = []
    if np.all(hi >= lo):
        for _ in range(50):
            voxels = rng.integers(lo, hi + 1, size=(4 * k, 3))
            nm = np.asarray(volume.offset) + voxels * np.asarray(volume.voxel_size)
            distance, _ = tree.query(nm, distance_upper_bound=min_distance)
            kept.extend(nm[np.isinf(distance)])
            if len(kept) >= k:
                break
    if len(kept) < k:
        raise NtclassError(
            f"cannot place {k} '{NEITHER}' locations at least {min_distance:g} nm from every "
            f"synapse inside raw '{volume.name}' (found {len(kept)}); lower "
            "training.neither.min_distance or training.neither.locations")
    locations = np.array(kept[:k])
    return pd.DataFrame({**{c: locations[:, i] for i, c in enumerate(LOCATION)},
                         "raw_container": container, "raw_dataset": dataset, "nt": NEITHER})
