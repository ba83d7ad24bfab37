"""Gunpowder nodes: a source of cubes centred on synapses, and a class label."""

from __future__ import annotations

from collections.abc import Sequence

import gunpowder as gp
import numpy as np
import pandas as pd

from ntclass.intensity import intensity_of
from ntclass.sources.synapses import LOCATION
from ntclass.volumes import open_raw_cached

# The synapse-centred frame is unbounded in practice; a finite box keeps gunpowder's
# ROI arithmetic simple. Multiples of any voxel size we meet.
_FRAME = 10**8 // 2 * 2


class SynapseCubeSource(gp.BatchProvider):
    """Raw around a random synapse of a table, in a frame centred on that synapse.

    A request for ROI r returns raw at (synapse voxel) + r, so downstream augmentations
    work as usual while every sample is centred on a synapse. Synapses may live in one
    large volume or in many CREMI crops: each row names its own raw container. Reads past
    a volume's edge are padded. Volumes up to `cache_bytes` are held in memory. Raw of any
    supported dtype comes out as float32 in [0, 1], mapped by its intensity range; or, with
    `raw_dtype`, as it is stored (a quarter of the bytes for uint8 to move to the device,
    which maps it there).
    """

    def __init__(self, key: gp.ArrayKey, synapses: pd.DataFrame,
                 voxel_size: Sequence[int], intensity_range: Sequence[float] | None = None,
                 cache_bytes: int = 0, raw_dtype: np.dtype | None = None):
        self.key = key
        self.cache_bytes = cache_bytes
        self.intensity_range = intensity_range
        self.raw_dtype = raw_dtype
        self.voxel_size = gp.Coordinate(voxel_size)
        self.containers = synapses["raw_container"].to_numpy()
        self.datasets = synapses["raw_dataset"].to_numpy()
        self.locations = synapses[LOCATION].to_numpy(dtype=np.float64)
        if len(self.locations) == 0:
            raise ValueError("SynapseCubeSource needs at least one synapse")

    def setup(self):
        frame = gp.Roi((-_FRAME,) * 3, (2 * _FRAME,) * 3)
        dtype = np.float32 if self.raw_dtype is None else self.raw_dtype
        self.provides(self.key, gp.ArraySpec(roi=frame, voxel_size=self.voxel_size,
                                             dtype=dtype, interpolatable=True))

    def provide(self, request: gp.BatchRequest) -> gp.Batch:
        # gunpowder seeds numpy's global RNG from the request before calling provide
        i = np.random.randint(len(self.locations))
        volume = open_raw_cached(self.containers[i], self.datasets[i], tuple(self.voxel_size),
                                 load_below=self.cache_bytes)
        centre = volume.to_voxel(self.locations[i][None])[0]
        roi = request[self.key].roi
        begin = centre + np.array(roi.begin) // np.array(self.voxel_size)
        shape = tuple(np.array(roi.shape) // np.array(self.voxel_size))
        data, _ = volume.read(begin, shape)
        if self.raw_dtype is None:
            data = intensity_of(volume.dtype, self.intensity_range, volume.name).to_unit(data)
        spec = self.spec[self.key].copy()
        spec.roi = roi
        batch = gp.Batch()
        batch[self.key] = gp.Array(data, spec)
        return batch


class AddClassLabel(gp.BatchFilter):
    """Adds a non-spatial int64 array holding a fixed class index.

    Must come after DeformAugment/ElasticAugment, which fail on non-spatial arrays.
    """

    def __init__(self, key: gp.ArrayKey, label: int):
        self.key = key
        self.label = label

    def setup(self):
        self.provides(self.key, gp.ArraySpec(nonspatial=True, dtype=np.int64))

    def prepare(self, request):
        return gp.BatchRequest()

    def process(self, batch, request):
        out = gp.Batch()
        if self.key in request:
            out[self.key] = gp.Array(np.array(self.label, dtype=np.int64),
                                     gp.ArraySpec(nonspatial=True, dtype=np.int64))
        return out


def centred_roi(shape: Sequence[int], voxel_size: Sequence[int]) -> gp.Roi:
    """The ROI of a cube of `shape` voxels whose voxel shape//2 is the synapse voxel."""
    shape = np.array(shape)
    vs = np.array(voxel_size)
    return gp.Roi(tuple(-(shape // 2) * vs), tuple(shape * vs))
