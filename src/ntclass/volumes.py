"""Opening raw EM (zarr, N5, neuroglancer precomputed: local or remote, through
TensorStore; local HDF5 through h5py) and reading cubes in world coordinates (nm)."""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np
import tensorstore as ts
import zarr
from numpy.lib.stride_tricks import sliding_window_view

from ntclass import stores
from ntclass.errors import NtclassError
from ntclass.stores import RawAddress, parse_container, unreachable

HDF5_SUFFIXES = (".h5", ".hdf", ".hdf5", ".cremi")


@dataclass(frozen=True)
class RawVolume:
    """A 3D dataset with its voxel size and offset, both in nm (z, y, x)."""

    data: object  # TsArray, h5py.Dataset or numpy array: .shape and numpy slicing
    voxel_size: tuple[int, int, int]
    offset: tuple[int, int, int]
    name: str  # as messages show it (URLs redacted)
    # "zarr", "zarr3", "n5", "precomputed" (read through TensorStore), "hdf5" or "memory"
    kind: str = "memory"
    spec: dict | None = None  # how TensorStore opens the data again (see open_tensorstore)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def fill_value(self) -> float:
        """What a reader returns where the store holds no chunk (0 unless the array
        says otherwise)."""
        for name in ("fill_value", "fillvalue"):  # TensorStore, h5py
            value = getattr(self.data, name, None)
            if value is not None:
                return value.item() if isinstance(value, np.ndarray) else value
        return 0

    def to_voxel(self, locations_nm: np.ndarray) -> np.ndarray:
        """Index of the voxel holding each location (N x 3 nm -> N x 3 int)."""
        rel = (np.asarray(locations_nm, dtype=np.float64) - self.offset) / self.voxel_size
        return np.floor(rel).astype(np.int64)

    def read(self, begin: np.ndarray, shape: tuple[int, ...], fill: int = 0
             ) -> tuple[np.ndarray, bool]:
        """Read `shape` voxels starting at voxel `begin`; outside the dataset is `fill`.

        Returns the array and whether it was padded.
        """
        begin = np.asarray(begin, dtype=np.int64)
        end = begin + np.asarray(shape)
        lo = np.maximum(begin, 0)
        hi = np.minimum(end, self.shape)
        padded = bool(np.any(lo != begin) or np.any(hi != end))
        if not padded:
            return np.asarray(self.data[tuple(slice(a, b) for a, b in zip(lo, hi))]), False
        out = np.full(shape, fill, dtype=self.dtype)
        if np.all(hi > lo):
            dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, begin))
            out[dst] = self.data[tuple(slice(a, b) for a, b in zip(lo, hi))]
        return out, True

    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.data.dtype).itemsize

    def in_memory(self) -> RawVolume:
        """The same volume with its data read into memory."""
        return RawVolume(np.asarray(self.data[...]), self.voxel_size, self.offset, self.name)


class TsArray:
    """A TensorStore array (z, y, x from 0) with the slicing of a numpy array."""

    def __init__(self, store: ts.TensorStore, shown: str):
        self.store = store
        self.shown = shown
        self.shape = tuple(store.shape)
        self.dtype = store.dtype.numpy_dtype
        self.ndim = len(self.shape)
        self.fill_value = store.fill_value

    def __getitem__(self, index) -> np.ndarray:
        try:
            return self.store[index].read().result()
        except ValueError as e:
            raise unreachable(self.shown, e) from None


# Raw EM does not change while ntclass reads it: a cached chunk is not asked for again
# (TensorStore would revalidate it with the server on every read).
UNCHANGING = {"recheck_cached_data": False, "recheck_cached_metadata": False}

# Chunks a process keeps decoded for slicing reads (training samples, checks): the cubes
# of neighbouring synapses share chunks.
SLICE_CACHE_BYTES = 256 << 20


def open_tensorstore(volume: RawVolume, context: ts.Context | None = None
                     ) -> ts.TensorStore | None:
    """`volume`'s data as a TensorStore in z, y, x from 0 (None: HDF5, in memory)."""
    if volume.spec is None:
        return None
    try:
        store = ts.open(volume.spec, read=True, context=context or stores.context()).result()
    except ValueError as e:
        raise unreachable(volume.name, e) from None
    return _zyx(store, volume.kind)


