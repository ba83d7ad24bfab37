"""Opening raw EM (zarr, N5, HDF5, neuroglancer precomputed) and reading cubes in world
coordinates (nm)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np
import tensorstore as ts
import zarr
from numpy.lib.stride_tricks import sliding_window_view

from ntclass.errors import NtclassError

HDF5_SUFFIXES = (".h5", ".hdf", ".hdf5", ".cremi")


@dataclass(frozen=True)
class RawVolume:
    """A 3D dataset with its voxel size and offset, both in nm (z, y, x)."""

    data: object  # zarr.Array, h5py.Dataset, TsArray: anything with .shape, numpy slicing
    voxel_size: tuple[int, int, int]
    offset: tuple[int, int, int]
    name: str
    # how fast readers open the same data again: "zarr", "n5", "precomputed" (TensorStore
    # specs, see `tensorstore_spec`), "hdf5" or "memory"
    kind: str = "memory"
    path: str = ""  # the array's own folder (zarr, N5, precomputed scale) or HDF5 file

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
        for name in ("fill_value", "fillvalue"):  # zarr, h5py
            value = getattr(self.data, name, None)
            if value is not None:
                return value
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

    def __init__(self, store: ts.TensorStore):
        self.store = store
        self.shape = tuple(store.shape)
        self.dtype = store.dtype.numpy_dtype
        self.ndim = len(self.shape)
        self.attrs: dict = {}

    def __getitem__(self, index) -> np.ndarray:
        return self.store[index].read().result()


def _is_precomputed(container: str) -> bool:
    return os.path.isfile(os.path.join(container, "info"))


def _open_precomputed(container: str, dataset: str, voxel_size: Sequence[int] | None
                      ) -> RawVolume:
    """A neuroglancer precomputed volume (a folder with an `info` file); `dataset` names
    a scale by its key (e.g. 4_4_40) or its index (s0, s1...)."""
    try:
        info = json.loads(Path(container, "info").read_text())
        scales = info["scales"]
    except (OSError, ValueError, KeyError) as e:
        raise NtclassError(f"'{container}/info' is not a neuroglancer precomputed info file "
                           f"({e})") from None
    keys = [sc["key"] for sc in scales]
    index = (int(dataset[1:]) if re.fullmatch(r"s\d+", dataset or "") and dataset not in keys
             else keys.index(dataset) if dataset in keys else None)
    if index is None or index >= len(scales):
        raise NtclassError(f"precomputed volume '{container}' has no scale '{dataset}' (its "
                           f"scales: {', '.join(keys)}; name one by key or as s0, s1...)")
    scale = scales[index]
    name = f"{container}/{scale['key']}"
    store = ts.open(precomputed_spec(container, scale["key"]), read=True).result()
    if store.shape[3] != 1:
        raise NtclassError(f"precomputed volume '{name}' has {store.shape[3]} channels; "
                           "expected 1 (grey-scale EM)")
    resolution = scale["resolution"][::-1]  # info is x, y, z
    vs = _voxel_size(resolution, voxel_size, name)
    offset = tuple(int(o) * v for o, v in zip(scale.get("voxel_offset", [0, 0, 0])[::-1], vs))
    return RawVolume(TsArray(_zyx(store)), vs, offset, name, kind="precomputed",
                     path=f"{container}|{scale['key']}")


def _zyx(store: ts.TensorStore) -> ts.TensorStore:
    """A precomputed store (x, y, z, channel from voxel_offset) as z, y, x from 0."""
    return store[..., 0].T.translate_to[0]


def precomputed_spec(container: str, key: str) -> dict:
    return {"driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": container}, "scale_metadata": {"key": key}}


def tensorstore_spec(volume: RawVolume) -> dict | None:
    """How TensorStore opens `volume`'s data (None: HDF5 and in-memory volumes)."""
    if volume.kind == "zarr":
        return {"driver": "zarr", "kvstore": {"driver": "file", "path": volume.path}}
    if volume.kind == "n5":
        return {"driver": "n5", "kvstore": {"driver": "file", "path": volume.path}}
    if volume.kind == "precomputed":
        container, key = volume.path.split("|")
        return precomputed_spec(container, key)
    return None


