import h5py
import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import CLASSES, TINY

from ntclass.demo import DemoSpec, generate
from ntclass.errors import NtclassError


def test_same_seed_same_data_other_seed_other_data():
    small = DemoSpec(classes=CLASSES[:2], shape=(24, 320, 320), neurons_per_class=2,
                     synapses_per_neuron=(2, 3), seed=5)
    raw_a, syn_a = generate(small)
    raw_b, syn_b = generate(small)
    assert np.array_equal(raw_a, raw_b)
    pd.testing.assert_frame_equal(syn_a, syn_b)
    raw_c, _ = generate(DemoSpec(**{**small.__dict__, "seed": 6}))
    assert not np.array_equal(raw_a, raw_c)


def test_one_nt_per_neuron_and_hemilineage(tiny_demo):
    table = pd.read_csv(tiny_demo["table"])
    assert set(table["nt"]) == set(CLASSES)
    assert table.groupby("pre_id")["nt"].nunique().max() == 1
    assert table.groupby("hemilineage")["nt"].nunique().max() == 1
    assert (table["pre_id"] != table["post_id"]).all()
    sizes = table.groupby("pre_id").size()
    assert sizes.min() >= TINY.synapses_per_neuron[0]
    assert sizes.max() <= TINY.synapses_per_neuron[1]


def test_volume_attributes_and_anisotropy(tiny_demo):
    raw = zarr.open(tiny_demo["volume"], mode="r")["volumes/raw/s0"]
    assert raw.shape == TINY.shape and raw.dtype == np.uint8
    assert list(raw.attrs["voxel_size"]) == [40, 4, 4]
    assert list(raw.attrs["resolution"]) == [40, 4, 4]
    assert list(raw.attrs["offset"]) == [0, 0, 0]


def test_cremi_crops_match_the_volume(tiny_demo):
    table = pd.read_csv(tiny_demo["table"]).set_index("synapse_id")
    raw = zarr.open(tiny_demo["volume"], mode="r")["volumes/raw/s0"][:]
    for nt in CLASSES[:2]:
        files = sorted((__import__("pathlib").Path(tiny_demo["cremi"]) / nt).glob("*.hdf"))
        assert files
        with h5py.File(files[0], "r") as f:
            crop = f["volumes/raw"][:]
            offset = np.array(f["volumes/raw"].attrs["offset"]) / (40, 4, 4)
            sid = int(f["annotations/ids"][0])
            loc = f["annotations/locations"][0] + f["volumes/raw"].attrs["offset"]
        begin = offset.astype(int)
        expected = raw[tuple(slice(b, b + s) for b, s in zip(begin, crop.shape))]
        assert np.array_equal(crop, expected)
        assert np.allclose(loc, table.loc[sid, ["z", "y", "x"]].to_numpy(float))
        assert table.loc[sid, "nt"] == nt


def test_synapses_differ_from_background(tiny_demo):
    """The synapse neighbourhoods carry signal: darker structures than random places."""
    table = pd.read_csv(tiny_demo["table"])
    raw = zarr.open(tiny_demo["volume"], mode="r")["volumes/raw/s0"][:]
    vox = (table[["z", "y", "x"]].to_numpy() / (40, 4, 4)).astype(int)
    near = [raw[z, y - 8:y + 8, x - 8:x + 8].std() for z, y, x in vox]
    rng = np.random.default_rng(0)
    far = [raw[rng.integers(2, 22), y:y + 16, x:x + 16].std()
           for y, x in rng.integers(40, 330, size=(len(vox), 2))]
    assert np.mean(near) > 1.3 * np.mean(far)


def test_unknown_class_is_refused():
    with pytest.raises(NtclassError, match="'histamin'"):
        generate(DemoSpec(classes=("gaba", "histamin"), shape=(16, 256, 256)))


def test_too_many_synapses_for_the_volume_is_refused():
    with pytest.raises(NtclassError, match="demo.shape"):
        generate(DemoSpec(classes=CLASSES, shape=(16, 128, 128), neurons_per_class=20))