def _zyx(store: ts.TensorStore, kind: str) -> ts.TensorStore:
    """A store as z, y, x from 0: N5 is x, y, z; precomputed x, y, z, channel from
    voxel_offset."""
    if kind == "n5":
        return store.T
    if kind == "precomputed":
        return store[..., 0].T.translate_to[0]
    return store


def open_raw(container: str | os.PathLike, dataset: str,
             voxel_size: Sequence[int] | None = None) -> RawVolume:
    """Open `dataset` inside a zarr, N5, neuroglancer precomputed or HDF5 `container`
    (a path, a URL or a neuroglancer source string: `stores.parse_container`).

    The voxel size and offset come from the dataset's attributes (`voxel_size` or
    `resolution`, and `offset`; precomputed: the scale's `resolution` and `voxel_offset`);
    `voxel_size` from the config is checked against them and used where they are absent.
    """
    address = parse_container(str(container))
    if not address.remote and address.driver is None:
        path = address.location
        if not os.path.exists(path):
            raise NtclassError(f"raw container '{path}' does not exist")
        if os.path.isfile(path):
            return _open_hdf5(path, dataset, voxel_size)
    driver = address.driver or _detect_driver(address, dataset)
    if driver == "neuroglancer_precomputed":
        return _open_precomputed(address, dataset, voxel_size)
    return _open_chunked(address, dataset, driver, voxel_size)


def _detect_driver(address: RawAddress, dataset: str) -> str:
    """The format of a container: its metadata files decide."""
    if address.read("info") is not None:
        return "neuroglancer_precomputed"
    inside = dataset.strip("/")
    if address.read(f"{inside}/.zarray") is not None:
        return "zarr"
    node = address.read_json(f"{inside}/zarr.json")
    n5 = address.read_json(f"{inside}/attributes.json")
    if node is not None and node.get("node_type") == "array":
        return "zarr3"
    if n5 is not None and "dimensions" in n5:
        return "n5"
    shown = address.shown
    if node is not None or n5 is not None or address.read(f"{inside}/.zgroup") is not None:
        members = _members(address, inside)
        raise NtclassError(
            f"raw dataset '{dataset}' in '{shown}' is a group, not an array; name an array "
            f"inside it (it holds {', '.join(repr(m) for m in members) or 'nothing'})")
    if address.remote:
        raise NtclassError(
            f"raw container '{shown}' has neither a neuroglancer precomputed 'info' file nor "
            f"a zarr or N5 array '{dataset}' (no metadata found at that address)")
    if address.read(".zgroup") is None and address.read("attributes.json") is None:
        raise NtclassError(f"raw container '{shown}' is not a zarr, N5 or neuroglancer "
                           "precomputed volume, nor an HDF5 file")
    raise NtclassError(f"raw container '{shown}' has no dataset '{dataset}'")


def _members(address: RawAddress, inside: str) -> list[str]:
    if address.remote:
        return []
    folder = Path(address.location, inside)
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())[:5]


def _open_store(spec: dict, shown: str) -> ts.TensorStore:
    try:
        return ts.open(spec, read=True, context=stores.context(0, SLICE_CACHE_BYTES)).result()
    except ValueError as e:
        raise unreachable(shown, e) from None


def _open_precomputed(address: RawAddress, dataset: str, voxel_size: Sequence[int] | None
                      ) -> RawVolume:
    """A neuroglancer precomputed volume; `dataset` names a scale by its key (e.g.
    4_4_40) or its index (s0, s1...)."""
    shown = address.shown
    try:
        info = address.read_json("info")
        scales = info["scales"]
    except (TypeError, KeyError):
        raise NtclassError(f"'{shown}/info' is not a neuroglancer precomputed info "
                           "file") from None
    keys = [sc["key"] for sc in scales]
    index = (int(dataset[1:]) if re.fullmatch(r"s\d+", dataset or "") and dataset not in keys
             else keys.index(dataset) if dataset in keys else None)
    if index is None or index >= len(scales):
        raise NtclassError(f"precomputed volume '{shown}' has no scale '{dataset}' (its "
                           f"scales: {', '.join(keys)}; name one by key or as s0, s1...)")
    scale = scales[index]
    name = f"{shown}/{scale['key']}"
    spec = {"driver": "neuroglancer_precomputed", "kvstore": address.kvstore(),
            "scale_metadata": {"key": scale["key"]}, **UNCHANGING}
    store = _open_store(spec, name)
    if store.shape[3] != 1:
        raise NtclassError(f"precomputed volume '{name}' has {store.shape[3]} channels; "
                           "expected 1 (grey-scale EM)")
    resolution = scale["resolution"][::-1]  # info is x, y, z
    vs = _voxel_size(resolution, voxel_size, name)
    offset = tuple(int(o) * v for o, v in zip(scale.get("voxel_offset", [0, 0, 0])[::-1], vs))
    return RawVolume(TsArray(_zyx(store, "precomputed"), name), vs, offset, name,
                     kind="precomputed", spec=spec)


