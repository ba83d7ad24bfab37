"""What the raw of each cube is now, for the prediction cache: a stamp per synapse.

A cached prediction holds while the raw its cube was read from is unchanged. A synapse's
stamp (a uint64) is a digest of
  the volume's metadata: the store's resolved spec (shape, dtype, chunking, compression,
  fill value), its voxel size and offset; and
  the stamps of the storage objects its cube touches: the chunk files (zarr, N5,
  unsharded precomputed), the shard files (sharded zarr v3 and precomputed), the file
  (HDF5, CREMI).
An object's stamp is its size and modification time (local files), its ETag, else its
Last-Modified and length (HTTP), its generation (S3, GCS); a missing object is `absent`.
A rerun after the raw changed thus predicts again exactly the synapses whose cubes touch
a changed object (or all of a volume whose metadata changed), and no others.
Stamps are taken before the cubes are read: raw that changes while a job reads it leaves
stamps that no longer match on the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorstore as ts

from ntclass import stores
from ntclass.errors import NtclassError
from ntclass.io import atomic_path
from ntclass.precomputed import compressed_morton_code
from ntclass.volumes import RawVolume, cube_begins, open_raw_cached, open_tensorstore

log = logging.getLogger(__name__)

STAMP = "raw_stamp"  # the column of the stamps in a stamped shard, the todo and the cache
# a stamp of an object whose store tells nothing that changes with its content
UNKNOWN = "unknown"
_HTTP_THREADS = 16


def _hash64(text: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))


def _mix(values: np.ndarray, salt: np.uint64) -> np.ndarray:
    """splitmix64 of values + salt: a sum of chunk hashes becomes a stamp."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + salt
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


# ------------------------------------------------------------------ storage layouts

@dataclass(frozen=True)
class StorageLayout:
    """Where a volume's voxels are stored: a grid of `chunk` voxels (z, y, x, from the
    volume's first voxel), and the key (inside the store's kvstore) of the object that
    holds grid cell (z, y, x)."""

    chunk: tuple[int, int, int]
    key: Callable[[tuple[int, int, int]], str]


def storage_layout(kind: str, spec: dict) -> StorageLayout:
    """The layout of a TensorStore volume of `kind` (volumes.RawVolume.kind) from its
    resolved spec."""
    if kind == "zarr":
        meta = spec["metadata"]
        sep = meta.get("dimension_separator") or "."
        return StorageLayout(tuple(meta["chunks"]), lambda i: sep.join(map(str, i)))
    if kind == "zarr3":
        meta = spec["metadata"]
        chunk = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])  # shards, if any
        encoding = meta.get("chunk_key_encoding") or {"name": "default"}
        if encoding["name"] == "v2":
            sep = encoding.get("configuration", {}).get("separator", ".")
            return StorageLayout(chunk, lambda i: sep.join(map(str, i)))
        sep = encoding.get("configuration", {}).get("separator", "/")
        return StorageLayout(chunk, lambda i: sep.join(["c", *map(str, i)]))
    if kind == "n5":  # blocks are x, y, z
        chunk = tuple(spec["metadata"]["blockSize"][::-1])
        return StorageLayout(chunk, lambda i: "/".join(map(str, i[::-1])))
    if kind == "precomputed":
        return _precomputed_layout(spec["scale_metadata"])
    raise NtclassError(f"no storage layout for raw of kind '{kind}'")


