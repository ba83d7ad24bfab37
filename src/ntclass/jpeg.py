"""JPEG chunks of neuroglancer precomputed volumes, decoded by nvImageCodec in batches.

TensorStore decodes each chunk on the CPU. With `prediction.jpeg_decoder: nvimgcodec` the
host reads each chunk's encoded bytes once through TensorStore's key-value stores (the
same local and remote stores, credentials and retries as the volume itself), and
nvImageCodec decodes many chunks in one call: on a CUDA device with nvJPEG (and the
hardware JPEG engines where the GPU has them), without a GPU on its CPU-only backend
(libjpeg-turbo), which gives the same pixels as TensorStore's decoder.

A precomputed JPEG chunk is one grey-scale image `x` wide and `z * y` high (edge chunks
clipped to the volume); unsharded it is the file `<scale key>/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>`,
sharded the entry of the chunk's compressed Morton code in the scale's shards.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import tensorstore as ts

from ntclass.errors import NtclassError
from ntclass.precomputed import compressed_morton_code
from ntclass.stores import unreachable
from ntclass.volumes import RawVolume

log = logging.getLogger(__name__)

JPEG_DECODERS = ("auto", "tensorstore", "nvimgcodec")
INSTALL_HINT = ("install nvImageCodec (pip install '.[gpu]', or "
                "pip install nvidia-nvimgcodec-cu12)")


def nvimgcodec_available() -> bool:
    try:
        import nvidia.nvimgcodec  # noqa: F401
    except ImportError:
        return False
    return True


def choose_jpeg_decoder(setting: str, device: str) -> str:
    """The decoder of JPEG chunks, `tensorstore` or `nvimgcodec`, for the configured
    `setting` (JPEG_DECODERS) on `device` (cpu, cuda, cuda:N). `auto`: nvImageCodec on a
    CUDA device where it is installed, else TensorStore."""
    if setting not in JPEG_DECODERS:
        raise NtclassError(f"prediction.jpeg_decoder is '{setting}'; expected one of "
                           f"{', '.join(JPEG_DECODERS)}")
    # auto on the CPU does not import nvImageCodec: without CUDA libraries it prints
    # load errors of its GPU extensions
    if setting == "tensorstore" or (setting == "auto" and not device.startswith("cuda")):
        return "tensorstore"
    available = nvimgcodec_available()
    if setting == "nvimgcodec":
        if not available:
            raise NtclassError(f"prediction.jpeg_decoder is nvimgcodec, but nvImageCodec is "
                               f"not installed; {INSTALL_HINT}, or set it to tensorstore")
        return setting
    if available:
        return "nvimgcodec"
    _say_not_installed()
    return "tensorstore"


@lru_cache(maxsize=1)
def _say_not_installed() -> None:
    """Once a process: every block asks."""
    log.warning("JPEG chunks are decoded by TensorStore on the CPU: nvImageCodec is not "
                "installed (%s)", INSTALL_HINT)


def is_jpeg(volume: RawVolume) -> bool:
    """Whether `volume` is neuroglancer precomputed with JPEG chunks."""
    return volume.kind == "precomputed" and _scale(volume)["encoding"] == "jpeg"


@lru_cache(maxsize=64)
def _scale_of(spec: str, pid: int) -> dict:
    import json

    from ntclass import stores
    store = ts.open(json.loads(spec), read=True, context=stores.context()).result()
    return store.spec().to_json()["scale_metadata"]


def _scale(volume: RawVolume) -> dict:
    """The scale's metadata as TensorStore reads it (chunk_size, size, voxel_offset,
    encoding, sharding, key), x, y, z."""
    import json

    try:
        return _scale_of(json.dumps(volume.spec, sort_keys=True), os.getpid())
    except ValueError as e:
        raise unreachable(volume.name, e) from None


@lru_cache(maxsize=8)
def _decoder(device: str, threads: int, pid: int):
    from nvidia import nvimgcodec

    # nvImageCodec keeps one core for its caller: it uses at most cores - 1 threads (and
    # warns when asked for more)
    threads = max(1, min(threads, len(os.sched_getaffinity(0)) - 1))
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        # every backend: the hardware engines, nvJPEG on the GPU, hybrid; CPU fallback
        return nvimgcodec.Decoder(device_id=index, max_num_cpu_threads=threads)
    return nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY,
                              max_num_cpu_threads=threads,
                              backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)])


class JpegChunks:
    """The JPEG chunks of one precomputed volume (z, y, x from 0, as `open_tensorstore`
    gives it), read as encoded bytes and decoded by nvImageCodec in batches on `device`.

    Decoded chunks are numpy arrays on the CPU and torch tensors on a CUDA device; a
    missing chunk is the fill value (0), as TensorStore reads it.
    """

    def __init__(self, volume: RawVolume, context: ts.Context, device: str, threads: int):
        scale = _scale(volume)
        self.name = volume.name
        self.device = device
        self.threads = max(1, threads)
        self.offset = np.asarray(scale.get("voxel_offset", [0, 0, 0]), dtype=np.int64)  # x,y,z
        self.size = np.asarray(scale["size"], dtype=np.int64)
        self.chunk_xyz = np.asarray(scale["chunk_size"], dtype=np.int64)
        self.grid = tuple(int(g) for g in -(-self.size // self.chunk_xyz))
        self.sharded = scale.get("sharding") is not None
        base = ts.KvStore.Spec(volume.spec["kvstore"]) / f"{scale['key']}/"
        spec = base if not self.sharded else {
            "driver": "neuroglancer_uint64_sharded", "base": base.to_json(),
            "metadata": scale["sharding"]}
        try:
            self.kvstore = ts.KvStore.open(spec, context=context).result()
        except ValueError as e:
            raise unreachable(volume.name, e) from None
        # one decode batch at a time, in order; it runs while earlier chunks are cut
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="ntclass-jpeg")
        self.stream = None
        if device.startswith("cuda"):
            import torch
            self.stream = torch.cuda.Stream(device=device)
        self.batches = 0  # decode calls so far

    def key(self, index: tuple[int, int, int]) -> bytes | str:
        """The store key of chunk `index` (z, y, x in the chunk grid)."""
        xyz = index[::-1]
        if self.sharded:
            return compressed_morton_code(xyz, self.grid).to_bytes(8, "big")
        lo = self.offset + np.asarray(xyz) * self.chunk_xyz
        hi = np.minimum(lo + self.chunk_xyz, self.offset + self.size)
        return "_".join(f"{a}-{b}" for a, b in zip(lo.tolist(), hi.tolist()))

    def shape(self, index: tuple[int, int, int]) -> tuple[int, int, int]:
        """The chunk's shape (z, y, x), clipped to the volume."""
        lo = np.asarray(index[::-1]) * self.chunk_xyz
        return tuple(int(v) for v in (np.minimum(lo + self.chunk_xyz, self.size) - lo)[::-1])

    def submit(self, indices: list[tuple[int, int, int]]) -> Future:
        """Read and decode the chunks `indices` in one batch, in the background; the future
        holds their arrays (z, y, x) in this order."""
        reads = [self.kvstore.read(self.key(i)) for i in indices]  # all in flight at once
        return self.pool.submit(self._decode, indices, reads)

    def _decode(self, indices: list[tuple], reads: list[ts.Future]) -> list:
        from nvidia import nvimgcodec

        encoded, where = [], []
        out: list = [None] * len(indices)
        for n, (index, read) in enumerate(zip(indices, reads)):
            try:
                result = read.result()
            except ValueError as e:
                raise unreachable(self.name, e) from None
            if result.state == "value":
                encoded.append(nvimgcodec.CodeStream(bytes(result.value)))
                where.append(n)
            else:
                out[n] = self._missing(self.shape(index))
        if encoded:
            params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.GRAY)
            decoder = _decoder(self.device, self.threads, os.getpid())
            stream = 0 if self.stream is None else self.stream.cuda_stream
            images = decoder.decode(encoded, params=params, cuda_stream=stream)
            self.batches += 1
            if self.stream is not None:
                self.stream.synchronize()  # the chunks are complete before anyone cuts them
            for n, image in zip(where, images):
                out[n] = self._chunk(image, indices[n])
        return out

    def _chunk(self, image, index: tuple) -> object:
        """A decoded image as the chunk (z, y, x); a damaged one stops the read."""
        z, y, x = self.shape(index)
        if image is None or tuple(image.shape) != (z * y, x, 1):
            got = "could not be decoded" if image is None else f"is {tuple(image.shape)}"
            raise NtclassError(
                f"cannot read raw '{self.name}': JPEG chunk {self._shown(index)} {got}; "
                f"expected a grey-scale image of {z * y} x {x} pixels (the chunk is damaged)")
        if self.stream is None:
            return np.asarray(image.cpu()).reshape(z, y, x)
        import torch
        return torch.from_dlpack(image).reshape(z, y, x)

    def _missing(self, shape: tuple[int, int, int]) -> object:
        if self.stream is None:
            return np.zeros(shape, dtype=np.uint8)
        import torch
        return torch.zeros(shape, dtype=torch.uint8, device=self.device)

    def _shown(self, index: tuple) -> str:
        key = self.key(index)
        return (f"{int.from_bytes(key, 'big')} (sharded)" if isinstance(key, bytes)
                else f"'{key}'")


class DecodedChunk:
    """One chunk of a decode batch, with a TensorStore future's `result()`. Takes its
    array out of the batch, so that memory goes with the chunks the cache drops."""

    def __init__(self, batch: Future, position: int):
        self.batch, self.position, self.value = batch, position, None

    def result(self):
        if self.value is None:
            arrays = self.batch.result()
            self.value, arrays[self.position] = arrays[self.position], None
            self.batch = None
        return self.value