def _open_chunked(address: RawAddress, dataset: str, driver: str,
                  voxel_size: Sequence[int] | None) -> RawVolume:
    """A zarr (v2 or v3) or N5 array, attributes included."""
    inside = dataset.strip("/")
    kind = {"zarr": "zarr", "zarr3": "zarr3", "n5": "n5"}[driver]
    name = f"{address.shown}/{inside}"
    spec = {"driver": driver, "kvstore": address.kvstore(inside), **UNCHANGING}
    if kind == "zarr":
        attrs = address.read_json(f"{inside}/.zattrs") or {}
    elif kind == "zarr3":
        attrs = (address.read_json(f"{inside}/zarr.json") or {}).get("attributes", {})
    else:
        attrs = address.read_json(f"{inside}/attributes.json") or {}
    store = _open_store(spec, name)
    if store.rank != 3:
        raise NtclassError(
            f"raw dataset '{dataset}' in '{address.shown}' has {store.rank} dimensions, "
            "expected 3")
    stored_vs = _attr(attrs, "voxel_size", "resolution")
    if stored_vs is None and isinstance(attrs.get("pixelResolution"), dict):
        stored_vs = attrs["pixelResolution"].get("dimensions")  # N5 viewer's convention
    stored_offset = _attr(attrs, "offset")
    if kind == "n5":  # N5 attributes are x, y, z
        stored_vs = stored_vs[::-1] if stored_vs is not None else None
        stored_offset = stored_offset[::-1] if stored_offset is not None else None
    vs = _voxel_size(stored_vs, voxel_size, name)
    offset = tuple(_whole(v) for v in (stored_offset if stored_offset is not None
                                        else (0, 0, 0)))
    if any(v is None for v in offset):
        raise NtclassError(f"offset {_shown(stored_offset)} stored in '{name}' is not in "
                           "whole nm; ntclass needs integer offsets")
    return RawVolume(TsArray(_zyx(store, kind), name), vs, offset, name, kind=kind, spec=spec)


def _open_hdf5(container: str, dataset: str, voxel_size: Sequence[int] | None) -> RawVolume:
    if not h5py.is_hdf5(container):
        kind = ("a table" if container.lower().endswith((".csv", ".tsv", ".parquet", ".pq"))
                else "not an HDF5 file")
        raise NtclassError(f"raw container '{container}' is {kind}; raw_container names the "
                           "raw EM volume: a zarr or N5 folder, an HDF5 file or a neuroglancer "
                           "precomputed volume")
    try:
        data = _open_h5(container)[dataset]
    except KeyError:
        raise NtclassError(f"raw container '{container}' has no dataset '{dataset}'") from None
    except OSError as e:
        raise NtclassError(f"cannot read raw container '{container}': {e}") from None
    if not hasattr(data, "shape"):
        members = sorted(data.keys())[:5]
        raise NtclassError(
            f"raw dataset '{dataset}' in '{container}' is a group, not an array; name an "
            f"array inside it (it holds {', '.join(repr(m) for m in members) or 'nothing'})")
    if data.ndim != 3:
        raise NtclassError(
            f"raw dataset '{dataset}' in '{container}' has {data.ndim} dimensions, expected 3")
    attrs = dict(data.attrs)
    name = f"{container}/{dataset}"
    vs = _voxel_size(_attr(attrs, "voxel_size", "resolution"), voxel_size, name)
    stored_offset = _attr(attrs, "offset")
    offset = tuple(_whole(v) for v in (stored_offset if stored_offset is not None
                                        else (0, 0, 0)))
    if any(v is None for v in offset):
        raise NtclassError(f"offset {_shown(stored_offset)} stored in '{name}' is not in "
                           "whole nm; ntclass needs integer offsets")
    return RawVolume(data=data, voxel_size=vs, offset=offset, name=name, kind="hdf5")


