import h5py
import numpy as np
import pytest
import zarr

from ntclass.errors import NtclassError
from ntclass.volumes import open_raw, write_zarr_volume


@pytest.fixture
def data():
    return np.random.default_rng(0).integers(0, 255, size=(6, 20, 30), dtype=np.uint8)


def test_zarr_offset_and_voxel_size(tmp_path, data):
    write_zarr_volume(tmp_path / "v.zarr", "raw", data, (40, 4, 4), offset=(80, 8, 12))
    vol = open_raw(tmp_path / "v.zarr", "raw", (40, 4, 4))
    assert vol.voxel_size == (40, 4, 4) and vol.offset == (80, 8, 12)
    assert np.array_equal(vol.to_voxel(np.array([[80, 8, 12], [119.9, 11.9, 15.9]])),
                          [[0, 0, 0], [0, 0, 0]])
    cube, padded = vol.read(np.array([1, 2, 3]), (2, 3, 4))
    assert not padded and np.array_equal(cube, data[1:3, 2:5, 3:7])


def test_n5_attributes_are_reversed(tmp_path, data):
    store = zarr.N5FSStore(str(tmp_path / "v.n5"))
    root = zarr.group(store=store)
    ds = root.create_dataset("volumes/raw/s0", data=data, chunks=(6, 10, 10))
    ds.attrs["resolution"] = [4, 4, 40]  # N5 convention: x, y, z
    ds.attrs["offset"] = [12, 8, 80]
    vol = open_raw(tmp_path / "v.n5", "volumes/raw/s0")
    assert vol.voxel_size == (40, 4, 4) and vol.offset == (80, 8, 12)
    assert np.array_equal(vol.read(np.zeros(3, int), data.shape)[0], data)


def test_hdf5_cremi_style(tmp_path, data):
    with h5py.File(tmp_path / "c.hdf", "w") as f:
        ds = f.create_dataset("volumes/raw", data=data)
        ds.attrs["resolution"] = (40.0, 4.0, 4.0)
    vol = open_raw(tmp_path / "c.hdf", "volumes/raw")
    assert vol.voxel_size == (40, 4, 4) and vol.offset == (0, 0, 0)


def test_reads_past_the_edge_are_padded(tmp_path, data):
    write_zarr_volume(tmp_path / "v.zarr", "raw", data, (40, 4, 4))
    vol = open_raw(tmp_path / "v.zarr", "raw")
    cube, padded = vol.read(np.array([-1, 18, 28]), (3, 4, 4))
    assert padded
    assert np.all(cube[0] == 0) and np.all(cube[:, 2:, :] == 0) and np.all(cube[:, :, 2:] == 0)
    assert np.array_equal(cube[1:, :2, :2], data[0:2, 18:20, 28:30])
    outside, padded = vol.read(np.array([100, 100, 100]), (2, 2, 2))
    assert padded and not outside.any()


def test_voxel_size_disagreeing_with_the_container_is_refused(tmp_path, data):
    write_zarr_volume(tmp_path / "v.zarr", "raw", data, (40, 4, 4))
    with pytest.raises(NtclassError, match=r"voxel_size \[8, 8, 8\] in the config disagrees"):
        open_raw(tmp_path / "v.zarr", "raw", (8, 8, 8))


def test_missing_container_or_dataset(tmp_path, data):
    with pytest.raises(NtclassError, match="does not exist"):
        open_raw(tmp_path / "nope.zarr", "raw")
    write_zarr_volume(tmp_path / "v.zarr", "raw", data, (40, 4, 4))
    with pytest.raises(NtclassError, match="no dataset 'volumes/raw'"):
        open_raw(tmp_path / "v.zarr", "volumes/raw")


def test_in_memory_copy_reads_the_same(tmp_path, data):
    write_zarr_volume(tmp_path / "v.zarr", "raw", data, (40, 4, 4))
    vol = open_raw(tmp_path / "v.zarr", "raw")
    mem = vol.in_memory()
    assert isinstance(mem.data, np.ndarray)
    begin = np.array([-2, 5, 25])
    assert np.array_equal(vol.read(begin, (4, 4, 8))[0], mem.read(begin, (4, 4, 8))[0])
