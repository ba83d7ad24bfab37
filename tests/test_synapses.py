import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CLASSES

from ntclass.errors import NtclassError
from ntclass.sources.synapses import read_cremi_source, read_table_source


def read_demo_table(demo, path=None):
    return read_table_source(path or demo["table"], demo["volume"], "volumes/raw/s0",
                             CLASSES, (40, 4, 4))


def test_table_and_cremi_sources_agree(tiny_demo):
    table = read_demo_table(tiny_demo)
    cremi = read_cremi_source(tiny_demo["cremi"], CLASSES, voxel_size=(40, 4, 4))
    assert len(table) == len(cremi)
    merged = table.merge(cremi, on="synapse_id", suffixes=("", "_c"))
    assert len(merged) == len(table)
    for col in ["z", "y", "x"]:
        assert np.allclose(merged[col], merged[f"{col}_c"])
    for col in ["nt", "pre_id", "post_id", "hemilineage"]:
        assert (merged[col] == merged[f"{col}_c"]).all(), col
    assert (cremi["raw_dataset"] == "volumes/raw").all()
    assert cremi["raw_container"].str.endswith(".hdf").all()


def test_parquet_table(tiny_demo, tmp_path):
    pq = tmp_path / "s.parquet"
    pd.read_csv(tiny_demo["table"]).to_parquet(pq)
    assert read_demo_table(tiny_demo, pq).equals(read_demo_table(tiny_demo))


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.assign(z=t["z"].where(t.index != 3)), "column 'z' holds no value at row"),
    (lambda t: t.assign(y=t["y"].where(t.index != 2, -5.0)), "negative coordinate at row 2"),
    (lambda t: t.assign(synapse_id=t["synapse_id"].where(t.index != 1, t["synapse_id"][0])),
     "occurs more than once"),
    (lambda t: t.assign(nt=t["nt"].where(t.index != 0, "histamine")),
     "NT 'histamine' is not one of the configured classes"),
    (lambda t: t.assign(x=t["x"].where(t.index != 4, 1e7)), "lies outside the raw volume"),
    (lambda t: t.drop(columns=["x"]), "has no column 'x'"),
])
def test_bad_tables_are_refused(tiny_demo, tmp_path, edit, message):
    bad = tmp_path / "bad.csv"
    edit(pd.read_csv(tiny_demo["table"])).to_csv(bad, index=False)
    with pytest.raises(NtclassError, match=message) as err:
        read_demo_table(tiny_demo, bad)
    assert "bad.csv" in str(err.value) or "synapse " in str(err.value)


def test_cremi_folder_problems(tiny_demo, tmp_path):
    with pytest.raises(NtclassError, match="CREMI folder '.*missing' does not exist"):
        read_cremi_source(str(tmp_path / "missing"), CLASSES)
    copy = tmp_path / "cremi"
    shutil.copytree(tiny_demo["cremi"], copy)
    (copy / "dopamine").mkdir()
    with pytest.raises(NtclassError, match="class folder '.*dopamine' is not one of"):
        read_cremi_source(str(copy), CLASSES)
    with pytest.raises(NtclassError, match="class folder '.*dopamine' holds no CREMI files"):
        read_cremi_source(str(copy), (*CLASSES, "dopamine"))


def test_a_synapse_id_in_two_cremi_files_names_both(tiny_demo, tmp_path):
    copy = tmp_path / "cremi"
    shutil.copytree(tiny_demo["cremi"], copy)
    original = sorted((copy / "gaba").glob("*.hdf"))[0]
    twin = copy / "gaba" / f"copy_of_{original.name}"
    shutil.copy(original, twin)
    with pytest.raises(NtclassError, match=f"is in both '{original}' and '{twin}'"):
        read_cremi_source(str(copy), CLASSES)
    twin.unlink()
    in_two_folders = copy / "glutamate" / original.name
    shutil.copy(original, in_two_folders)
    with pytest.raises(NtclassError, match=f"the file '{original.name}' sits in two class "
                       r"folders .* would have two labels \(gaba and glutamate\)"):
        read_cremi_source(str(copy), CLASSES)


def test_corrupt_cremi_file(tiny_demo, tmp_path):
    copy = tmp_path / "cremi"
    shutil.copytree(tiny_demo["cremi"], copy)
    victim = sorted((copy / "gaba").glob("*.hdf"))[0]
    victim.write_bytes(victim.read_bytes()[:500])
    with pytest.raises(NtclassError, match=f"'{victim}' is not a readable HDF5 file"):
        read_cremi_source(str(copy), CLASSES)


def test_unlabelled_cremi_folder(tiny_demo, tmp_path):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for p in sorted(Path(tiny_demo["cremi"], "gaba").glob("*.hdf"))[:3]:
        shutil.copy(p, folder / p.name)
    table = read_cremi_source(str(folder), CLASSES, labelled=False)
    assert len(table) == 3 and table["nt"].isna().all()
