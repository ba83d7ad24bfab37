"""Reading the cubes of prediction: each chunk once, in parallel, ahead of the model.

TensorStore reads zarr, N5 and neuroglancer precomputed volumes. The cubes of a block come
in spatial order; `ChunkedReads` reads every storage chunk they touch once, as a whole
(aligned reads decode straight into memory, on TensorStore's thread pool), a window of
cubes ahead of the one being assembled, and keeps a chunk only while a cube of the window
still needs it. Memory is the window's chunks (a fixed budget).
HDF5 volumes are read cube by cube by a thread pool through h5py. Cubes are awaited in
order, so inference on the first batches runs while the later ones are still being read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import tensorstore as ts

from ntclass.volumes import RawVolume, cube_begins, open_raw_cached, open_tensorstore


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


# A cube holds no data when at least this share of its voxels inside the volume are the
# volume's fill value: what every reader returns where chunks are missing (an interrupted
# copy, chunks never written, the unimaged parts of a brain, a store that lost files).
# EM has no such uniform stretches; a synapse at the edge of the imaged tissue keeps a
# few percent of real voxels and is not flagged.
EMPTY_SHARE = 0.99


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

    def holds_no_data(self, cube: np.ndarray, fill) -> bool:
        """Whether the cube's voxels inside the volume are (nearly) all `fill` (see
        EMPTY_SHARE); a cube wholly outside the volume holds none either."""
        inside = cube if self.inner is None else cube[self.inner]
        if inside.size == 0:
            return True
        data = np.count_nonzero(inside) if fill == 0 else np.count_nonzero(inside != fill)
        return data <= (1 - EMPTY_SHARE) * inside.size


class ChunkedReads:
    """The voxel boxes `lo`..`hi` of a sequence of cubes, assembled from whole chunks.

    Reads run ahead of the cube being assembled by as many cubes as `budget` bytes of
    chunks allow; a chunk is kept after use only while a cube within that window needs it
    again (else it is read again when its next cube comes), so memory stays within about
    `budget` whatever the chunk size and the block length (512 MB: with 128 MB the feed
    rate on FAFB-like data was a fifth lower)."""

    def __init__(self, store: ts.TensorStore, lo: np.ndarray, hi: np.ndarray,
                 budget: int = 512 << 20):
        layout = store.chunk_layout
        self.store = store
        self.origin = np.asarray(layout.grid_origin, dtype=np.int64)
        self.chunk = np.asarray(layout.read_chunk.shape, dtype=np.int64)
        self.shape = np.asarray(store.shape, dtype=np.int64)
        self.lo, self.hi = lo, hi
        first = (lo - self.origin) // self.chunk
        last = (hi - 1 - self.origin) // self.chunk
        self.keys = [[(z, y, x) for z in range(a[0], b[0] + 1) for y in range(a[1], b[1] + 1)
                      for x in range(a[2], b[2] + 1)] for a, b in zip(first, last)]
        per_cube = max(1.0, float(np.mean([len(k) for k in self.keys]))) if self.keys else 1
        chunk_bytes = int(np.prod(self.chunk)) * store.dtype.numpy_dtype.itemsize
        self.window = int(np.clip(budget / (chunk_bytes * per_cube), 2, 256))
        self.next_use = self._next_uses()
        self.reading: dict[tuple, ts.Future] = {}
        self.issued = 0
        self.chunks_read = 0

    def _next_uses(self) -> list[dict]:
        """For each cube and chunk, the next cube that needs the chunk (or infinity)."""
        seen: dict[tuple, int] = {}
        nxt: list[dict] = [{} for _ in self.keys]
        for i in range(len(self.keys) - 1, -1, -1):
            for key in self.keys[i]:
                nxt[i][key] = seen.get(key, 1 << 62)
                seen[key] = i
        return nxt

    def _box(self, key) -> tuple[np.ndarray, np.ndarray]:
        begin = self.origin + np.asarray(key) * self.chunk
        return np.maximum(begin, 0), np.minimum(begin + self.chunk, self.shape)

    def _issue(self, upto: int) -> None:
        while self.issued < min(upto, len(self.keys)):
            for key in self.keys[self.issued]:
                if key not in self.reading:
                    a, b = self._box(key)
                    self.reading[key] = self.store[a[0]:b[0], a[1]:b[1], a[2]:b[2]].read()
                    self.chunks_read += 1
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
            if self.next_use[i][key] > i + self.window:
                del self.reading[key]  # read again, if ever, when its next cube comes


class CubeReader:
    """Cubes of `shape` voxels centred on locations (nm) of one raw volume."""

    def __init__(self, volume: RawVolume, shape: Sequence[int], threads: int):
        self.volume = volume
        self.shape = tuple(int(s) for s in shape)
        self.store = open_tensorstore(volume, _context(threads))
        self.pool = None if self.store is not None else _pool(threads)
        self.voxels_read = 0  # voxels of the cubes (what the model sees)

    def submit(self, locations: np.ndarray, crop: str = "ntclass"
               ) -> tuple[list[PendingCube], np.ndarray]:
        """Start reading the cube of every location (in this order), placed by the crop
        convention `crop` (volumes.CROPS); returns them and a padded flag each."""
        shape = np.asarray(self.shape)
        begins = cube_begins(self.volume, locations, shape, crop)
        lo = np.maximum(begins, 0)
        hi = np.minimum(begins + shape, self.volume.shape)
        padded = np.any((lo != begins) | (hi != begins + shape), axis=1)
        self.voxels_read += int(np.prod(hi - lo, axis=1).sum())
        if self.store is not None:
            reads = ChunkedReads(self.store, lo, hi)
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
