import numpy as np
import pandas as pd
import pytest
import zarr

from ntclass.cubes import CubeReader
from ntclass.errors import NtclassError
from ntclass.predict.targets import morton_cells, read_shard_rows, write_target
from ntclass.settings import Partition
from ntclass.sources.kinds import source_of
from ntclass.volumes import crop_cubes, open_raw, write_zarr_volume


def random_synapses(n, seed=0, extent=(4000, 20000, 30000)):
    rng = np.random.default_rng(seed)
    locs = rng.uniform(0, 1, size=(n, 3)) * extent
    # some exactly on block borders
    locs[: n // 10] = np.round(locs[: n // 10] / 1000) * 1000
    return pd.DataFrame({"synapse_id": np.arange(n), "z": locs[:, 0], "y": locs[:, 1],
                         "x": locs[:, 2]})


def write_table(tmp_path, table, shape=(120, 6000, 8000)):
    """The synapses as a CSV table over an empty zarr volume holding all of them."""
    volume = tmp_path / "v.zarr"  # no chunk written: reads give zeros
    array = zarr.open(str(volume), mode="a").create_dataset(
        "raw", shape=shape, chunks=(16, 256, 256), dtype=np.uint8)
    array.attrs.update({"voxel_size": [40, 4, 4], "offset": [0, 0, 0]})
    table.to_csv(tmp_path / "synapses.csv", index=False)
    return source_of({"type": "table", "table": str(tmp_path / "synapses.csv"),
                      "raw_container": str(volume), "raw_dataset": "raw"}, "targets.t")


@pytest.mark.parametrize("n_shards", [1, 3, 7])
def test_a_target_is_cut_into_sorted_shards_holding_every_synapse_once(tmp_path, n_shards):
    table = random_synapses(500, extent=(4000, 20000, 30000))
    target = write_table(tmp_path, table, shape=(120, 6000, 8000))
    settings = Partition(shards=n_shards, synapses_per_shard=None, block_size=(640, 2048, 2048),
                         read_batch_rows=64)
    meta = write_target(None, target, ["a", "b"], None, settings, str(tmp_path / "t"))
    assert meta["synapses"] == 500 and meta["shards"] == n_shards
    shards = [read_shard_rows(tmp_path / "t", i) for i in range(n_shards)]
    assert [len(s) for s in shards] == meta["rows_per_shard"]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced by count
    every = pd.concat(shards)
    assert sorted(every["synapse_id"]) == list(range(500))
    cells = every["cell"].to_numpy(dtype=np.uint64)
    assert (np.diff(cells.astype(np.float64)) >= 0).all(), "sorted by the spatial key"
    expected = morton_cells(every[["z", "y", "x"]].to_numpy(), settings.block_size)
    assert (cells == expected).all()
    assert not list((tmp_path / "t").glob("unsorted")), "no scratch files left behind"


def test_morton_cells_keep_neighbours_together():
    corners = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 1, 1], [2, 0, 0]])
    codes = morton_cells(corners * 10.0 + 1, (10, 10, 10)).tolist()
    assert codes == [0, 1, 2, 4, 7, 32]


def test_a_target_with_auto_shards_gets_one_per_synapses_per_shard(tmp_path):
    target = write_table(tmp_path, random_synapses(250, extent=(4000, 20000, 30000)))
    settings = Partition(shards="auto", synapses_per_shard=100, block_size=(640, 2048, 2048),
                         read_batch_rows=1000)
    meta = write_target(None, target, ["a"], None, settings, str(tmp_path / "t"))
    assert meta["shards"] == 3 and meta["rows_per_shard"] == [83, 84, 83]


def test_a_synapse_id_in_two_batches_is_refused(tmp_path):
    table = random_synapses(100, extent=(4000, 20000, 30000))
    table.loc[90, "synapse_id"] = 3  # the first batch of 64 rows holds id 3 too
    target = write_table(tmp_path, table)
    settings = Partition(shards=2, synapses_per_shard=None, block_size=(640, 2048, 2048),
                         read_batch_rows=64)
    with pytest.raises(NtclassError, match="synapse_id 3 occurs more than once"):
        write_target(None, target, ["a"], None, settings, str(tmp_path / "t"))
    assert not (tmp_path / "t").exists()


def _cube_locations(volume, voxels):
    return volume.offset + (np.asarray(voxels) + 0.5) * volume.voxel_size


VOXELS = np.array([[6, 30, 30], [5, 20, 41], [1, 3, 2], [11, 62, 60]])


