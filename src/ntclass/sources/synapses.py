"""Synapse sources -> one synapse table.

The table has one row per pre-synaptic site: `synapse_id`, location `z, y, x` in nm (world
coordinates), where to read raw (`raw_container`, `raw_dataset`), `nt` (class name, or missing),
`pre_id` and `post_id` (neuron ids, missing where unknown) and optional grouping columns
(`hemilineage`, `brain_region`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ntclass.errors import NtclassError, unexpanded
from ntclass.ids import ID_COLUMNS, missing_ids, to_ids
from ntclass.intensity import intensity_of
from ntclass.io import NULLABLE_INTEGERS
from ntclass.volumes import HDF5_SUFFIXES, open_raw_cached

LOCATION = ["z", "y", "x"]
CORE_COLUMNS = ["synapse_id", *LOCATION, "raw_container", "raw_dataset", "nt", "pre_id",
                "post_id"]
# `nt_candidates`: the known NTs of a neuron with several, whose synapses stay unlabelled;
# `nt_other`: an NT that is not among the classes (other_nts: leave_out), left out likewise;
# `stored_split`: the part of a split stored in the source (Synister's `splits.<name>`)
OPTIONAL_COLUMNS = ["hemilineage", "brain_region", "nt_candidates", "nt_other",
                    "stored_split"]


def read_table_file(path: str | os.PathLike, what: str = "synapse table") -> pd.DataFrame:
    """Read a CSV or Parquet table whole (see `iter_table_file`)."""
    return pd.concat(list(iter_table_file(path, what)), ignore_index=True)


def iter_table_file(path: str | os.PathLike, what: str = "synapse table",
                    batch_rows: int = 1_000_000) -> Iterator[pd.DataFrame]:
    """A CSV or Parquet table in batches of at most `batch_rows` rows; id columns are read
    as text (CSV) or exact nullable integers (Parquet) so that no id is ever rounded
    through a float."""
    path = str(path)
    if not os.path.exists(path):
        raise NtclassError(f"{what} '{path}' does not exist{unexpanded(path)}")
    _check_is_text_table(path, what)
    try:
        if path.endswith((".parquet", ".pq")):
            batches = (b.to_pandas(types_mapper=NULLABLE_INTEGERS.get) for b in
                       pq.ParquetFile(path).iter_batches(batch_size=batch_rows))
        else:
            batches = pd.read_csv(path, dtype={c: "string" for c in ID_COLUMNS},
                                  chunksize=batch_rows)
        first = True
        for df in batches:
            if first:
                _check_separator(df, path, what)
            if df.empty and first:
                raise NtclassError(f"{what} '{path}' has a header but no rows")
            first = False
            yield df
        if first:
            raise NtclassError(f"{what} '{path}' has a header but no rows")
    except pd.errors.EmptyDataError:
        raise NtclassError(f"{what} '{path}' is empty; expected a header line and one row "
                           "per synapse") from None
    except NtclassError:
        raise
    except UnicodeDecodeError:
        raise NtclassError(_not_utf8(path, what)) from None
    except Exception as e:  # pandas and Arrow raise many types; the user needs the file
        raise NtclassError(f"cannot read {what} '{path}': {e}") from None


# the first bytes of files that are tables of another kind
_SPREADSHEETS = (b"PK\x03\x04", b"\xd0\xcf\x11\xe0")  # .xlsx (a zip), .xls


def _check_is_text_table(path: str, what: str) -> None:
    """Refuse a spreadsheet given as a CSV (or under any name but .parquet)."""
    if path.endswith((".parquet", ".pq")):
        return
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_SPREADSHEETS):
        raise NtclassError(f"{what} '{path}' is an Excel workbook, not a CSV; save it as "
                           "CSV UTF-8 (comma-separated) or Parquet")


def _not_utf8(path: str, what: str) -> str:
    """Where a CSV stops being UTF-8: its line and the byte."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                byte = line[e.start:e.start + 1].hex()
                return (f"{what} '{path}' is not UTF-8 text: line {number} holds byte "
                        f"0x{byte} (Latin-1 or Windows text?); save it as UTF-8 (CSV UTF-8)")
    return f"{what} '{path}' is not UTF-8 text; save it as UTF-8"


