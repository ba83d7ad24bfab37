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


def raw_copy(demo, tmp_path, transform=lambda raw: raw, attrs: dict | None = None,
             intensity_range=None) -> dict:
    """The table over a copy of the demo raw, its values and attributes changed."""
    raw = zarr.open(demo["volume"], mode="r")["volumes/raw/s0"]
    root = zarr.open(str(tmp_path / "raw.zarr"), mode="w")
    copy_ = root.create_dataset("volumes/raw/s0", data=transform(raw[:]), chunks=(16, 128, 128))
    copy_.attrs.update(dict(raw.attrs) if attrs is None else attrs)
    config = table_config(demo, demo["table"])
    config["source"]["raw_container"] = str(tmp_path / "raw.zarr")
    if intensity_range is not None:
        config["source"]["intensity_range"] = intensity_range
    return config


def in_voxels(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(z=table["z"] // 40, y=table["y"] // 4, x=table["x"] // 4)


def cremi_in_voxels(folder: Path, files: list[Path] | None = None) -> None:
    for path in files or folder.glob("*/*.hdf"):
        with h5py.File(path, "a") as f:
            f["annotations/locations"][...] = f["annotations/locations"][:] // [40, 4, 4]


def latin1_table(demo, tmp_path) -> dict:
    """The demo table with a hemilineage named in Latin-1 on its second data row."""
    table = pd.read_csv(demo["table"]).assign(hemilineage="DA1")
    table.loc[1, "hemilineage"] = "DAé"
    path = tmp_path / "synapses.csv"
    path.write_bytes(table.to_csv(index=False).encode("latin-1"))
    return table_config(demo, path)


def excel_table(demo, tmp_path) -> dict:
    """An .xlsx workbook (a zip archive) under a .csv name, as a download often is."""
    import zipfile

    path = tmp_path / "synapses.csv"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
    return table_config(demo, path)


def swap_types(path: Path) -> None:
    with h5py.File(path, "a") as f:
        f["annotations/types"][...] = f["annotations/types"][:][::-1]


def separated_by(demo, tmp_path, sep: str) -> dict:
    path = tmp_path / "synapses.csv"
    pd.read_csv(demo["table"]).to_csv(path, index=False, sep=sep)
    return table_config(demo, path)


def header_only(demo, tmp_path) -> dict:
    path = tmp_path / "synapses.csv"
    pd.read_csv(demo["table"]).iloc[:0].to_csv(path, index=False)
    return table_config(demo, path)


def grouped_without(demo, tmp_path, column: str) -> dict:
    config = edited_table(demo, tmp_path, lambda s: s.drop(columns=column))
    config["split"] = {"method": "grouped", "seed": 0, "group_by": column}
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
        r"synapses\.csv': column 'z' holds no value at row 3; expected a number \(nm\)"),
    "decimal commas": (
        lambda d, t: edited_table(d, t, lambda s: s.assign(
            x=s["x"].astype(str).where(s.index != 4, "1234,5"))),
        r"synapses\.csv': column 'x' holds '1234,5' at row 4; it looks like a decimal comma: "
        r"write numbers with decimal points"),
    "a CSV in Latin-1": (
        lambda d, t: latin1_table(d, t),
        r"synapses\.csv' is not UTF-8 text: line 3 holds byte 0xe9 \(Latin-1 or Windows "
        r"text\?\); save it as UTF-8"),
    "a table given as the raw container": (
        lambda d, t: {**table_config(d, d["table"]),
                      "source": {**table_config(d, d["table"])["source"],
                                 "raw_container": d["table"]}},
        r"raw container '.*synapses\.csv' is a table; raw_container names the raw EM volume"),
    "an Excel workbook named .csv": (
        lambda d, t: excel_table(d, t),
        r"synapses\.csv' is an Excel workbook, not a CSV; save it as CSV UTF-8"),
    "negative coordinate": (
        lambda d, t: edited_table(d, t, lambda s: s.assign(y=s["y"].where(s.index != 2, -8.0))),
        r"synapses\.csv': column 'y' has a negative coordinate at row 2"),
    "voxel size unlike the container's": (
        lambda d, t: {**table_config(d, d["table"]), "voxel_size": [40, 8, 8]},
        r"voxel_size \[40, 8, 8\] in the config disagrees with \[40, 4, 4\] stored in "
        r"'.*volume\.zarr/volumes/raw/s0'"),
    # raw as labs hold it
    "float raw without an intensity range": (
        lambda d, t: raw_copy(d, t, lambda r: (r / 255).astype("float32")),
        r"raw dataset '.*raw\.zarr/volumes/raw/s0' has floating-point dtype float32, whose "
        r"range says nothing about its intensities; set intensity_range"),
    "64-bit integer raw without an intensity range": (
        lambda d, t: raw_copy(d, t, lambda r: r.astype("int64")),
        r"raw dataset '.*' has wide integer dtype int64, .* set intensity_range"),
    "intensity range from high to low": (
        lambda d, t: raw_copy(d, t, intensity_range=[255, 0]),
        r"intensity_range \[255, 0\] for raw '.*raw\.zarr/volumes/raw/s0' must go from a "
        r"low to a higher value"),
    "raw dataset path naming a group": (
        lambda d, t: {**table_config(d, d["table"]), "source": {
            **table_config(d, d["table"])["source"], "raw_dataset": "volumes/raw"}},
        r"raw dataset 'volumes/raw' in '.*volume\.zarr' is a group, not an array; name an "
        r"array inside it \(it holds 's0'\)"),
    "no voxel size stored or configured": (
        lambda d, t: raw_copy(d, t, attrs={"offset": [0, 0, 0]}),
        r"raw dataset '.*raw\.zarr/volumes/raw/s0' has no voxel_size/resolution attribute; "
        r"set voxel_size in the config"),
    "non-integer stored resolution": (
        lambda d, t: {**raw_copy(d, t, attrs={"resolution": [40.0, 4.4, 4.4]}),
                      "voxel_size": [40, 4, 4]},
        r"voxel_size \[40, 4, 4\] in the config disagrees with \[40, 4.4, 4.4\] stored in "),
    "non-integer stored resolution, none configured": (
        lambda d, t: raw_copy(d, t, attrs={"resolution": [40.0, 4.4, 4.4]}),
        r"voxel size \[40, 4.4, 4.4\] of '.*' is not in whole, positive nm"),
    # locations in the wrong unit
    "table in voxels": (
        lambda d, t: edited_table(d, t, in_voxels),
        r"synapse table '.*synapses\.csv': all \d+ synapse locations lie within the first "
        r"1/40, 1/4, 1/4 \(z, y, x\) of their raw volume; locations are expected in nm"),
    "CREMI files in voxels": (
        lambda d, t: cremi_config(d, t, cremi_in_voxels),
        r"CREMI folder '.*cremi': the synapse location in raw volume '.*\.hdf' "
        r"\(volumes/raw\) lies within .* these look like voxel indices"),
    "one CREMI file in voxels, the others in nm": (
        lambda d, t: cremi_config(d, t, lambda f: cremi_in_voxels(f, [first_file(f)])),
        r"CREMI folder '.*cremi': the synapse location in raw volume "
        r"'.*/gaba/\d+\.hdf' \(volumes/raw\) lies within .* these look like voxel indices"),
    # ids
    "non-numeric pre_id": (
        lambda d, t: edited_table(d, t, lambda s: s.assign(
            pre_id=s["pre_id"].astype(object).where(s.index != 5, "DA1_lPN"))),
        r"synapses\.csv': column 'pre_id' holds 'DA1_lPN' at row 5, not a whole number"),
    "synapse id above 2^64 - 1": (
        lambda d, t: edited_table(d, t, lambda s: s.assign(
            synapse_id=s["synapse_id"].astype(object).where(s.index != 2, 2**64))),
        r"column 'synapse_id' holds '18446744073709551616' at row 2, outside 0 to 2\^64 - 1"),
    # CREMI files
    "CREMI partners contradicting types": (
        lambda d, t: cremi_config(d, t, lambda f: swap_types(first_file(f))),
        r"CREMI file '.*/gaba/\d+\.hdf': annotations/presynaptic_site/partners pairs "
        r"\(\d+, \d+\) but annotations/types calls \d+ a 'postsynaptic_site'"),
    # tables
    "semicolon-separated table": (
        lambda d, t: separated_by(d, t, ";"),
        r"synapse table '.*synapses\.csv' was read as comma-separated, but its header "
        r"'synapse_id;.*' looks separated by semicolons"),
    "tab-separated table": (
        lambda d, t: separated_by(d, t, "\t"), r"looks separated by tabs"),
    "table with a header only": (
        header_only, r"synapse table '.*synapses\.csv' has a header but no rows"),
    "grouped split without its column": (
        lambda d, t: grouped_without(d, t, "pre_id"),
        r"synapse table '.*synapses\.csv' has no column 'pre_id' \(or no value in it\), "
        r"which the grouped split \(split.group_by\) needs"),
    "split file that does not match the data": (
        lambda d, t: given_split(d, t, drop=2),
        r"split file '.*split\.csv' does not match the data: labelled synapse \d+ "
        r"\(and 1 more\) of the synapse source has no part in it"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_stops_the_split_with_one_sentence(tiny_demo, tmp_path, case):
    make_config, sentence = CASES[case]
    write_config(tmp_path, make_config(tiny_demo, tmp_path))
    # as the profiles run it: a failed job's log is printed after Snakemake's error
    result = snakemake(tmp_path, MANIFEST, "--show-failed-logs", check=False, timeout=300)
    assert result.returncode != 0
    terminal = (result.stdout + result.stderr).splitlines()
    said = [line for line in terminal if line.startswith("ntclass: ")]
    assert len(said) == 1, result.stderr[-3000:]
    assert re.search(sentence, said[0]), said[0]
    log = (tmp_path / "logs/split.log").read_text()
    assert said[0].removeprefix("ntclass: ") in log  # the log keeps the sentence too
    assert "Traceback" not in result.stderr + log
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