def test_cube_reader_reads_what_crop_cubes_reads_and_flags_padding(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, size=(12, 64, 64), dtype=np.uint8)
    write_zarr_volume(tmp_path / "v.zarr", "raw", data, (40, 4, 4), offset=(400, 40, 40),
                      chunks=(4, 16, 16))
    volume = open_raw(tmp_path / "v.zarr", "raw")
    locations = _cube_locations(volume, VOXELS)
    expected, expected_pad = crop_cubes(volume, locations, (4, 8, 8))
    reader = CubeReader(volume, (4, 8, 8), threads=2)
    assert reader.store is not None, "zarr is read through TensorStore"
    pending, padded = reader.submit(locations)
    cubes = np.stack([p.result() for p in pending])
    assert np.array_equal(cubes, expected)
    assert padded.tolist() == expected_pad.tolist() == [False, False, True, True]
    assert reader.voxels_read < 4 * 4 * 8 * 8  # padding is not read


def test_precomputed_raw_is_read_in_z_y_x_with_its_offset_and_resolution(tmp_path):
    import tensorstore as ts

    data = np.random.default_rng(1).integers(0, 255, size=(12, 64, 64), dtype=np.uint8)
    path = tmp_path / "em"
    store = ts.open({
        "driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(path)},
        "create": True,
        "multiscale_metadata": {"type": "image", "data_type": "uint8", "num_channels": 1},
        "scale_metadata": {"size": [64, 64, 12], "resolution": [4, 4, 40], "encoding": "raw",
                           "chunk_size": [16, 16, 4], "voxel_offset": [10, 10, 10]},
    }).result()
    store[..., 0].write(data.transpose(2, 1, 0)).result()  # precomputed is x, y, z
    volume = open_raw(path, "s0")
    assert volume.voxel_size == (40, 4, 4) and volume.offset == (400, 40, 40)
    assert volume.shape == (12, 64, 64) and volume.kind == "precomputed"
    assert open_raw(path, "4_4_40").name == volume.name  # by key, too
    reference = tmp_path / "v.zarr"
    write_zarr_volume(reference, "raw", data, (40, 4, 4), offset=(400, 40, 40))
    locations = _cube_locations(volume, VOXELS)
    expected, _ = crop_cubes(open_raw(reference, "raw"), locations, (4, 8, 8))
    pending, padded = CubeReader(volume, (4, 8, 8), threads=2).submit(locations)
    assert np.array_equal(np.stack([p.result() for p in pending]), expected)
    assert np.array_equal(crop_cubes(volume, locations, (4, 8, 8))[0], expected)
    with pytest.raises(NtclassError, match="has no scale 's3'"):
        open_raw(path, "s3")


def test_hdf5_raw_is_read_by_the_thread_pool(tmp_path):
    import h5py

    data = np.random.default_rng(2).integers(0, 255, size=(12, 64, 64), dtype=np.uint8)
    with h5py.File(tmp_path / "v.hdf", "w") as f:
        f.create_dataset("raw", data=data).attrs["resolution"] = [40, 4, 4]
    volume = open_raw(tmp_path / "v.hdf", "raw")
    locations = _cube_locations(volume, VOXELS)
    reader = CubeReader(volume, (4, 8, 8), threads=2)
    assert reader.store is None
    pending, _ = reader.submit(locations)
    assert np.array_equal(np.stack([p.result() for p in pending]),
                          crop_cubes(volume, locations, (4, 8, 8))[0])


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


def _assemble(cache, begins, shape, later=None, ahead=2):
    from ntclass.cubes import ChunkedReads

    reads = ChunkedReads(cache, begins, begins + shape, later, ahead=ahead)
    cubes, most = [], 0
    for i in range(len(begins)):
        out = np.empty(shape, np.uint8)
        reads.cube(i, out)
        cubes.append(out)
        most = max(most, len(cache.chunks))
    return cubes, most