def open_tensorstore(volume: RawVolume, context: ts.Context | None = None
                     ) -> ts.TensorStore | None:
    """`volume`'s data as a TensorStore in z, y, x from 0, or None where it cannot."""
    spec = tensorstore_spec(volume)
    if spec is None:
        return None
    store = ts.open(spec, read=True, context=context).result()
    if volume.kind == "n5":
        return store.T  # N5 stores x, y, z
    if volume.kind == "precomputed":
        return _zyx(store)
    return store


def _is_n5(container: str) -> bool:
    return container.rstrip("/").endswith(".n5") or os.path.exists(
        os.path.join(container, "attributes.json")) and not os.path.exists(
        os.path.join(container, ".zgroup"))


def _attr(attrs, *names):
    for name in names:
        if name in attrs:
            return attrs[name]
    return None


def open_raw(container: str | os.PathLike, dataset: str,
             voxel_size: Sequence[int] | None = None) -> RawVolume:
    """Open `dataset` inside a zarr, N5 or HDF5 `container` for reading.

    The voxel size and offset come from the dataset's attributes (`voxel_size` or
    `resolution`, and `offset`); `voxel_size` from the config is checked against them and
    used where they are absent.
    """
    container = str(container)
    if not os.path.exists(container):
        raise NtclassError(f"raw container '{container}' does not exist")
    if _is_precomputed(container):
        return _open_precomputed(container, dataset, voxel_size)
    if os.path.isfile(container) and not h5py.is_hdf5(container):
        kind = ("a table" if container.lower().endswith((".csv", ".tsv", ".parquet", ".pq"))
                else "not an HDF5 file")
        raise NtclassError(f"raw container '{container}' is {kind}; raw_container names the "
                           "raw EM volume: a zarr or N5 folder, an HDF5 file or a neuroglancer "
                           "precomputed volume")
    try:
        if Path(container).suffix.lower() in HDF5_SUFFIXES or os.path.isfile(container):
            data = _open_h5(container)[dataset]
            reverse, kind = False, "hdf5"
        elif _is_n5(container):
            data = zarr.open(zarr.N5FSStore(container), mode="r")[dataset]
            # N5 stores x, y, z; zarr's N5 store presents the data as z, y, x.
            reverse, kind = True, "n5"
        else:
            data = zarr.open(container, mode="r")[dataset]
            reverse, kind = False, "zarr"
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
    stored_vs = _attr(attrs, "voxel_size", "resolution")
    stored_offset = _attr(attrs, "offset")
    if reverse:
        stored_vs = stored_vs[::-1] if stored_vs is not None else None
        stored_offset = stored_offset[::-1] if stored_offset is not None else None
    name = f"{container}/{dataset}"
    vs = _voxel_size(stored_vs, voxel_size, name)
    offset = tuple(_whole(v) for v in (stored_offset if stored_offset is not None
                                        else (0, 0, 0)))
    if any(v is None for v in offset):
        raise NtclassError(f"offset {_shown(stored_offset)} stored in '{name}' is not in "
                           "whole nm; ntclass needs integer offsets")
    path = container if kind == "hdf5" else os.path.join(container, dataset.strip("/"))
    return RawVolume(data=data, voxel_size=vs, offset=offset, name=name, kind=kind, path=path)


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
    return h5py.File(path, "r")


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
#   synister: Synister's crop (synister.utils.get_raw): the location truncated to whole nm,
#     minus shape / 2 voxels, snapped to the closest voxel corner (ties down), as
#     funlib's Roi.snap_to_grid(mode="closest") does. The two differ by one voxel on an
#     axis where the location lies in the upper half of its voxel.
CROPS = ("ntclass", "synister")


def cube_begins(volume: RawVolume, locations: np.ndarray, shape: Sequence[int],
                crop: str) -> np.ndarray:
    """The first voxel (z, y, x, in the volume) of the cube of `shape` around each
    location (N x 3 nm), by the convention `crop` (see CROPS)."""
    shape = np.asarray(shape, dtype=np.int64)
    if crop == "ntclass":
        return volume.to_voxel(locations) - shape // 2
    if crop != "synister":
        raise NtclassError(f"crop convention '{crop}' is unknown; expected one of {CROPS}")
    vs = np.asarray(volume.voxel_size, dtype=np.int64)
    start = np.trunc(np.asarray(locations, dtype=np.float64)).astype(np.int64) - (
        shape // 2) * vs
    return (start + (vs - 1) // 2) // vs - np.asarray(volume.offset, dtype=np.int64) // vs


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
