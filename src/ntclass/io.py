"""Atomic file writing: a killed job never leaves a file that looks complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ntclass.ids import ID_COLUMNS, ID_DTYPE


class NamedOutputs:
    """Mixin of a frozen dataclass of output paths: built from anything that has them as
    attributes by the field names (Snakemake's `output`)."""

    @classmethod
    def of(cls, named):
        return cls(**{f.name: str(getattr(named, f.name)) for f in fields(cls)})


TEMPORARY = ".{name}.tmp-"  # the temporary sibling's prefix; no resume glob matches it


@contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False,
                durable: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.
    `durable` (files only): the file's bytes reach the disk before the rename, and the rename
    before the block returns, so that a machine crash also leaves the old file or the new
    one whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = TEMPORARY.format(name=path.name)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if durable:
            fsync(tmp)
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        if durable:
            fsync(path.parent)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def fsync(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') writes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files `atomic_path` left in `folder` when its process was
    killed; returns them."""
    left = [p for p in Path(folder).glob(TEMPORARY.format(name="*") + "*") if p.is_file()]
    for path in left:
        path.unlink()
    return left


# the workflow's own CSVs (manifest, prediction shards and tables): text columns stay
# strings and ids stay exact unsigned 64-bit integers, also where some are missing
SYNAPSE_CSV_DTYPES = {"nt": "string", "split": "string", "predicted_nt": "string",
                      "nt_candidates": "string",
                      **{c: ID_DTYPE for c in ID_COLUMNS}}


def read_synapse_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A synapse table the workflow wrote: the manifest, a shard, a prediction table."""
    return pd.read_csv(path, dtype=SYNAPSE_CSV_DTYPES)


# Arrow integers as pandas' nullable integers: a uint64 column with a missing value would
# otherwise become float64 and round every id above 2^53
NULLABLE_INTEGERS = {
    pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(), pa.uint8(): pd.UInt8Dtype(), pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(), pa.uint64(): pd.UInt64Dtype(),
}


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    """A Parquet table with its integer columns exact (nullable), whoever wrote it."""
    return pq.read_table(path).to_pandas(types_mapper=NULLABLE_INTEGERS.get)


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_json(obj: object, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def remove_files(paths) -> None:
    """Delete the files that exist among `paths`."""
    for path in paths:
        Path(path).unlink(missing_ok=True)