def _precomputed_layout(scale: dict) -> StorageLayout:
    chunk_xyz = scale["chunk_size"]
    size_xyz, offset_xyz = scale["size"], scale.get("voxel_offset", [0, 0, 0])
    sharding = scale.get("sharding")
    if not sharding:
        def key(i):
            parts = []
            for d, c in zip(i[::-1], range(3)):
                lo = offset_xyz[c] + d * chunk_xyz[c]
                hi = min(lo + chunk_xyz[c], offset_xyz[c] + size_xyz[c])
                parts.append(f"{lo}-{hi}")
            return f"{scale['key']}/{'_'.join(parts)}"
        return StorageLayout(tuple(chunk_xyz[::-1]), key)
    grid_xyz = [-(-s // c) for s, c in zip(size_xyz, chunk_xyz)]
    width = -(-int(sharding["shard_bits"]) // 4)

    def shard_key(i):
        chunk_id = compressed_morton_code(i[::-1], grid_xyz)
        shard = shard_number(chunk_id, sharding)
        return f"{scale['key']}/{format(shard, 'x').zfill(width)}.shard"
    return StorageLayout(tuple(chunk_xyz[::-1]), shard_key)


def shard_number(chunk_id: int, sharding: dict) -> int:
    """The shard file that holds a chunk id (neuroglancer_uint64_sharded_v1)."""
    shifted = chunk_id >> int(sharding.get("preshift_bits", 0))
    if sharding["hash"] == "identity":
        hashed = shifted
    elif sharding["hash"] == "murmurhash3_x86_128":
        hashed = murmurhash3_x86_128_low64(shifted.to_bytes(8, "little"))
    else:
        raise NtclassError(f"precomputed sharding hash '{sharding['hash']}' is unknown")
    return (hashed >> int(sharding["minishard_bits"])) & ((1 << int(sharding["shard_bits"])) - 1)


def murmurhash3_x86_128_low64(data: bytes, seed: int = 0) -> int:
    """The low 64 bits of MurmurHash3_x86_128 (Austin Appleby's reference), as
    neuroglancer's sharded format hashes chunk ids."""
    mask = 0xFFFFFFFF

    def rotl(x, r):
        return ((x << r) | (x >> (32 - r))) & mask

    def fmix(h):
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & mask
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & mask
        return h ^ (h >> 16)

    c1, c2, c3, c4 = 0x239B961B, 0xAB0E9789, 0x38B34AE5, 0xA1E38B93
    h1 = h2 = h3 = h4 = seed
    n_blocks = len(data) // 16
    for b in range(n_blocks):
        k1, k2, k3, k4 = (int.from_bytes(data[16 * b + 4 * j:16 * b + 4 * j + 4], "little")
                          for j in range(4))
        h1 ^= (rotl((k1 * c1) & mask, 15) * c2) & mask
        h1 = (rotl(h1, 19) + h2) & mask
        h1 = (h1 * 5 + 0x561CCD1B) & mask
        h2 ^= (rotl((k2 * c2) & mask, 16) * c3) & mask
        h2 = (rotl(h2, 17) + h3) & mask
        h2 = (h2 * 5 + 0x0BCAA747) & mask
        h3 ^= (rotl((k3 * c3) & mask, 17) * c4) & mask
        h3 = (rotl(h3, 15) + h4) & mask
        h3 = (h3 * 5 + 0x96CD1C35) & mask
        h4 ^= (rotl((k4 * c4) & mask, 18) * c1) & mask
        h4 = (rotl(h4, 13) + h1) & mask
        h4 = (h4 * 5 + 0x32AC3B17) & mask
    tail = data[16 * n_blocks:]
    k = [0, 0, 0, 0]
    for j, byte in enumerate(tail):
        k[j // 4] |= byte << (8 * (j % 4))
    consts = [(c1, 15, c2), (c2, 16, c3), (c3, 17, c4), (c4, 18, c1)]
    hs = [h1, h2, h3, h4]
    for j in range(4):
        if len(tail) > 4 * j:
            a, r, b = consts[j]
            hs[j] ^= (rotl((k[j] * a) & mask, r) * b) & mask
    h1, h2, h3, h4 = (h ^ len(data) for h in hs)
    h1 = (h1 + h2 + h3 + h4) & mask
    h2, h3, h4 = (h2 + h1) & mask, (h3 + h1) & mask, (h4 + h1) & mask
    h1, h2, h3, h4 = fmix(h1), fmix(h2), fmix(h3), fmix(h4)
    h1 = (h1 + h2 + h3 + h4) & mask
    h2 = (h2 + h1) & mask
    return h1 | (h2 << 32)


# ------------------------------------------------------------------- object stamps

class LocalStamps:
    """Stamps of files under a local folder: size and modification time."""

    def __init__(self, folder: str):
        self.folder = folder

    def __call__(self, keys: Sequence[str]) -> list[str]:
        return [_file_stamp(os.path.join(self.folder, key)) for key in keys]


def _file_stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "absent"
    return f"{st.st_size}:{st.st_mtime_ns}"


class HttpStamps:
    """Stamps of objects under an HTTP folder URL, from HEAD requests: the ETag, else the
    Last-Modified date and the length (TensorStore's http store uses ETags only)."""

    def __init__(self, folder_url: str, shown: str):
        self.folder = urlsplit(folder_url)
        self.shown = shown

    def __call__(self, keys: Sequence[str]) -> list[str]:
        with ThreadPoolExecutor(_HTTP_THREADS, thread_name_prefix="ntclass-stamp") as pool:
            return list(pool.map(self._stamp, keys))

    def _stamp(self, key: str) -> str:
        url = urlunsplit(self.folder._replace(path=self.folder.path + key))
        delay = 0.25
        for attempt in range(max(1, stores.retries())):
            try:
                request = urllib.request.Request(url, method="HEAD")
                with urllib.request.urlopen(request, timeout=60) as answer:
                    headers = answer.headers
                etag, modified = headers.get("ETag"), headers.get("Last-Modified")
                if etag:
                    return f"etag:{etag}"
                if modified:
                    return f"{headers.get('Content-Length')}:{modified}"
                return UNKNOWN
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    return "absent"
                if e.code < 500 or attempt == stores.retries() - 1:
                    raise NtclassError(
                        f"cannot read raw '{self.shown}': the server answered {e.code} to a "
                        f"HEAD request for '{stores.redact_url(url)}'") from None
            except (urllib.error.URLError, OSError) as e:
                if attempt == stores.retries() - 1:
                    raise NtclassError(
                        f"cannot read raw '{self.shown}': the server failed "
                        f"{stores.retries()} tries with backoff ({e}); check the address and "
                        f"the network, or raise {stores.RETRIES_ENV}") from None
            time.sleep(delay)
            delay = min(16.0, 2 * delay)
        return UNKNOWN


class KvStoreStamps:
    """Stamps of objects in a TensorStore kvstore (S3, GCS): their storage generation,
    read with an empty byte range (a HEAD request)."""

    def __init__(self, kvstore: dict | str, shown: str):
        self.store = ts.KvStore.open(kvstore, context=stores.context()).result()
        self.shown = shown

    def __call__(self, keys: Sequence[str]) -> list[str]:
        futures = [self.store.read(key, byte_range=slice(0, 0)) for key in keys]
        out = []
        for future in futures:
            try:
                result = future.result()
            except ValueError as e:
                raise stores.unreachable(self.shown, e) from None
            generation = bytes(result.stamp.generation)
            out.append("absent" if result.state == "missing" else
                       generation.hex() if len(generation) > 1 else UNKNOWN)
        return out


def object_stamps(kvstore: dict | str, shown: str) -> Callable[[Sequence[str]], list[str]]:
    """The stamper of the objects of a volume's kvstore (volumes.RawVolume.spec)."""
    if isinstance(kvstore, dict) and kvstore.get("driver") == "file":
        return LocalStamps(kvstore["path"])
    if isinstance(kvstore, str) and urlsplit(kvstore).scheme in ("http", "https"):
        return HttpStamps(kvstore, shown)
    return KvStoreStamps(kvstore, shown)


# --------------------------------------------------------------------- volume stamps

class VolumeStamps:
    """The stamps of the cubes of one raw volume. Object stamps are taken once each."""

    def __init__(self, volume: RawVolume):
        self.volume = volume
        self.known: dict[str, np.uint64] = {}
        self.unknown = False  # some object's store tells nothing that changes with it
        if volume.spec is None:  # HDF5: the file as a whole
            self.layout = None
            path = volume.data.file.filename
            self.meta = _hash64(json.dumps([_hdf5_metadata(volume), _file_stamp(path)]))
            return
        store = open_tensorstore(volume)
        spec = store.spec().to_json()
        self.layout = storage_layout(volume.kind, spec)
        self.stamper = object_stamps(volume.spec["kvstore"], volume.name)
        self.meta = _hash64(json.dumps([spec, volume.voxel_size, volume.offset],
                                       sort_keys=True))

    def of(self, locations: np.ndarray, shape: Sequence[int], crop: str) -> np.ndarray:
        """The stamp of the cube of `shape` placed by `crop` around each location."""
        n = len(locations)
        if self.layout is None:
            return _mix(np.zeros(n, np.uint64), self.meta)
        rows, cells = self._touched(locations, shape, crop)
        total = np.zeros(n, np.uint64)
        if len(rows):
            unique, inverse = np.unique(cells, axis=0, return_inverse=True)
            hashes = self._object_hashes([tuple(int(v) for v in c) for c in unique])
            with np.errstate(over="ignore"):
                np.add.at(total, rows, hashes[inverse.reshape(-1)])
        return _mix(total, self.meta)

    def _touched(self, locations, shape, crop) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (row, grid cell) of the storage cells each cube's part inside the volume
        touches."""
        shape = np.asarray(shape, np.int64)
        begins = cube_begins(self.volume, locations, shape, crop)
        lo = np.maximum(begins, 0)
        hi = np.minimum(begins + shape, self.volume.shape)
        chunk = np.asarray(self.layout.chunk, np.int64)
        first = lo // chunk
        count = np.where(hi > lo, (hi - 1) // chunk - first + 1, 0)
        count[(count == 0).any(axis=1)] = 0
        rows, cells = [], []
        for dz in range(int(count[:, 0].max(initial=0))):
            for dy in range(int(count[:, 1].max(initial=0))):
                for dx in range(int(count[:, 2].max(initial=0))):
                    d = np.array([dz, dy, dx])
                    hit = np.flatnonzero((d < count).all(axis=1))
                    rows.append(hit)
                    cells.append(first[hit] + d)
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 3), np.int64)
        return np.concatenate(rows), np.concatenate(cells)

    def _object_hashes(self, cells: list[tuple]) -> np.ndarray:
        keys = [self.layout.key(c) for c in cells]
        new = sorted({k for k in keys if k not in self.known})
        if new:
            for key, stamp in zip(new, self.stamper(new)):
                self.unknown |= stamp == UNKNOWN
                self.known[key] = _hash64(f"{key}={stamp}")
        return np.array([self.known[k] for k in keys], dtype=np.uint64)


def _hdf5_metadata(volume: RawVolume) -> list:
    data = volume.data
    return [data.name, list(data.shape), str(data.dtype), _list(data.chunks),
            str(data.compression), str(data.fillvalue), list(volume.voxel_size),
            list(volume.offset)]


def _list(values):
    return list(values) if values is not None else None


# ------------------------------------------------------------------------ the shard

def stamp_shard(shard_path: Path, out: Path, voxel_size: tuple | None,
                shape: Sequence[int], crop: str, batch_rows: int = 65536
                ) -> tuple[str, list[str]]:
    """Write the shard with a `raw_stamp` column (the stamp of each synapse's cube of
    `shape`, placed by `crop`), streamed batch by batch. Returns a digest of the stamps
    and the volumes whose stores give no content identity (changes there go unseen)."""
    volumes: dict[tuple[str, str], VolumeStamps] = {}
    digest = hashlib.sha256()
    source = pq.ParquetFile(shard_path)
    schema = source.schema_arrow.append(pa.field(STAMP, pa.uint64()))
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for batch in source.iter_batches(batch_size=batch_rows):
            df = batch.to_pandas()
            stamps = np.zeros(len(df), np.uint64)
            for (container, dataset), idx in df.groupby(
                    ["raw_container", "raw_dataset"], sort=False).indices.items():
                if (container, dataset) not in volumes:
                    volumes[container, dataset] = VolumeStamps(
                        open_raw_cached(container, dataset, voxel_size))
                locations = df[["z", "y", "x"]].to_numpy(np.float64)[idx]
                stamps[idx] = volumes[container, dataset].of(locations, shape, crop)
            digest.update(stamps.tobytes())
            writer.write_table(pa.Table.from_batches([batch.append_column(
                STAMP, pa.array(stamps, pa.uint64()))], schema=schema))
    unknown = [v.volume.name for v in volumes.values() if v.unknown]
    return digest.hexdigest()[:16], unknown
