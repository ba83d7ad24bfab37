"""Reading the cubes of prediction: each chunk once, in parallel, ahead of the model.

TensorStore reads zarr, N5 and neuroglancer precomputed volumes. The cubes of a block come
in spatial order; `ChunkedReads` reads every storage chunk they touch once, as a whole
(aligned reads decode straight into memory, on TensorStore's thread pool), a window of
cubes ahead of the one being assembled, and drops each chunk when its last cube has been
copied out. Memory is the window's chunks, and no chunk is decompressed twice in a block.
HDF5 volumes are read cube by cube by a thread pool through h5py. Cubes are awaited in
order, so inference on the first batches runs while the later ones are still being read.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import tensorstore as ts

from .volumes import RawVolume, open_raw_cached, open_tensorstore


def cpu_count() -> int:
    """Cores this process may use (SLURM and taskset limits included)."""
    return max(1, len(os.sched_getaffinity(0)))


@lru_cache(maxsize=1)
def _context(threads: int) -> ts.Context:
    return ts.Context({"data_copy_concurrency": {"limit": threads},
                       "file_io_concurrency": {"limit": max(4, 2 * threads)},
                       "cache_pool": {"total_bytes_limit": 0}})  # chunks are read once


@lru_cache(maxsize=1)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="ntclass-read")


class PendingCube:
    """A cube being read: `result()` waits for it and pads what lies outside the volume.
    `read(out)` writes the voxels inside the volume into `out`."""

    def __init__(self, read: Callable[[np.ndarray], None], shape: tuple[int, ...],
                 inner: tuple[slice, ...] | None, dtype):
        self.read, self.shape, self.inner, self.dtype = read, shape, inner, dtype

    def result(self, out: np.ndarray | None = None) -> np.ndarray:
        """The cube, written into `out` when given (a slot of a batch: no extra copy)."""
        if out is None:
            out = np.empty(self.shape, dtype=self.dtype)
        if self.inner is None:
            self.read(out)
        else:
            out[...] = 0
            self.read(out[self.inner])
        return out


class ChunkedReads:
    """The voxel boxes `lo`..`hi` of a sequence of cubes, assembled from whole chunks."""

    def __init__(self, store: ts.TensorStore, lo: np.ndarray, hi: np.ndarray, window: int):
        layout = store.chunk_layout
        self.store = store
        self.origin = np.asarray(layout.grid_origin, dtype=np.int64)
        self.chunk = np.asarray(layout.read_chunk.shape, dtype=np.int64)
        self.shape = np.asarray(store.shape, dtype=np.int64)
        self.lo, self.hi, self.window = lo, hi, window
        first = (lo - self.origin) // self.chunk
        last = (hi - 1 - self.origin) // self.chunk
        self.keys = [[(z, y, x) for z in range(a[0], b[0] + 1) for y in range(a[1], b[1] + 1)
                      for x in range(a[2], b[2] + 1)] for a, b in zip(first, last)]
        self.uses = Counter(k for keys in self.keys for k in keys)
        self.reading: dict[tuple, ts.Future] = {}
        self.issued = 0

    def chunk_voxels(self) -> int:
        """Voxels of all distinct chunks the cubes touch (what is decompressed)."""
        return sum(int(np.prod(self._box(k)[1] - self._box(k)[0])) for k in self.uses)

    def _box(self, key) -> tuple[np.ndarray, np.ndarray]:
        begin = self.origin + np.asarray(key) * self.chunk
        return np.maximum(begin, 0), np.minimum(begin + self.chunk, self.shape)

    def _issue(self, upto: int) -> None:
        while self.issued < min(upto, len(self.keys)):
            for key in self.keys[self.issued]:
                if key not in self.reading:
                    a, b = self._box(key)
                    self.reading[key] = self.store[a[0]:b[0], a[1]:b[1], a[2]:b[2]].read()
            self.issued += 1

    def cube(self, i: int, out: np.ndarray) -> None:
        """Write cube `i` (its box inside the volume) into `out`."""
        self._issue(i + 1 + self.window)
        lo, hi = self.lo[i], self.hi[i]
        for key in self.keys[i]:
            a, _ = self._box(key)
            data = self.reading[key].result()
            s0 = np.maximum(lo, a)
            s1 = np.minimum(hi, a + data.shape)
            out[tuple(slice(u - v, w - v) for u, v, w in zip(s0, lo, s1))] = data[
                tuple(slice(u - v, w - v) for u, v, w in zip(s0, a, s1))]
            self.uses[key] -= 1
            if not self.uses[key]:
                del self.reading[key]


class CubeReader:
    """Cubes of `shape` voxels centred on locations (nm) of one raw volume."""

    def __init__(self, volume: RawVolume, shape: Sequence[int], threads: int,
                 window: int = 64):
        self.volume = volume
        self.shape = tuple(int(s) for s in shape)
        self.store = open_tensorstore(volume, _context(threads))
        self.pool = None if self.store is not None else _pool(threads)
        self.window = window
        self.voxels_read = 0  # voxels of the cubes (what the model sees)
        self.chunk_voxels = 0  # voxels decompressed (TensorStore volumes)

    def submit(self, locations: np.ndarray) -> tuple[list[PendingCube], np.ndarray]:
        """Start reading the cube of every location (in this order); returns them and a
        padded flag each."""
        shape = np.asarray(self.shape)
        begins = self.volume.to_voxel(locations) - shape // 2
        lo = np.maximum(begins, 0)
        hi = np.minimum(begins + shape, self.volume.shape)
        padded = np.any((lo != begins) | (hi != begins + shape), axis=1)
        self.voxels_read += int(np.prod(hi - lo, axis=1).sum())
        if self.store is not None:
            reads = ChunkedReads(self.store, lo, hi, self.window)
            self.chunk_voxels += reads.chunk_voxels()
            fetch = [lambda out, i=i: reads.cube(i, out) for i in range(len(lo))]
        else:
            futures = [self.pool.submit(self._read_h5, a, b) for a, b in zip(lo, hi)]
            fetch = [lambda out, f=f: np.copyto(out, f.result()) for f in futures]
        pending = []
        for read, b, a, z, pad in zip(fetch, begins, lo, hi, padded):
            inner = (tuple(slice(int(i - s), int(j - s)) for i, j, s in zip(a, z, b))
                     if pad else None)
            pending.append(PendingCube(read, self.shape, inner, self.volume.dtype))
        return pending, padded

    def _read_h5(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return np.asarray(self.volume.data[tuple(slice(int(a), int(b))
                                                 for a, b in zip(lo, hi))])


@lru_cache(maxsize=256)
def cube_reader(container: str, dataset: str, voxel_size: tuple | None,
                shape: tuple[int, ...], threads: int, pid: int) -> CubeReader:
    """One reader per volume, shape and process (readers hold thread pools)."""
    return CubeReader(open_raw_cached(container, dataset, voxel_size), shape, threads)