def test_chunk_cache_decodes_each_chunk_once_across_blocks_within_its_budget(tmp_path):
    from ntclass.cubes import ChunkCache
    from ntclass.volumes import open_tensorstore

    data = np.random.default_rng(3).integers(0, 255, size=(12, 128, 128), dtype=np.uint8)
    write_zarr_volume(tmp_path / "v.zarr", "raw", data, (40, 4, 4), chunks=(4, 16, 16))
    store = open_tensorstore(open_raw(tmp_path / "v.zarr", "raw"))
    shape = np.array((4, 8, 8))
    begins = np.random.default_rng(4).integers(0, (8, 120, 120), size=(200, 3))
    # in spatial order, as a shard's rows come: here columns of chunks along x
    begins = begins[np.lexsort((begins[:, 0], begins[:, 1] // 16, begins[:, 2] // 16))]
    first, second = begins[:100], begins[100:]
    distinct = len({k for ks in ChunkCache(store).keys(begins, begins + shape) for k in ks})

    informed = ChunkCache(store)
    informed.capacity = 40  # less than either block touches
    cubes, _ = _assemble(informed, first, shape, later=(second, second + shape))
    cubes += _assemble(informed, second, shape)[0]
    for cube, b in zip(cubes, begins):
        assert np.array_equal(cube, data[b[0]:b[0] + 4, b[1]:b[1] + 8, b[2]:b[2] + 8])
    forgetful = ChunkCache(store)  # not told which rows come after the first block
    forgetful.capacity = 40
    _assemble(forgetful, first, shape)
    _assemble(forgetful, second, shape)
    assert informed.decoded == distinct < forgetful.decoded

    tight = ChunkCache(store, budget=16 * 4 * 16 * 16)  # 16 chunks; a cube touches <= 8
    assert tight.capacity == 64  # the floor: never fewer than 64 chunks
    tight.capacity = 16
    cubes, most = _assemble(tight, begins, shape, ahead=1)
    for cube, b in zip(cubes, begins):
        assert np.array_equal(cube, data[b[0]:b[0] + 4, b[1]:b[1] + 8, b[2]:b[2] + 8])
    assert most <= 16 + 8  # the budget, or a moment above it by one cube's chunks
    assert tight.decoded > distinct  # dropped chunks were read again


def test_an_empty_split_part_names_the_target_and_the_part(tmp_path):
    from ntclass.sources.kinds import target_of

    manifest = random_synapses(20, extent=(4000, 20000, 30000)).assign(
        split="train", raw_container="v.zarr", raw_dataset="raw")
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    target = target_of({"type": "split", "part": "validation"}, "targets.val")
    settings = Partition(shards=1, synapses_per_shard=None, block_size=(640, 2048, 2048),
                         read_batch_rows=64)
    with pytest.raises(NtclassError, match=r"target 'val' \(the split's validation part\) "
                       "holds no synapse"):
        write_target(str(tmp_path / "manifest.csv"), target, ["a"], None, settings,
                     str(tmp_path / "t"))
    assert not (tmp_path / "t").exists()


def every_residue(voxel_size, shape, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Locations (nm) and their cube begins (nm), which take on every axis every residue
    modulo the voxel size: at integer parts from -3 to 3 (halves with odd and even ones)
    and beyond 2**24 nm (where float32 no longer holds every whole nm), with a fraction of
    a nm that truncation drops."""
    vs, half = np.array(voxel_size), np.array(shape) // 2
    axes = []
    for v in vs:
        ks = [*range(-3, 4), *(2**25 // v + j for j in range(4))]
        axes.append(np.array([k * v + r for k in ks for r in range(v)]))
    n = max(len(a) for a in axes)
    begins = np.stack([np.resize(a, n) for a in axes], axis=1)
    whole = begins + half * vs
    fraction = np.random.default_rng(seed).uniform(0, 0.999, whole.shape)
    return whole + np.where(whole < 0, -fraction, fraction), begins


@pytest.mark.parametrize("voxel_size, shape", [
    ((40, 4, 4), (16, 160, 160)), ((40, 4, 4), (7, 25, 25)), ((8, 6, 5), (8, 24, 24)),
    ((8, 6, 5), (9, 23, 21)), ((1, 2, 3), (8, 24, 24))])
def test_synister_crop_is_daisy_02s_arithmetic_at_every_residue(voxel_size, shape):
    """cube_begins(..., "synister") against Synister's crop written out from the code it
    ran (tests/synister_reference.py): synister/utils.py get_raw at funkelab/synister
    101df82840a7f8ab65d0b65217777b1e60a64148, on daisy/roi.py Roi.snap_to_grid and
    daisy/coordinate.py at funkelab/daisy 5d0e6c9abbab6a86990d58b3e00ac4332a8ced46 (the
    same code as v0.2 and the 0.3-dev branch): float32 begins, np.round."""
    from synister_reference import daisy02_snap_closest

    from ntclass.volumes import RawVolume, cube_begins

    offset = tuple(3 * v for v in voxel_size)
    volume = RawVolume(np.zeros((1, 1, 1), np.uint8), voxel_size, offset, "v")
    locations, begins = every_residue(voxel_size, shape)
    vs, size = np.array(voxel_size), np.array(shape)
    expected, cuts = [], []
    for b in begins:
        snapped, cut = daisy02_snap_closest(tuple(b.tolist()), tuple(size * vs), voxel_size)
        if cut[0] != shape[0]:  # get_raw: nm against voxels, then set_shape(size_nm)
            cut = tuple(size * vs)
        expected.append((np.array(snapped) - offset) // vs)
        cuts.append(np.array(cut) // vs)
    # a cube of another shape (z voxel size 1 nm, begin and end rounded apart) is refused
    other = np.any(np.array(cuts) != size, axis=1)
    assert other.any() == (voxel_size[0] == 1)
    if other.any():
        with pytest.raises(NtclassError, match="not the model's input_shape"):
            cube_begins(volume, locations[other], shape, "synister")
    ours = cube_begins(volume, locations[~other], shape, "synister")
    assert np.array_equal(ours, np.array(expected)[~other])
    begins = begins[~other]
    # the data hold halves with odd and even integer parts, where rounding down differs
    # from np.round, and float32 begins that are not the whole nm they came from
    small = np.abs(begins) < 2**24
    tie = (2 * (begins % vs) == vs) & small
    if (vs % 2 == 0).any():
        assert (tie & (begins // vs % 2 == 0)).any() and (tie & (begins // vs % 2 == 1)).any()
        halves_down = (begins + (vs - 1) // 2) // vs - np.array(offset) // vs
        assert (halves_down != ours).any()
    assert (begins.astype(np.float32) != begins).any()


def test_synister_crop_refuses_what_synister_could_not_cut():
    """At a z voxel size of 1 nm, get_raw keeps the separately snapped shape: an odd cube
    size around a half becomes one voxel larger or smaller, and Synister's np.stack of
    the batch fails. ntclass says so instead of cutting another cube."""
    from synister_reference import synister_get_raw

    from ntclass.volumes import RawVolume, cube_begins

    data = np.zeros((40, 80, 80), np.uint8)
    volume = RawVolume(data, (1, 4, 4), (0, 0, 0), "v")
    fine = np.array([[20.0, 160.0, 160.0]])  # y, x begins at whole voxels
    half = np.array([[20.0, 162.0, 160.0]])  # y begin 2 nm into a 4 nm voxel
    shape = (8, 25, 25)
    assert synister_get_raw(data, (0, 0, 0), (1, 4, 4), fine, shape).shape[1:] == shape
    assert synister_get_raw(data, (0, 0, 0), (1, 4, 4), half, shape).shape[1:] != shape
    with pytest.raises(ValueError):  # Synister's own batch of the two
        synister_get_raw(data, (0, 0, 0), (1, 4, 4), np.concatenate([fine, half]), shape)
    cube_begins(volume, fine, shape, "synister")
    with pytest.raises(NtclassError, match=r"Synister's crop cuts the synapse at \[20.0, "
                       r"162.0, 160.0\] nm a cube of \[8, 2[46], 25\] voxels, not the "
                       r"model's input_shape \[8, 25, 25\] \(1 of 2 synapses\).*crop: ntclass"):
        cube_begins(volume, np.concatenate([fine, half]), shape, "synister")
    off_grid = RawVolume(data, (40, 4, 4), (20, 0, 0), "v.zarr/raw")
    with pytest.raises(NtclassError, match=r"raw 'v.zarr/raw' has offset \[20, 0, 0\] nm, "
                       r"not a multiple of its voxel size \[40, 4, 4\]"):
        cube_begins(off_grid, fine, (8, 24, 24), "synister")
    # the ntclass convention is unchanged: the voxel that holds the location is the centre
    assert np.array_equal(cube_begins(off_grid, half, shape, "ntclass"),
                          off_grid.to_voxel(half) - np.array(shape) // 2)



def test_a_target_sorted_past_its_memory_limit_is_the_one_sorted_in_memory(tmp_path,
                                                                           monkeypatch):
    """The target step's sort spills beyond its DuckDB pool (SORT_MEMORY): the shards come
    out the same, row for row."""
    import ntclass.predict.targets as targets

    source = write_table(tmp_path, random_synapses(300_000, seed=1))
    settings = Partition(shards=3, synapses_per_shard=None, block_size=(640, 2048, 2048),
                         read_batch_rows=100_000)
    limits = []
    connect = targets.duckdb_connection

    def recorded(*args, **kwargs):
        limits.append(kwargs.get("memory_limit"))
        return connect(*args, **kwargs)

    monkeypatch.setattr(targets, "duckdb_connection", recorded)
    written = {}
    for limit in ("4GB", "64MB"):
        monkeypatch.setattr(targets, "SORT_MEMORY", limit)
        out = tmp_path / limit
        write_target(None, source, ["a"], None, settings, str(out))
        written[limit] = [read_shard_rows(out, i) for i in range(3)]
        assert limit in limits  # the sort's connection has the step's own pool
    for in_memory, spilled in zip(written["4GB"], written["64MB"], strict=True):
        pd.testing.assert_frame_equal(in_memory, spilled)
        # every synapse once in each shard
        assert in_memory["synapse_id"].is_unique
