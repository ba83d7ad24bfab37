"""Reading the cubes of prediction: asynchronous, parallel, each voxel once.

TensorStore reads zarr, N5 and neuroglancer precomputed volumes: every cube of a block is
requested at once, decompression runs on TensorStore's thread pool, and its chunk cache
turns the shared chunks of neighbouring (spatially sorted) cubes into hits. HDF5 volumes
are read by a thread pool through h5py. Cubes are awaited in order, so inference on the
first batches runs while the later ones are still being read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import tensorstore as ts

from .volumes import RawVolume, open_raw_cached, open_tensorstore


def cpu_count() -> int:
    """Cores this process may use (SLURM and taskset limits included)."""
    return max(1, len(os.sched_getaffinity(0)))


@lru_cache(maxsize=1)
def _context(threads: int, cache_bytes: int) -> ts.Context:
    return ts.Context({"data_copy_concurrency": {"limit": threads},
                       "file_io_concurrency": {"limit": max(4, 2 * threads)},
                       "cache_pool": {"total_bytes_limit": cache_bytes}})


@lru_cache(maxsize=1)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="ntclass-read")


class PendingCube:
    """A cube being read: `result()` waits for it and pads what lies outside the volume."""

    def __init__(self, future, shape: tuple[int, ...], inner: tuple[slice, ...] | None,
                 dtype):
        self.future, self.shape, self.inner, self.dtype = future, shape, inner, dtype

    def result(self) -> np.ndarray:
        data = self.future.result()
        if self.inner is None:
            return data
        out = np.zeros(self.shape, dtype=self.dtype)
        out[self.inner] = data
        return out


class CubeReader:
    """Cubes of `shape` voxels centred on locations (nm) of one raw volume."""

    def __init__(self, volume: RawVolume, shape: Sequence[int], threads: int,
                 cache_bytes: int = 256 << 20):
        self.volume = volume
        self.shape = tuple(int(s) for s in shape)
        self.store = open_tensorstore(volume, _context(threads, cache_bytes))
        self.pool = None if self.store is not None else _pool(threads)
        self.voxels_read = 0

    def submit(self, locations: np.ndarray) -> tuple[list[PendingCube], np.ndarray]:
        """Start reading the cube of every location; returns them and a padded flag each."""
        shape = np.asarray(self.shape)
        begins = self.volume.to_voxel(locations) - shape // 2
        lo = np.maximum(begins, 0)
        hi = np.minimum(begins + shape, self.volume.shape)
        padded = np.any((lo != begins) | (hi != begins + shape), axis=1)
        self.voxels_read += int(np.prod(hi - lo, axis=1).sum())
        pending = []
        for b, a, z, pad in zip(begins, lo, hi, padded):
            index = tuple(slice(int(i), int(j)) for i, j in zip(a, z))
            inner = (tuple(slice(int(i - s), int(j - s)) for i, j, s in zip(a, z, b))
                     if pad else None)
            pending.append(PendingCube(self._read(index), self.shape, inner,
                                       self.volume.dtype))
        return pending, padded

    def _read(self, index: tuple[slice, ...]):
        if self.store is not None:
            return self.store[index].read()
        return self.pool.submit(lambda: np.asarray(self.volume.data[index]))


@lru_cache(maxsize=256)
def cube_reader(container: str, dataset: str, voxel_size: tuple | None,
                shape: tuple[int, ...], threads: int, pid: int) -> CubeReader:
    """One reader per volume, shape and process (readers hold thread pools and caches)."""
    return CubeReader(open_raw_cached(container, dataset, voxel_size), shape, threads)