def _check_separator(df: pd.DataFrame, path: str, what: str) -> None:
    """A CSV written with ';' or tabs reads as one column named after the whole header."""
    if path.endswith((".parquet", ".pq")) or len(df.columns) != 1:
        return
    header = str(df.columns[0])
    for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "vertical bars")):
        if sep in header:
            raise NtclassError(
                f"{what} '{path}' was read as comma-separated, but its header "
                f"{header[:80]!r} looks separated by {name}; write it with commas")


def normalise(df: pd.DataFrame, origin: str, first_row: int = 0) -> pd.DataFrame:
    """Give a raw synapse frame the canonical columns and dtypes, checking its values.
    `first_row`: the row number of the frame's first row in its source (for messages)."""
    if df.empty:
        raise NtclassError(f"{origin} holds no synapse")
    missing = [c for c in ["synapse_id", *LOCATION] if c not in df.columns]
    if missing:
        raise NtclassError(f"{origin} has no column '{missing[0]}' (its columns: "
                           f"{', '.join(map(str, df.columns[:12]))}); expected synapse_id, "
                           "z, y, x (nm) and optionally nt, pre_id, post_id")
    df = df.reset_index(drop=True).copy()
    for col in LOCATION:
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any():
            at = int(np.flatnonzero(values.isna().to_numpy())[0])
            value = df[col].iloc[at]
            shown = "no value" if pd.isna(value) else f"'{value}'"
            hint = ("; it looks like a decimal comma: write numbers with decimal points"
                    if isinstance(value, str) and re.fullmatch(r"-?\d+,\d+", value.strip())
                    else "; expected a number (nm)")
            raise NtclassError(f"{origin}: column '{col}' holds {shown} at row "
                               f"{first_row + at}{hint}")
        if (values < 0).any():
            row = first_row + int(np.flatnonzero((values < 0).to_numpy())[0])
            raise NtclassError(
                f"{origin}: column '{col}' has a negative coordinate at row {row}; "
                "locations are expected in nm, >= 0")
        df[col] = values.astype(np.float64)
    ids = to_ids(df["synapse_id"], "synapse_id", origin)
    if ids.isna().any():
        row = first_row + int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise NtclassError(f"{origin}: column 'synapse_id' has no value at row {row}; every "
                           "synapse needs an id")
    df["synapse_id"] = ids
    check_unique_ids(df, origin)
    for col in ["pre_id", "post_id"]:
        df[col] = to_ids(df[col], col, origin) if col in df else missing_ids(len(df))
    if "nt" not in df:
        df["nt"] = pd.NA
    df["nt"] = df["nt"].astype("string")
    for col in OPTIONAL_COLUMNS:
        if col in df:
            df[col] = df[col].astype("string")
    keep = CORE_COLUMNS + [c for c in OPTIONAL_COLUMNS if c in df]
    return df[keep]


def check_classes(df: pd.DataFrame, classes: Sequence[str], origin: str,
                  other_nts: str = "refuse") -> pd.DataFrame:
    """`df` whose labels are all configured classes. Labels of other NTs are refused, or
    with `other_nts: leave_out` moved to column `nt_other` (the synapse is unlabelled)."""
    other = df["nt"].notna() & ~df["nt"].isin(list(classes))
    if not other.any():
        return df
    if other_nts != "leave_out":
        unknown = sorted(set(df.loc[other, "nt"]))
        raise NtclassError(f"{origin}: NT '{unknown[0]}' is not one of the configured classes "
                           f"{list(classes)}; add it to classes, or set other_nts: leave_out "
                           "to leave its synapses out")
    df = df.copy()
    df["nt_other"] = df["nt"].where(other).astype("string")
    df.loc[other, "nt"] = pd.NA
    return df


