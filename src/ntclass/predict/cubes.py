"""Reading the cubes of prediction: each chunk once, in parallel, ahead of the model.

TensorStore reads zarr, N5 and neuroglancer precomputed volumes, local or remote. The
cubes of a block come in spatial order; `ChunkedReads` assembles them from whole storage
chunks (aligned reads decode straight into memory, on TensorStore's thread pool), read a
few cubes ahead of the one being assembled. A process's `ChunkCache` keeps decoded chunks
across blocks within a fixed budget, dropping first the chunk needed farthest ahead: on
spatially sorted synapses each chunk is decoded about once.
JPEG precomputed volumes can instead be decoded by nvImageCodec (`jpeg`): the chunks of
many cubes in one batched call, on a GPU or on its CPU-only backend; on a GPU the cubes
are then cut from the decoded chunks on the device.
HDF5 volumes are read cube by cube by a thread pool through h5py. Cubes are awaited in
order, so inference on the first batches runs while the later ones are still being read.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import tensorstore as ts

from ntclass import stores
from ntclass.predict.jpeg import DecodedChunk, JpegChunks, is_jpeg
from ntclass.volumes import RawVolume, cube_begins, open_raw_cached, open_tensorstore


def cpu_count() -> int:
    """Cores this process may use (SLURM and taskset limits included)."""
    return max(1, len(os.sched_getaffinity(0)))


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
    `read(out)` writes the voxels inside the volume into `out`. `device`: where the cube
    is assembled (cpu, or a CUDA device where chunks were decoded there): `out` is a numpy
    array on the CPU, a torch tensor on the device."""

    def __init__(self, read: Callable[[np.ndarray], None], shape: tuple[int, ...],
                 inner: tuple[slice, ...] | None, dtype, device: str = "cpu"):
        self.read, self.shape, self.inner, self.dtype = read, shape, inner, dtype
        self.device = device

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

    def inside_size(self) -> int:
        """Voxels of the cube inside the volume."""
        if self.inner is None:
            return int(np.prod(self.shape))
        return int(np.prod([max(0, s.stop - s.start) for s in self.inner]))


def hold_no_data(cubes: Sequence[PendingCube], batch, fill) -> np.ndarray:
    """`PendingCube.holds_no_data` of each cube of a batch (`batch[i]` is cube i, as
    `result` wrote it: zeros outside the volume); on a device, one count for the batch
    (a sync per cube would stall it)."""
    if isinstance(batch, np.ndarray):
        return np.array([c.holds_no_data(b, fill) for c, b in zip(cubes, batch)], dtype=bool)
    counts = (batch[:len(cubes)] != fill).flatten(1).sum(1).cpu().numpy()
    inside = np.array([c.inside_size() for c in cubes], dtype=np.int64)
    if fill != 0:  # the zeros outside the volume differ from the fill value: not data
        counts = counts - (int(np.prod(cubes[0].shape)) - inside)
    return (inside == 0) | (counts <= (1 - EMPTY_SHARE) * inside)


