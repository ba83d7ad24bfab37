"""Bad input through the real workflow: one clear sentence naming the file, key or value,
a non-zero exit, and no output that looks complete."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import h5py
import pandas as pd
import pytest
import zarr
from conftest import CLASSES
from workflow_helpers import TINY_CONFIG, snakemake, write_config

MANIFEST = "results/split/manifest.csv"


def table_config(demo, table) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["classes"] = list(CLASSES)
    config["split"] = {"method": "random", "seed": 0}
    config["source"] = {"type": "table", "table": str(table), "raw_container": demo["volume"],
                        "raw_dataset": "volumes/raw/s0"}
    return config


def cremi_config(demo, tmp_path, edit) -> dict:
    folder = tmp_path / "cremi"
    shutil.copytree(demo["cremi"], folder)
    edit(folder)
    config = table_config(demo, demo["table"])
    config["source"] = {"type": "cremi", "directory": str(folder)}
    return config


def edited_table(demo, tmp_path, edit) -> dict:
    path = tmp_path / "synapses.csv"
    edit(pd.read_csv(demo["table"])).to_csv(path, index=False)
    return table_config(demo, path)


def first_file(folder: Path, nt: str = "gaba") -> Path:
    return sorted((folder / nt).glob("*.hdf"))[0]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:600])


def delete_dataset(path: Path, name: str) -> None:
    with h5py.File(path, "a") as f:
        del f[name]


def empty_folder(folder: Path) -> None:
    for path in folder.glob("*.hdf"):
        path.unlink()


def truncated_hdf5_raw(demo, tmp_path) -> dict:
    raw = zarr.open(demo["volume"], mode="r")["volumes/raw/s0"]
    path = tmp_path / "raw.hdf"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=raw[:], chunks=(8, 64, 64))
        f["raw"].attrs.update(dict(raw.attrs))
    truncate(path)
    config = table_config(demo, demo["table"])
    config["source"].update(raw_container=str(path), raw_dataset="raw")
    return config


def given_split(demo, tmp_path, drop: int) -> dict:
    table = pd.read_csv(demo["table"])
    parts = table[["synapse_id"]].assign(
        split=(["train", "validation", "test"] * len(table))[:len(table)])
    parts.iloc[drop:].to_csv(tmp_path / "split.csv", index=False)
    config = table_config(demo, demo["table"])
    config["split"] = {"method": "given", "assignment": str(tmp_path / "split.csv")}
    return config


CASES = {
    "truncated CREMI file": (
        lambda d, t: cremi_config(d, t, lambda f: truncate(first_file(f))),
        r"CREMI file '.*/gaba/\d+\.hdf' is not a readable HDF5 file"),
    "CREMI file without raw": (
        lambda d, t: cremi_config(d, t, lambda f: delete_dataset(first_file(f), "volumes/raw")),
        r"CREMI file '.*\.hdf' has no dataset 'volumes/raw'"),
    "CREMI file without locations": (
        lambda d, t: cremi_config(
            d, t, lambda f: delete_dataset(first_file(f), "annotations/locations")),
        r"CREMI file '.*\.hdf' has no dataset 'annotations/locations'"),
    "empty class folder": (
        lambda d, t: cremi_config(d, t, lambda f: empty_folder(f / "glutamate")),
        r"class folder '.*/glutamate' holds no CREMI files"),
    "truncated HDF5 raw": (truncated_hdf5_raw, r"cannot read raw container '.*raw\.hdf'"),
    "synapse outside the volume": (
        lambda d, t: edited_table(d, t, lambda s: s.assign(x=s["x"].where(s.index != 4, 1e7))),
        r"synapse \d+ at \(z, y, x\) = .* lies outside the raw volume"),
    "duplicate synapse ids": (
        lambda d, t: edited_table(d, t, lambda s: s.assign(
            synapse_id=s["synapse_id"].where(s.index != 1, s["synapse_id"][0]))),
        r"synapse table '.*synapses\.csv': synapse_id \d+ occurs more than once"),
    "NaN coordinate": (
        lambda d, t: edited_table(d, t, lambda s: s.assign(z=s["z"].where(s.index != 3))),
        r"synapses\.csv': column 'z' has a missing or non-numeric value at row 3"),
    "negative coordinate": (
        lambda d, t: edited_table(d, t, lambda s: s.assign(y=s["y"].where(s.index != 2, -8.0))),
        r"synapses\.csv': column 'y' has a negative coordinate at row 2"),
    "voxel size unlike the container's": (
        lambda d, t: {**table_config(d, d["table"]), "voxel_size": [40, 8, 8]},
        r"voxel_size \[40, 8, 8\] in the config disagrees with \[40, 4, 4\] stored in "
        r"'.*volume\.zarr/volumes/raw/s0'"),
    "split file that does not match the data": (
        lambda d, t: given_split(d, t, drop=2),
        r"split file '.*split\.csv' does not match the data: labelled synapse \d+ "
        r"\(and 1 more\) of the synapse source has no part in it"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_stops_the_split_with_one_sentence(tiny_demo, tmp_path, case):
    make_config, sentence = CASES[case]
    write_config(tmp_path, make_config(tiny_demo, tmp_path))
    result = snakemake(tmp_path, MANIFEST, check=False, timeout=300)
    assert result.returncode != 0
    said = [line for line in result.stderr.splitlines() if line.startswith("ntclass: ")]
    assert len(said) == 1, result.stderr[-3000:]
    assert re.search(sentence, said[0]), said[0]
    assert "Traceback" not in result.stderr + (tmp_path / "logs/split.log").read_text()
    assert not (tmp_path / MANIFEST).exists()
    assert not (tmp_path / "results/split/summary.csv").exists()
    assert not list((tmp_path / "results/split").glob(".*tmp*"))


def test_a_given_split_runs_through_the_workflow(tiny_demo, tmp_path):
    config = given_split(tiny_demo, tmp_path, drop=0)
    write_config(tmp_path, config)
    snakemake(tmp_path, MANIFEST)
    manifest = pd.read_csv(tmp_path / MANIFEST)
    given = pd.read_csv(tmp_path / "split.csv")
    assert manifest[["synapse_id", "split"]].equals(given)
    summary = pd.read_csv(tmp_path / "results/split/summary.csv")
    assert summary[["train", "validation", "test"]].to_numpy().sum() == len(given)