class LocationCheck:
    """Checks the locations of a source batch by batch: every synapse lies inside the raw
    volume it is read from and every volume's intensities can be mapped (`add`); and,
    over all batches, that the locations look like nm rather than voxels (`finish`)."""

    def __init__(self, voxel_size: Sequence[int] | None,
                 intensity_range: Sequence[float] | None, origin: str):
        self.voxel_size = voxel_size
        self.intensity_range = intensity_range
        self.origin = origin
        self.n = 0
        # per volume: its voxel size, whether a location left the voxel-index corner, and
        # its number of locations
        self.corner: dict[tuple[str, str], tuple[np.ndarray, bool, int]] = {}

    def add(self, df: pd.DataFrame) -> None:
        for (container, dataset), rows in df.groupby(["raw_container", "raw_dataset"],
                                                     sort=False):
            vol = open_raw_cached(container, dataset, self.voxel_size)
            intensity_of(vol.dtype, self.intensity_range, vol.name)
            locations = rows[LOCATION].to_numpy(dtype=np.float64)
            vox = vol.to_voxel(locations)
            outside = np.any((vox < 0) | (vox >= np.array(vol.shape)), axis=1)
            if outside.any():
                row = rows[outside].iloc[0]
                raise NtclassError(
                    f"synapse {int(row.synapse_id)} at (z, y, x) = "
                    f"({row.z:g}, {row.y:g}, {row.x:g}) nm lies outside the raw volume "
                    f"'{container}/{dataset}' (offset {list(vol.offset)} nm, shape "
                    f"{list(vol.shape)} voxels of {list(vol.voxel_size)} nm)")
            vs = np.array(vol.voxel_size)
            extent = np.array(vol.shape) * vs
            axes = vs > 1
            left = (not axes.any() or bool(np.any(
                ((locations - vol.offset) / extent)[:, axes] * vs[axes] >= 1)))
            _, before, n = self.corner.get((container, dataset), (vs, False, 0))
            self.corner[(container, dataset)] = (vs, before or left, n + len(rows))
            self.n += len(rows)

    def finish(self) -> None:
        """Locations given in voxels, read as nm, all fall into the corner of their
        volume that is a voxel size smaller than the volume on every axis; real synapses
        practically never do (a crop is centred on its synapse, a large volume's corner
        is a small share of it). Each volume, so each file of a CREMI folder, is judged on
        its own, so that a part of a source given in voxels is found too; a source of a
        single synapse is not judged."""
        if self.n < 2:
            return
        for (container, dataset), (vs, left, n) in self.corner.items():
            if left:
                continue
            where = "" if len(self.corner) == 1 else f" in raw volume '{container}' ({dataset})"
            what = (f"all {n} synapse locations{where} lie" if n > 1 else
                    f"the synapse location{where} lies")
            raise NtclassError(
                f"{self.origin}: {what} within the first "
                f"1/{int(vs[0])}, 1/{int(vs[1])}, 1/{int(vs[2])} (z, y, x) of their raw "
                "volume; locations are expected in nm (world coordinates), and these look "
                f"like voxel indices: multiply them by the voxel size {list(map(int, vs))} nm")


def check_locations(df: pd.DataFrame, voxel_size: Sequence[int] | None,
                    intensity_range: Sequence[float] | None, origin: str) -> None:
    """`LocationCheck` of a whole table at once."""
    check = LocationCheck(voxel_size, intensity_range, origin)
    check.add(df)
    check.finish()


def check_unique_ids(df: pd.DataFrame, origin: str) -> None:
    dup = df["synapse_id"].duplicated()
    if dup.any():
        synapse_id = df["synapse_id"][dup].iloc[0]
        rows = df[df["synapse_id"] == synapse_id]
        places = (list(zip(rows["raw_container"], rows["nt"]))
                  if "raw_container" in rows and "nt" in rows else [])
        raise NtclassError(duplicate_id_message(origin, synapse_id, places))