class ChunkCache:
    """The decoded chunks of one store that a process keeps, across blocks.

    At most `budget` bytes of chunks are kept or being read. When that is full, the chunk
    whose next use lies farthest ahead goes first (Belady's rule: the order of the cubes
    is known, the block's and the rows after it), so that on spatially sorted synapses
    each chunk is decoded about once, and memory does not grow with the shard.
    """

    def __init__(self, store: ts.TensorStore, budget: int = 512 << 20,
                 jpeg: JpegChunks | None = None):
        layout = store.chunk_layout
        self.jpeg = jpeg  # None: TensorStore decodes each chunk
        self.store = store
        self.origin = np.asarray(layout.grid_origin, dtype=np.int64)
        self.chunk = np.asarray(layout.read_chunk.shape, dtype=np.int64)
        self.shape = np.asarray(store.shape, dtype=np.int64)
        self.origin_list, self.chunk_list = self.origin.tolist(), self.chunk.tolist()
        self.chunk_bytes = int(np.prod(self.chunk)) * store.dtype.numpy_dtype.itemsize
        self.capacity = max(64, budget // self.chunk_bytes)
        self.chunks: dict[tuple, ts.Future] = {}
        self.next_use: dict[tuple, int] = {}  # the cube of the current block that needs it
        self._farthest: list[tuple[int, tuple]] = []  # a heap of (-next use, key)
        self.decoded = 0  # chunks read so far
        self.decoded_voxels = 0

    def keys(self, lo: np.ndarray, hi: np.ndarray) -> list[list[tuple]]:
        """The chunks each box `lo`..`hi` touches."""
        first = (lo - self.origin) // self.chunk
        last = (hi - 1 - self.origin) // self.chunk
        return [[(z, y, x) for z in range(a[0], b[0] + 1) for y in range(a[1], b[1] + 1)
                 for x in range(a[2], b[2] + 1)] for a, b in zip(first, last)]

    def box(self, key: tuple) -> tuple[np.ndarray, np.ndarray]:
        begin = self.origin + np.asarray(key) * self.chunk
        return np.maximum(begin, 0), np.minimum(begin + self.chunk, self.shape)

    def start_block(self, first_use: dict[tuple, int]) -> None:
        """A new sequence of cubes: the chunks kept are ranked by their first use in it;
        those it never needs are dropped."""
        for key in [k for k in self.chunks if k not in first_use]:
            del self.chunks[key], self.next_use[key]
        self.next_use = {k: first_use[k] for k in self.chunks}
        self._farthest = [(-n, k) for k, n in self.next_use.items()]
        heapq.heapify(self._farthest)

    def get(self, key: tuple, next_use: int) -> ts.Future:
        """The chunk (read now if it is not kept), to be kept for its next use."""
        if key not in self.chunks:
            a, b = self.box(key)
            self.chunks[key] = self.store[a[0]:b[0], a[1]:b[1], a[2]:b[2]].read()
            self.decoded += 1
            self.decoded_voxels += int(np.prod(b - a))
        self.set_next_use(key, next_use)
        return self.chunks[key]

    def get_many(self, wanted: list[tuple[tuple, int]]) -> None:
        """Read the chunks `wanted` (key, next use) that are not kept: with nvImageCodec
        all of them in one decode batch, else each by TensorStore."""
        if self.jpeg is None:
            for key, next_use in wanted:
                self.get(key, next_use)
            return
        new = [k for k, _ in wanted if k not in self.chunks]
        if new:
            batch = self.jpeg.submit(new)
            for n, key in enumerate(new):
                self.chunks[key] = DecodedChunk(batch, n)
                a, b = self.box(key)
                self.decoded += 1
                self.decoded_voxels += int(np.prod(b - a))
        for key, next_use in wanted:
            self.set_next_use(key, next_use)

    def set_next_use(self, key: tuple, next_use: int) -> None:
        self.next_use[key] = next_use
        heapq.heappush(self._farthest, (-next_use, key))

    def evict(self, needed_until: int) -> None:
        """Drop the chunks used farthest ahead until the budget holds, never one that a
        cube up to `needed_until` needs."""
        while len(self.chunks) > self.capacity and self._farthest:
            negative, key = self._farthest[0]
            if self.next_use.get(key) != -negative:
                heapq.heappop(self._farthest)  # an outdated entry
                continue
            if -negative <= needed_until:
                return  # over budget for a while: everything kept is needed now
            heapq.heappop(self._farthest)
            del self.chunks[key], self.next_use[key]


NEVER = 1 << 62


class ChunkedReads:
    """One block's cubes (boxes `lo`..`hi`, in order) assembled from whole chunks of a
    ChunkCache. Reads run `ahead` cubes before the cube being assembled, on TensorStore's
    thread pool. `later` are the boxes of the rows after the block: chunks they need are
    kept for them. `window`: when reads fall behind `ahead`, the chunks of this many more
    cubes are issued at once (one decode batch with nvImageCodec; 0 for TensorStore,
    which reads chunk by chunk)."""

    def __init__(self, cache: ChunkCache, lo: np.ndarray, hi: np.ndarray,
                 later: tuple[np.ndarray, np.ndarray] | None = None, ahead: int = 32,
                 window: int = 0):
        self.cache = cache
        self.lo, self.hi = lo, hi
        self.n = len(lo)
        keys = cache.keys(lo, hi)
        if later is not None and len(later[0]):
            keys += cache.keys(*later)
        self.keys = keys
        self.next_use = self._next_uses()
        self.ahead, self.window = ahead, window
        self.issued = 0
        cache.start_block({k: i for i in range(len(keys) - 1, -1, -1) for k in keys[i]})

    def _next_uses(self) -> list[list[int]]:
        """For each cube and each chunk it touches, the next cube that needs the chunk."""
        seen: dict[tuple, int] = {}
        nxt: list[list[int]] = [[] for _ in self.keys]
        for i in range(len(self.keys) - 1, -1, -1):
            nxt[i] = [seen.get(key, NEVER) for key in self.keys[i]]
            for key in self.keys[i]:
                seen[key] = i
        return nxt

    def _issue(self, upto: int) -> None:
        cache = self.cache
        wanted: dict[tuple, int] = {}  # each chunk with its first use
        while self.issued < min(upto, self.n):
            for key in self.keys[self.issued]:
                if key not in cache.chunks:
                    wanted.setdefault(key, self.issued)
            self.issued += 1
        cache.get_many(list(wanted.items()))
        cache.evict(needed_until=upto)

    def cube(self, i: int, out: np.ndarray) -> None:
        """Write cube `i` (its box inside the volume) into `out`."""
        if self.issued < min(i + 1 + self.ahead, self.n):
            self._issue(i + 1 + self.ahead + self.window)
        # plain ints: this loop runs about 15 times a cube, numpy's small-array calls
        # cost more than the copies
        lo, hi = self.lo[i].tolist(), self.hi[i].tolist()
        chunks, origin, size = self.cache.chunks, self.cache.origin_list, self.cache.chunk_list
        for key, later in zip(self.keys[i], self.next_use[i]):
            data = chunks[key].result()
            self.cache.set_next_use(key, later)
            a = [o + k * c for o, k, c in zip(origin, key, size)]
            a = [max(v, 0) for v in a]
            s0 = [max(u, v) for u, v in zip(lo, a)]
            s1 = [min(u, v + n) for u, v, n in zip(hi, a, data.shape)]
            out[s0[0] - lo[0]:s1[0] - lo[0], s0[1] - lo[1]:s1[1] - lo[1],
                s0[2] - lo[2]:s1[2] - lo[2]] = data[
                s0[0] - a[0]:s1[0] - a[0], s0[1] - a[1]:s1[1] - a[1], s0[2] - a[2]:s1[2] - a[2]]
        # never a chunk that an issued cube needs (a decode batch reaches past `ahead`)
        self.cache.evict(needed_until=max(i + self.ahead, self.issued - 1))


# nvImageCodec: the chunks of this many cubes are decoded in one call, issued when fewer
# than JPEG_AHEAD cubes are left decoded or decoding ahead of the one being assembled, so
# that the next batch decodes while this one is cut and classified. (Larger batches
# help the GPU's decoders; the whole block in one call would leave the model waiting.)
JPEG_WINDOW = 256
JPEG_AHEAD = 128
# chunks kept on a GPU: its memory is large, and a FAFB block of 1024 cubes touches
# about 2,000 64^3 chunks (0.5 GB)
DEVICE_CACHE_BYTES = 4 << 30


class CubeReader:
    """Cubes of `shape` voxels centred on locations (nm) of one raw volume.

    `jpeg_decoder` (`tensorstore` or `nvimgcodec`, as `jpeg.choose_jpeg_decoder` picks)
    decodes the chunks of a JPEG precomputed volume; with nvimgcodec on a CUDA `device`
    cubes are assembled there. Other volumes are read by TensorStore (h5py for HDF5)."""

    def __init__(self, volume: RawVolume, shape: Sequence[int], threads: int,
                 context: ts.Context | None = None, jpeg_decoder: str = "tensorstore",
                 device: str = "cpu"):
        self.volume = volume
        self.shape = tuple(int(s) for s in shape)
        context = context or stores.context(threads, 0)
        # by default no TensorStore cache: the ChunkCache keeps the chunks it needs
        self.store = open_tensorstore(volume, context)
        self.pool = None if self.store is not None else _pool(threads)
        self.jpeg = (JpegChunks(volume, context, device, threads)
                     if jpeg_decoder == "nvimgcodec" and is_jpeg(volume) else None)
        self.device = device if self.jpeg is not None else "cpu"
        budget = DEVICE_CACHE_BYTES if self.device.startswith("cuda") else 512 << 20
        self.cache = (ChunkCache(self.store, budget, self.jpeg) if self.store is not None
                      else None)
        self.voxels_read = 0  # voxels of the cubes (what the model sees)

    def submit(self, locations: np.ndarray, crop: str = "ntclass",
               later: np.ndarray | None = None) -> tuple[list[PendingCube], np.ndarray]:
        """Start reading the cube of every location (in this order), placed by the crop
        convention `crop` (volumes.CROPS); returns them and a padded flag each. `later`:
        the locations that come next (the next blocks), whose chunks are worth keeping."""
        lo, hi, begins, padded = self._boxes(locations, crop)
        self.voxels_read += int(np.prod(hi - lo, axis=1).sum())
        if self.store is not None:
            ahead = self._boxes(later, crop)[:2] if later is not None else None
            reads = (ChunkedReads(self.cache, lo, hi, ahead) if self.jpeg is None else
                     ChunkedReads(self.cache, lo, hi, ahead, JPEG_AHEAD, JPEG_WINDOW))
            fetch = [lambda out, i=i: reads.cube(i, out) for i in range(len(lo))]
        else:
            futures = [self.pool.submit(self._read_h5, a, b) for a, b in zip(lo, hi)]
            fetch = [lambda out, f=f: np.copyto(out, f.result()) for f in futures]
        pending = []
        for read, b, a, z, pad in zip(fetch, begins, lo, hi, padded):
            inner = (tuple(slice(int(i - s), int(j - s)) for i, j, s in zip(a, z, b))
                     if pad else None)
            pending.append(PendingCube(read, self.shape, inner, self.volume.dtype,
                                       self.device))
        return pending, padded

    def _boxes(self, locations: np.ndarray, crop: str) -> tuple[np.ndarray, ...]:
        """Each cube's box inside the volume (lo, hi), its first voxel and whether it
        reaches outside."""
        shape = np.asarray(self.shape)
        begins = cube_begins(self.volume, locations, shape, crop)
        lo = np.maximum(begins, 0)
        hi = np.minimum(begins + shape, self.volume.shape)
        padded = np.any((lo != begins) | (hi != begins + shape), axis=1)
        return lo, hi, begins, padded

    def _read_h5(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return np.asarray(self.volume.data[tuple(slice(int(a), int(b))
                                                 for a, b in zip(lo, hi))])


@lru_cache(maxsize=256)
def cube_reader(container: str, dataset: str, voxel_size: tuple | None,
                shape: tuple[int, ...], threads: int, pid: int,
                jpeg_decoder: str = "tensorstore", device: str = "cpu") -> CubeReader:
    """One reader per volume, shape, decoder and process (readers hold thread pools)."""
    return CubeReader(open_raw_cached(container, dataset, voxel_size), shape, threads,
                      jpeg_decoder=jpeg_decoder, device=device)