def _attr(attrs, *names):
    for name in names:
        if name in attrs:
            return attrs[name]
    return None


def _whole(value) -> int | None:
    """`value` as an int when it is a whole number, else None (never truncated)."""
    number = float(value)
    return int(number) if number.is_integer() else None


def _shown(values) -> str:
    """A stored list as the user wrote it: 40 for 40.0, 4.5 as 4.5."""
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def _voxel_size(stored, configured, name: str) -> tuple[int, int, int]:
    """The voxel size: the stored one, checked against the configured one."""
    if stored is None and configured is None:
        raise NtclassError(
            f"raw dataset '{name}' has no voxel_size/resolution attribute; set voxel_size in "
            "the config")
    if stored is not None and len(stored) != 3:
        raise NtclassError(f"voxel size {list(stored)} stored in '{name}' has "
                           f"{len(stored)} values, expected 3 (z, y, x)")
    if stored is not None and configured is not None and [float(v) for v in stored] != [
            float(v) for v in configured]:
        raise NtclassError(f"voxel_size {list(configured)} in the config disagrees with "
                           f"{_shown(stored)} stored in '{name}'")
    chosen = stored if stored is not None else configured
    vs = tuple(_whole(v) for v in chosen)
    if any(v is None or v <= 0 for v in vs):
        raise NtclassError(f"voxel size {_shown(chosen)} of '{name}' is not in whole, "
                           "positive nm; ntclass needs integer voxel sizes")
    return vs


@lru_cache(maxsize=64)
def _open_h5_cached(path: str, pid: int) -> h5py.File:
    handle = h5py.File(path, "r")
    _H5_OPENED.add(handle)
    return handle


_H5_OPENED: weakref.WeakSet = weakref.WeakSet()


def _open_h5(path: str) -> h5py.File:
    # HDF5 handles must not cross a fork: key the cache by process.
    return _open_h5_cached(path, os.getpid())


@lru_cache(maxsize=4096)
def _open_raw_cached(container: str, dataset: str, voxel_size: tuple | None,
                     load_below: int, pid: int) -> RawVolume:
    volume = open_raw(container, dataset, voxel_size)
    return volume.in_memory() if volume.nbytes() <= load_below else volume


def open_raw_cached(container: str, dataset: str,
                    voxel_size: tuple[int, ...] | None = None,
                    load_below: int = 0) -> RawVolume:
    """`open_raw`, memoised per process (training samples reopen the same crops often).

    Volumes of at most `load_below` bytes are read into memory once.
    """
    vs = tuple(voxel_size) if voxel_size is not None else None
    return _open_raw_cached(str(container), dataset, vs, load_below, os.getpid())


def forget_opened_raw() -> None:
    """Close the volumes and HDF5 files this process keeps open, and drop TensorStore's
    cached chunks and metadata: what is read next is the raw as it is now (a process that
    predicts again after the raw changed)."""
    _open_raw_cached.cache_clear()
    for handle in _open_h5_handles():
        handle.close()
    _open_h5_cached.cache_clear()
    stores.forget_cached()


def _open_h5_handles() -> list[h5py.File]:
    # lru_cache does not list its values: reopening a cached key returns the same handle
    return [h for h in list(_H5_OPENED) if h.id.valid]


def write_zarr_volume(container: str | os.PathLike, dataset: str, data: np.ndarray,
                      voxel_size: tuple[int, ...], offset: tuple[int, ...] = (0, 0, 0),
                      chunks: tuple[int, ...] = (16, 128, 128)) -> None:
    """Write a raw volume with the attributes both funlib (voxel_size) and gunpowder's
    ZarrSource (resolution) read."""
    root = zarr.open(str(container), mode="a")
    arr = root.create_dataset(dataset, data=data, chunks=chunks, overwrite=True)
    arr.attrs.update({
        "voxel_size": list(voxel_size), "resolution": list(voxel_size),
        "offset": list(offset), "axis_names": ["z", "y", "x"], "units": ["nm", "nm", "nm"],
    })