def duplicate_id_message(origin: str, synapse_id, places: Sequence[tuple]) -> str:
    """One sentence on a synapse id found twice; `places` are its rows' (raw container,
    nt): for CREMI sources the container is the file, so the sentence names both files."""
    files = sorted({str(container) for container, _ in places
                    if str(container).lower().endswith(HDF5_SUFFIXES)})
    if len(files) < 2:
        return (f"{origin}: synapse_id {int(synapse_id)} occurs more than once; synapse ids "
                "must be unique")
    first, second = Path(files[0]), Path(files[1])
    labels = sorted({str(nt) for _, nt in places if not pd.isna(nt)})
    if first.name == second.name and len(labels) > 1:
        return (f"{origin}: the file '{first.name}' sits in two class folders ('{first}' and "
                f"'{second}'), so synapse {int(synapse_id)} would have two labels "
                f"({' and '.join(labels)}); keep each file in the folder of its class only")
    return (f"{origin}: synapse_id {int(synapse_id)} is in both '{first}' and '{second}'; "
            "synapse ids must be unique across the CREMI files")


def table_batches(table: str, raw_container: str, raw_dataset: str, classes: Sequence[str],
                  check: LocationCheck, batch_rows: int, other_nts: str = "refuse"
                  ) -> Iterator[pd.DataFrame]:
    """A CSV/Parquet synapse table over one raw volume, in checked batches."""
    origin = f"synapse table '{table}'"
    first_row = 0
    for df in iter_table_file(table, batch_rows=batch_rows):
        df["raw_container"] = str(raw_container)
        df["raw_dataset"] = raw_dataset
        df = check_classes(normalise(df, origin, first_row), classes, origin, other_nts)
        check.add(df)
        first_row += len(df)
        yield df


def read_table_source(table: str, raw_container: str, raw_dataset: str,
                      classes: Sequence[str], voxel_size: Sequence[int] | None = None,
                      intensity_range: Sequence[float] | None = None) -> pd.DataFrame:
    """A CSV/Parquet synapse table over one raw volume, whole (see `table_batches`)."""
    check = LocationCheck(voxel_size, intensity_range, f"synapse table '{table}'")
    df = pd.concat(list(table_batches(table, raw_container, raw_dataset, classes, check,
                                      1 << 62)), ignore_index=True)
    check.finish()
    return df


