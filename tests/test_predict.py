import numpy as np
import pandas as pd
import pytest

from ntclass.predict import shard_rois
from ntclass.volumes import crop_cubes, open_raw, write_zarr_volume


def random_synapses(n, seed=0, extent=(4000, 20000, 30000)):
    rng = np.random.default_rng(seed)
    locs = rng.uniform(0, 1, size=(n, 3)) * extent
    # some exactly on block borders
    locs[: n // 10] = np.round(locs[: n // 10] / 1000) * 1000
    return pd.DataFrame({"synapse_id": np.arange(n), "z": locs[:, 0], "y": locs[:, 1],
                         "x": locs[:, 2]})


@pytest.mark.parametrize("n_shards", [1, 2, 3, 7])
def test_shards_cover_every_synapse_once(n_shards):
    table = random_synapses(500)
    rois = shard_rois(table, n_shards, (1000, 2000, 2000), (0, 0, 0))
    assert len(rois) == n_shards
    locs = table[["z", "y", "x"]].to_numpy()
    owners = np.zeros(len(table), dtype=int)
    for roi in rois:
        begin, end = np.array(roi.begin), np.array(roi.end)
        owners += np.all((locs >= begin) & (locs < end), axis=1)
    assert (owners == 1).all()


def test_shards_are_balanced():
    table = random_synapses(2000, seed=1)
    rois = shard_rois(table, 4, (1000, 1000, 1000), (0, 0, 0))
    locs = table[["z", "y", "x"]].to_numpy()
    counts = [np.all((locs >= np.array(r.begin)) & (locs < np.array(r.end)), axis=1).sum()
              for r in rois]
    assert min(counts) > 0.6 * len(table) / 4


def test_crop_cubes_match_direct_reads_and_flag_padding(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, size=(12, 64, 64), dtype=np.uint8)
    write_zarr_volume(tmp_path / "v.zarr", "raw", data, (40, 4, 4), offset=(400, 40, 40))
    volume = open_raw(tmp_path / "v.zarr", "raw")
    # voxels (z, y, x): interior, interior, one touching the low corner, one past the high end
    voxels = np.array([[6, 30, 30], [5, 20, 41], [1, 3, 2], [11, 62, 60]])
    locations = volume.offset + (voxels + 0.5) * volume.voxel_size
    cubes, padded = crop_cubes(volume, locations, (4, 8, 8))
    assert cubes.shape == (4, 4, 8, 8)
    for cube, voxel in zip(cubes, voxels):
        expected, _ = volume.read(voxel - (2, 4, 4), (4, 8, 8))
        assert np.array_equal(cube, expected)
    assert padded.tolist() == [False, False, True, True]
    assert cubes[0, 2, 4, 4] == data[6, 30, 30]  # voxel shape//2 is the synapse
