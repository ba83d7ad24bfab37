"""Opening raw EM (zarr, N5, HDF5) and reading cubes in world coordinates (nm)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np
import zarr
from numpy.lib.stride_tricks import sliding_window_view

from .errors import NtclassError

HDF5_SUFFIXES = (".h5", ".hdf", ".hdf5", ".cremi")


@dataclass(frozen=True)
class RawVolume:
    """A 3D uint8 dataset with its voxel size and offset, both in nm (z, y, x)."""

    data: object  # zarr.Array or h5py.Dataset: anything with .shape and numpy slicing
    voxel_size: tuple[int, int, int]
    offset: tuple[int, int, int]
    name: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

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
        out = np.full(shape, fill, dtype=np.uint8)
        if np.all(hi > lo):
            dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, begin))
            out[dst] = self.data[tuple(slice(a, b) for a, b in zip(lo, hi))]
        return out, True

    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.data.dtype).itemsize

    def in_memory(self) -> RawVolume:
        """The same volume with its data read into memory."""
        return RawVolume(np.asarray(self.data[...]), self.voxel_size, self.offset, self.name)


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
             voxel_size: tuple[int, ...] | None = None) -> RawVolume:
    """Open `dataset` inside a zarr, N5 or HDF5 `container` for reading.

    The voxel size and offset come from the dataset's attributes (`voxel_size` or
    `resolution`, and `offset`); `voxel_size` from the config is checked against them.
    """
    container = str(container)
    if not os.path.exists(container):
        raise NtclassError(f"raw container '{container}' does not exist")
    try:
        if Path(container).suffix.lower() in HDF5_SUFFIXES or os.path.isfile(container):
            data = _open_h5(container)[dataset]
            attrs = dict(data.attrs)
            reverse = False
        elif _is_n5(container):
            data = zarr.open(zarr.N5FSStore(container), mode="r")[dataset]
            attrs = dict(data.attrs)
            # N5 stores x, y, z; zarr's N5 store presents the data as z, y, x.
            reverse = True
        else:
            data = zarr.open(container, mode="r")[dataset]
            attrs = dict(data.attrs)
            reverse = False
    except KeyError:
        raise NtclassError(f"raw container '{container}' has no dataset '{dataset}'") from None
    except OSError as e:
        raise NtclassError(f"cannot read raw container '{container}': {e}") from None
    if data.ndim != 3:
        raise NtclassError(
            f"raw dataset '{dataset}' in '{container}' has {data.ndim} dimensions, expected 3")

    stored_vs = _attr(attrs, "voxel_size", "resolution")
    stored_offset = _attr(attrs, "offset")
    if reverse:
        stored_vs = stored_vs[::-1] if stored_vs is not None else None
        stored_offset = stored_offset[::-1] if stored_offset is not None else None
    if stored_vs is None and voxel_size is None:
        raise NtclassError(
            f"raw dataset '{dataset}' in '{container}' has no voxel_size/resolution attribute; "
            "set voxel_size in the config")
    if stored_vs is not None and voxel_size is not None and tuple(
            int(v) for v in stored_vs) != tuple(int(v) for v in voxel_size):
        raise NtclassError(
            f"voxel_size {list(voxel_size)} in the config disagrees with "
            f"{[int(v) for v in stored_vs]} stored in '{container}/{dataset}'")
    vs = tuple(int(v) for v in (stored_vs if stored_vs is not None else voxel_size))
    offset = tuple(int(v) for v in (stored_offset if stored_offset is not None else (0, 0, 0)))
    return RawVolume(data=data, voxel_size=vs, offset=offset, name=f"{container}/{dataset}")


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


def crop_cubes(volume: RawVolume, locations: np.ndarray, shape: Sequence[int]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Cubes of `shape` centred on each location (voxel shape//2 holds the synapse),
    read from the volume in one piece. Returns (N, *shape) uint8 and a padded flag each."""
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