def _strings(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _cremi_ids(f: h5py.File, key: str, path: Path) -> pd.Series:
    """A CREMI id dataset (uint64 in the format) as exact ids."""
    return to_ids(pd.Series(f[key][:].reshape(-1)), key, f"CREMI file '{path}'")


def _check_partners(path: Path, ids: pd.Series, types: list[str],
                    partners: np.ndarray) -> None:
    """`partners` names (pre-synaptic site, post-synaptic site) pairs: the first id of each
    pair must be typed presynaptic_site and the second postsynaptic_site."""
    type_of = dict(zip(ids.tolist(), types))
    for pre, post in partners:
        for site, expected in ((pre, "presynaptic_site"), (post, "postsynaptic_site")):
            if type_of.get(site) != expected:
                found = (f"calls {site} a '{type_of[site]}'" if site in type_of
                         else f"has no annotation {site}")
                raise NtclassError(
                    f"CREMI file '{path}': annotations/presynaptic_site/partners pairs "
                    f"({pre}, {post}) but annotations/types {found}; the first id of each "
                    "pair must be a presynaptic_site and the second a postsynaptic_site")


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
        ids = _cremi_ids(f, "annotations/ids", path)
        locs = f["annotations/locations"][:].reshape(-1, 3) + offset
        types = _strings(f["annotations/types"][:])
        neurons = (_cremi_ids(f, "annotations/neuron_ids", path)
                   if "annotations/neuron_ids" in f else None)
        hemis = (_strings(f["annotations/hemilineages"][:])
                 if "annotations/hemilineages" in f else None)
        partners = (_cremi_ids(f, "annotations/presynaptic_site/partners", path)
                    .to_numpy(dtype=object).reshape(-1, 2)
                    if "annotations/presynaptic_site/partners" in f else np.zeros((0, 2)))
    if not len(ids) == len(locs) == len(types):
        raise NtclassError(f"CREMI file '{path}' has {len(ids)} annotations/ids, {len(locs)} "
                           f"locations and {len(types)} types; expected one each")
    _check_partners(path, ids, types, partners)
    index = {a: i for i, a in enumerate(ids.tolist())}
    post_of: dict[int, int] = {}
    for pre, post in partners:
        post_of.setdefault(int(pre), int(post))  # polyadic: the first partner listed
    pre_rows = [i for i, kind in enumerate(types) if kind == "presynaptic_site"]
    if not pre_rows:
        raise NtclassError(f"CREMI file '{path}' holds no presynaptic_site annotation")
    post_rows = [index.get(post_of.get(int(ids[i]), -1)) for i in pre_rows]
    post_ids = missing_ids(len(pre_rows))
    if neurons is not None:
        known = [k for k, r in enumerate(post_rows) if r is not None]
        post_ids[known] = neurons.iloc[[post_rows[k] for k in known]].array
    return pd.DataFrame({
        "synapse_id": ids.iloc[pre_rows].array,
        "z": locs[pre_rows, 0], "y": locs[pre_rows, 1], "x": locs[pre_rows, 2],
        "raw_container": str(path), "raw_dataset": "volumes/raw", "nt": nt,
        "pre_id": (neurons.iloc[pre_rows].array if neurons is not None
                   else missing_ids(len(pre_rows)).array),
        "post_id": post_ids.array,
        "hemilineage": [hemis[i] or pd.NA for i in pre_rows] if hemis is not None else pd.NA,
    })


def _visible(paths) -> list[Path]:
    """Without hidden entries (.ipynb_checkpoints/, .DS_Store, macOS's ._* files)."""
    return sorted(p for p in paths if not p.name.startswith("."))


def _cremi_files(folder: Path) -> list[Path]:
    return [p for p in _visible(folder.iterdir()) if p.suffix.lower() in HDF5_SUFFIXES
            and p.is_file()]


def _cremi_files_by_class(root: Path, classes: Sequence[str], labelled: bool
                          ) -> list[tuple[Path, str | None]]:
    if not root.is_dir():
        raise NtclassError(f"CREMI folder '{root}' does not exist")
    if not labelled:
        files = _cremi_files(root)
        if not files:
            raise NtclassError(f"CREMI folder '{root}' holds no CREMI files")
        return [(p, None) for p in files]
    folders = [p for p in _visible(root.iterdir()) if p.is_dir()]
    extra = [p.name for p in folders if p.name not in classes]
    if extra:
        raise NtclassError(f"class folder '{root / extra[0]}' is not one of the configured "
                           f"classes {list(classes)}")
    if not folders:
        raise NtclassError(f"CREMI folder '{root}' has no class folders")
    found = []
    for folder in folders:
        files = _cremi_files(folder)
        if not files:
            raise NtclassError(f"class folder '{folder}' holds no CREMI files "
                               f"(*{', *'.join(HDF5_SUFFIXES)})")
        found += [(p, folder.name) for p in files]
    return found


def cremi_batches(directory: str, classes: Sequence[str], labelled: bool,
                  check: LocationCheck, batch_rows: int) -> Iterator[pd.DataFrame]:
    """Per-class folders of CREMI files (`directory/<class>/*.hdf`), or, when `labelled`
    is false, one folder of unlabelled CREMI files, in checked batches of whole files.
    Hidden files and folders are skipped."""
    origin = f"CREMI folder '{directory}'"
    frames, rows, first_row = [], 0, 0
    files = _cremi_files_by_class(Path(directory), classes, labelled)
    for i, (path, nt) in enumerate(files):
        frames.append(read_cremi_file(path, nt))
        rows += len(frames[-1])
        if rows >= batch_rows or i == len(files) - 1:
            df = normalise(pd.concat(frames, ignore_index=True), origin, first_row)
            check.add(df)
            first_row += len(df)
            frames, rows = [], 0
            yield df


def read_cremi_source(directory: str, classes: Sequence[str], labelled: bool = True,
                      voxel_size: Sequence[int] | None = None,
                      intensity_range: Sequence[float] | None = None) -> pd.DataFrame:
    """All synapses of a CREMI folder as one table (see `cremi_batches`)."""
    check = LocationCheck(voxel_size, intensity_range, f"CREMI folder '{directory}'")
    df = pd.concat(list(cremi_batches(directory, classes, labelled, check, 1 << 62)))
    check.finish()
    return df