# Where a cube sits around its synapse, as the model's trainer placed it:
#   ntclass: the voxel that holds the location is voxel shape // 2 of the cube;
#   synister: Synister's crop (synister/utils.py get_raw, on daisy 0.2 / 0.3-dev: see
#     synister_cube_begins). The two differ by one voxel on an axis where the location lies
#     in the upper half of its voxel, and on some axes where it lies at the voxel's centre.
CROPS = ("ntclass", "synister")
# The crops' arithmetic, in the prediction cache's key: revision 2 rounds the synister
# crop's halves to even, as daisy 0.2 did (1 rounded them down), so older cached
# predictions are not reused.
CROP_REVISION = 2


def cube_begins(volume: RawVolume, locations: np.ndarray, shape: Sequence[int],
                crop: str) -> np.ndarray:
    """The first voxel (z, y, x, in the volume) of the cube of `shape` around each
    location (N x 3 nm), by the convention `crop` (see CROPS)."""
    shape = np.asarray(shape, dtype=np.int64)
    if crop == "ntclass":
        return volume.to_voxel(locations) - shape // 2
    if crop != "synister":
        raise NtclassError(f"crop convention '{crop}' is unknown; expected one of {CROPS}")
    return synister_cube_begins(volume, locations, shape)


def synister_cube_begins(volume: RawVolume, locations: np.ndarray, shape: Sequence[int]
                         ) -> np.ndarray:
    """The first voxel of each cube as Synister's prediction cut it, in daisy 0.2's
    arithmetic (Coordinate, Roi.snap_to_grid(mode="closest"), Array.to_ndarray):

    - the location in whole nm, truncated (`int()`), less `int(size / 2)` voxels;
    - begin and end of that ROI, each as float32 divided by the voxel size, rounded by
      `np.round` (halves to even), so the snapped shape can differ from the cube's;
    - get_raw then resets the shape to the cube's when `shape_nm[0] != size[0]`, a nm
      against a voxel count: always, unless the z voxel size is 1 nm. Where it is not reset
      and differs, Synister's batch could not be stacked: refused here.
    """
    size = np.asarray(shape, dtype=np.int64)
    vs = np.asarray(volume.voxel_size, dtype=np.int64)
    offset = np.asarray(volume.offset, dtype=np.int64)
    if np.any(offset % vs):
        raise NtclassError(
            f"raw '{volume.name}' has offset {list(volume.offset)} nm, not a multiple of its "
            f"voxel size {list(volume.voxel_size)}: Synister's crop (daisy) cannot read such "
            "a volume; set crop: ntclass in the model entry")
    begin_nm = np.trunc(np.asarray(locations, dtype=np.float64)).astype(np.int64) - (
        size // 2) * vs
    begin = np.round(begin_nm.astype(np.float32) / vs)  # float32 / int64: float64, as daisy
    end = np.round((begin_nm + size * vs).astype(np.float32) / vs)
    kept = (end - begin)[:, 0] * vs[0] == size[0]  # get_raw's test, nm against voxels
    cut = np.where(kept[:, None], end - begin, size)
    wrong = np.flatnonzero(np.any(cut != size, axis=1))
    if len(wrong):
        i = wrong[0]
        raise NtclassError(
            f"Synister's crop cuts the synapse at {np.asarray(locations)[i].tolist()} nm a "
            f"cube of {cut[i].astype(int).tolist()} voxels, not the model's input_shape "
            f"{size.tolist()} ({len(wrong)} of {len(begin)} synapses): daisy 0.2 rounds the "
            "cube's begin and end separately, and at a z voxel size of 1 nm Synister's "
            "get_raw keeps that shape, so its own prediction could not stack them; set "
            "crop: ntclass in the model entry")
    return begin.astype(np.int64) - offset // vs


def crop_cubes(volume: RawVolume, locations: np.ndarray, shape: Sequence[int]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Cubes of `shape` centred on each location (voxel shape//2 holds the synapse),
    read from the volume in one piece. Returns (N, *shape) raw values and a padded flag
    each."""
    shape = np.asarray(shape)
    begins = volume.to_voxel(locations) - shape // 2
    lo = begins.min(axis=0)
    hi = begins.max(axis=0) + shape
    region, _ = volume.read(lo, tuple(hi - lo))
    windows = sliding_window_view(region, tuple(shape))
    rel = begins - lo
    cubes = windows[rel[:, 0], rel[:, 1], rel[:, 2]]
    padded = np.any((begins < 0) | (begins + shape > np.array(volume.shape)), axis=1)
    return cubes, padded
