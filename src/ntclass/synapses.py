"""Synapse sources -> one synapse table.

The table has one row per pre-synaptic site: `synapse_id`, location `z, y, x` in nm (world
coordinates), where to read raw (`raw_container`, `raw_dataset`), `nt` (class name, or missing),
`pre_id` and `post_id` (neuron ids, missing where unknown) and optional grouping columns
(`hemilineage`, `brain_region`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .errors import NtclassError
from .volumes import HDF5_SUFFIXES, open_raw

LOCATION = ["z", "y", "x"]
CORE_COLUMNS = ["synapse_id", *LOCATION, "raw_container", "raw_dataset", "nt", "pre_id",
                "post_id"]
OPTIONAL_COLUMNS = ["hemilineage", "brain_region"]


def read_table_file(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV or Parquet table."""
    path = str(path)
    if not os.path.exists(path):
        raise NtclassError(f"synapse table '{path}' does not exist")
    try:
        if path.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as e:  # pandas raises many types; the user needs the file name
        raise NtclassError(f"cannot read synapse table '{path}': {e}") from None


def normalise(df: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Give a raw synapse frame the canonical columns and dtypes, checking its values."""
    missing = [c for c in ["synapse_id", *LOCATION] if c not in df.columns]
    if missing:
        raise NtclassError(f"{origin} has no column '{missing[0]}'; expected columns "
                           f"synapse_id, z, y, x (nm) and optionally nt, pre_id, post_id")
    df = df.copy()
    for col in LOCATION:
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise NtclassError(
                f"{origin}: column '{col}' has a missing or non-numeric value at row {row}")
        if (values < 0).any():
            row = int(np.flatnonzero((values < 0).to_numpy())[0])
            raise NtclassError(
                f"{origin}: column '{col}' has a negative coordinate at row {row}; "
                "locations are expected in nm, >= 0")
        df[col] = values.astype(np.float64)
    ids = pd.to_numeric(df["synapse_id"], errors="coerce")
    if ids.isna().any():
        raise NtclassError(f"{origin}: column 'synapse_id' must hold integers")
    df["synapse_id"] = ids.astype(np.int64)
    dup = df["synapse_id"].duplicated()
    if dup.any():
        raise NtclassError(f"{origin}: synapse_id {int(df['synapse_id'][dup].iloc[0])} "
                           "occurs more than once; synapse ids must be unique")
    for col in ["pre_id", "post_id"]:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64") if col in df \
            else pd.array([pd.NA] * len(df), dtype="Int64")
    if "nt" not in df:
        df["nt"] = pd.NA
    df["nt"] = df["nt"].astype("string")
    for col in OPTIONAL_COLUMNS:
        if col in df:
            df[col] = df[col].astype("string")
    keep = CORE_COLUMNS + [c for c in OPTIONAL_COLUMNS if c in df]
    return df[keep].reset_index(drop=True)


def check_classes(df: pd.DataFrame, classes: Sequence[str], origin: str) -> None:
    labelled = df["nt"].dropna()
    unknown = sorted(set(labelled) - set(classes))
    if unknown:
        raise NtclassError(f"{origin}: NT '{unknown[0]}' is not one of the configured classes "
                           f"{list(classes)}")


def check_inside(df: pd.DataFrame, voxel_size: Sequence[int] | None) -> None:
    """Every synapse lies inside the raw volume it is read from."""
    for (container, dataset), rows in df.groupby(["raw_container", "raw_dataset"], sort=False):
        vol = open_raw(container, dataset, voxel_size)
        vox = vol.to_voxel(rows[LOCATION].to_numpy())
        outside = np.any((vox < 0) | (vox >= np.array(vol.shape)), axis=1)
        if outside.any():
            row = rows[outside].iloc[0]
            raise NtclassError(
                f"synapse {int(row.synapse_id)} at (z, y, x) = "
                f"({row.z:g}, {row.y:g}, {row.x:g}) nm lies outside the raw volume "
                f"'{container}/{dataset}' (offset {list(vol.offset)} nm, shape "
                f"{list(vol.shape)} voxels of {list(vol.voxel_size)} nm)")


def read_table_source(table: str, raw_container: str, raw_dataset: str,
                      classes: Sequence[str], voxel_size: Sequence[int] | None = None
                      ) -> pd.DataFrame:
    """A CSV/Parquet synapse table over one raw volume."""
    df = read_table_file(table)
    df["raw_container"] = str(raw_container)
    df["raw_dataset"] = raw_dataset
    df = normalise(df, f"synapse table '{table}'")
    check_classes(df, classes, f"synapse table '{table}'")
    check_inside(df, voxel_size)
    return df


def _strings(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def read_cremi_file(path: Path, nt: str | None) -> pd.DataFrame:
    """The pre-synaptic sites of one CREMI-format file (locations made absolute)."""
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise NtclassError(f"CREMI file '{path}' is not a readable HDF5 file "
                           "(corrupt or truncated?)") from None
    with f:
        if "volumes/raw" not in f:
            raise NtclassError(f"CREMI file '{path}' has no dataset 'volumes/raw'")
        for key in ["annotations/ids", "annotations/locations", "annotations/types"]:
            if key not in f:
                raise NtclassError(f"CREMI file '{path}' has no dataset '{key}'")
        raw_offset = np.asarray(f["volumes/raw"].attrs.get("offset", (0, 0, 0)), float)
        offset = np.asarray(f["annotations"].attrs.get("offset", raw_offset), float)
        ids = f["annotations/ids"][:].astype(np.int64)
        locs = f["annotations/locations"][:].reshape(-1, 3) + offset
        types = _strings(f["annotations/types"][:])
        neurons = (f["annotations/neuron_ids"][:].astype(np.int64)
                   if "annotations/neuron_ids" in f else None)
        hemis = (_strings(f["annotations/hemilineages"][:])
                 if "annotations/hemilineages" in f else None)
        partners = (f["annotations/presynaptic_site/partners"][:].astype(np.int64)
                    if "annotations/presynaptic_site/partners" in f else np.zeros((0, 2), int))
    index = {a: i for i, a in enumerate(ids)}
    post_of = {int(pre): int(post) for pre, post in partners}
    rows = []
    for i, (aid, kind) in enumerate(zip(ids, types)):
        if kind != "presynaptic_site":
            continue
        post_idx = index.get(post_of.get(int(aid), -1))
        rows.append({
            "synapse_id": int(aid), "z": locs[i, 0], "y": locs[i, 1], "x": locs[i, 2],
            "raw_container": str(path), "raw_dataset": "volumes/raw", "nt": nt,
            "pre_id": neurons[i] if neurons is not None else pd.NA,
            "post_id": neurons[post_idx] if neurons is not None and post_idx is not None
            else pd.NA,
            "hemilineage": hemis[i] if hemis is not None and hemis[i] else pd.NA,
        })
    if not rows:
        raise NtclassError(f"CREMI file '{path}' holds no presynaptic_site annotation")
    return pd.DataFrame(rows)


def _cremi_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in HDF5_SUFFIXES)


def read_cremi_source(directory: str, classes: Sequence[str], labelled: bool = True,
                      voxel_size: Sequence[int] | None = None) -> pd.DataFrame:
    """Per-class folders of CREMI files (`directory/<class>/*.hdf`), or, when `labelled`
    is false, one folder of unlabelled CREMI files."""
    root = Path(directory)
    if not root.is_dir():
        raise NtclassError(f"CREMI folder '{directory}' does not exist")
    frames = []
    if labelled:
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        extra = [p.name for p in folders if p.name not in classes]
        if extra:
            raise NtclassError(
                f"class folder '{root / extra[0]}' is not one of the configured classes "
                f"{list(classes)}")
        if not folders:
            raise NtclassError(f"CREMI folder '{directory}' has no class folders")
        for folder in folders:
            files = _cremi_files(folder)
            if not files:
                raise NtclassError(f"class folder '{folder}' holds no CREMI files "
                                   f"(*{', *'.join(HDF5_SUFFIXES)})")
            frames += [read_cremi_file(p, folder.name) for p in files]
    else:
        files = _cremi_files(root)
        if not files:
            raise NtclassError(f"CREMI folder '{directory}' holds no CREMI files")
        frames += [read_cremi_file(p, None) for p in files]
    df = normalise(pd.concat(frames, ignore_index=True), f"CREMI folder '{directory}'")
    check_inside(df, voxel_size)
    return df


def read_source(source: dict, classes: Sequence[str],
                voxel_size: Sequence[int] | None = None) -> pd.DataFrame:
    """Dispatch on `source['type']` (the config's `source` section)."""
    kind = source["type"]
    if kind == "table":
        return read_table_source(source["table"], source["raw_container"],
                                 source["raw_dataset"], classes, voxel_size)
    if kind == "cremi":
        return read_cremi_source(source["directory"], classes,
                                 labelled=source.get("labelled", True), voxel_size=voxel_size)
    if kind == "mongodb":
        from .mongo import read_mongo_source

        return read_mongo_source(source, classes, voxel_size)
    raise NtclassError(f"source type '{kind}' is unknown; expected table, cremi or mongodb")
