"""A target's synapses, read once and partitioned by shard.

The source is streamed in bounded batches; each synapse gets a spatial key (the Morton
code of the cell of `block_size` nm holding it); DuckDB sorts all of them out of core by
volume, key and location; and the sorted rows are cut into shards of equal count, one
Parquet file each, written in row groups. A shard job reads only its own file, so no job's
memory depends on the size of the target.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ntclass.errors import NtclassError
from ntclass.ids import ID_DTYPE
from ntclass.io import NULLABLE_INTEGERS, atomic_path, read_synapse_csv, write_json
from ntclass.settings import Partition
from ntclass.sources.kinds import Source, SplitPart
from ntclass.sources.synapses import LOCATION, OPTIONAL_COLUMNS, duplicate_id_message
from ntclass.sql import POOL, duckdb_connection, query_one

log = logging.getLogger(__name__)

META = "meta.json"
COLUMNS = ["synapse_id", *LOCATION, "raw_container", "raw_dataset", "nt", "pre_id",
           "post_id", *OPTIONAL_COLUMNS, "cell"]
SCHEMA = pa.schema(
    [("synapse_id", pa.uint64())] + [(c, pa.float64()) for c in LOCATION]
    + [("raw_container", pa.string()), ("raw_dataset", pa.string()), ("nt", pa.string()),
       ("pre_id", pa.uint64()), ("post_id", pa.uint64())]
    + [(c, pa.string()) for c in OPTIONAL_COLUMNS] + [("cell", pa.uint64())])
ROW_GROUP = 64 * 1024
# DuckDB's pool for the sort (the batches' Arrow memory is released before it); a test
# shrinks it to see the sort spill
SORT_MEMORY = POOL


def shard_file(shard: int) -> str:
    return f"shard-{shard:05d}.parquet"


def morton_cells(locations: np.ndarray, cell_size: Sequence[int]) -> np.ndarray:
    """The Morton (z-order) code of the cell of `cell_size` nm holding each location:
    sorting by it keeps neighbouring synapses together. 21 bits an axis (2^21 cells)."""
    cells = np.floor(np.asarray(locations, np.float64) / np.asarray(cell_size, np.float64))
    cells = np.clip(cells, 0, (1 << 21) - 1).astype(np.uint64)
    code = np.zeros(len(cells), dtype=np.uint64)
    for bit in range(21):
        for axis in range(3):
            code |= ((cells[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(
                3 * bit + 2 - axis)
    return code


def as_arrow(df: pd.DataFrame, cell_size: Sequence[int]) -> pa.Table:
    """A normalised synapse batch in the target schema, with its spatial key."""
    df = df.reindex(columns=COLUMNS)
    df["cell"] = morton_cells(df[LOCATION].to_numpy(), cell_size)
    for col in ("synapse_id", "pre_id", "post_id"):
        df[col] = df[col].astype(ID_DTYPE)
    for col in ("raw_container", "raw_dataset", "nt", *OPTIONAL_COLUMNS):
        df[col] = df[col].astype("string")
    return pa.Table.from_pandas(df, schema=SCHEMA, preserve_index=False)


def target_batches(manifest_path: str | None, target: Source | SplitPart,
                   classes: Sequence[str],
                   voxel_size: Sequence[int] | None, batch_rows: int
                   ) -> Iterator[pd.DataFrame]:
    """The synapses a target names, in batches: a part of the split manifest (labelled
    data, small), or a synapse source of its own (table, CREMI folder, MongoDB)."""
    if isinstance(target, SplitPart):
        manifest = read_synapse_csv(manifest_path)
        part = manifest[manifest["split"] == target.part].reset_index(drop=True)
        for start in range(0, len(part), batch_rows):
            yield part.iloc[start:start + batch_rows]
        return
    check = target.location_check(voxel_size)
    yield from target.batches(classes, check, batch_rows)
    check.finish()


def write_target(manifest_path: str | None, target: Source | SplitPart,
                 classes: Sequence[str],
                 voxel_size: Sequence[int] | None, partition: Partition, out_dir: str
                 ) -> dict:
    """Write a target's synapses as `shard-NNNNN.parquet` files (sorted spatially) and
    `meta.json` (counts), atomically: a killed job leaves no folder that looks complete."""
    with atomic_path(out_dir, is_dir=True) as tmp:
        spill = tmp / "unsorted"
        spill.mkdir()
        n = 0
        for i, batch in enumerate(target_batches(manifest_path, target, classes, voxel_size,
                                                 partition.read_batch_rows)):
            pq.write_table(as_arrow(batch, partition.block_size),
                           spill / f"part-{i:06d}.parquet")
            n += len(batch)
            log.info("read %d synapses", n)
        if n == 0:
            raise NtclassError(f"{target.name} holds no synapse")
        # the batches' buffers stay in Arrow's pool (jemalloc/mimalloc keep freed pages)
        # unless handed back, and DuckDB's own pool would come on top of them
        pa.default_memory_pool().release_unused()
        con = duckdb_connection(tmp, memory_limit=SORT_MEMORY)
        parts = f"{spill}/*.parquet"
        dup = query_one(con, f"SELECT synapse_id FROM '{parts}' GROUP BY synapse_id "
                              "HAVING count(*) > 1 LIMIT 1")
        if dup:
            places = con.execute(f"SELECT raw_container, nt FROM '{parts}' WHERE "
                                 f"synapse_id = {int(dup[0])}").fetchall()
            raise NtclassError(duplicate_id_message(target.name, dup[0], places))
        sorted_path = tmp / "sorted.parquet"
        con.execute(f"COPY (SELECT * FROM '{parts}' ORDER BY raw_container, raw_dataset, "
                    f"cell, z, y, x, synapse_id) TO '{sorted_path}' "
                    f"(FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP})")
        con.close()
        n_shards = partition.n_shards(n)
        counts = _cut_into_shards(sorted_path, tmp, n, n_shards)
        sorted_path.unlink()
        shutil.rmtree(spill)
        meta = {"synapses": n, "shards": n_shards, "rows_per_shard": counts}
        write_json(meta, tmp / META)
    log.info("target (%s): %d synapses in %d shards", target.name, n, n_shards)
    return meta


def _cut_into_shards(sorted_path: Path, out: Path, n: int, n_shards: int) -> list[int]:
    """Stream the sorted rows into `n_shards` files of (nearly) equal counts."""
    bounds = np.linspace(0, n, n_shards + 1).round().astype(np.int64)
    counts = np.diff(bounds).tolist()
    shard, written = 0, 0

    def open_writer(i: int) -> pq.ParquetWriter:
        return pq.ParquetWriter(out / shard_file(i), SCHEMA)

    writer = open_writer(0)
    for batch in pq.ParquetFile(sorted_path).iter_batches(batch_size=ROW_GROUP):
        table = pa.Table.from_batches([batch]).cast(SCHEMA)
        while table.num_rows:
            take = min(table.num_rows, bounds[shard + 1] - written)
            if take:
                writer.write_table(table.slice(0, take), row_group_size=ROW_GROUP)
            table, written = table.slice(take), written + take
            if written == bounds[shard + 1] and shard < n_shards - 1:
                writer.close()
                shard += 1
                writer = open_writer(shard)
    writer.close()
    for i in range(shard + 1, n_shards):  # more shards than synapses: empty ones
        open_writer(i).close()
    return counts


def read_target_meta(target_dir: str | os.PathLike) -> dict:
    return json.loads((Path(target_dir) / META).read_text())


def read_shard_rows(target_dir: str | os.PathLike, shard: int) -> pd.DataFrame:
    """All rows of one shard (bounded by the shard size)."""
    table = pq.read_table(Path(target_dir) / shard_file(shard))
    return table.to_pandas(types_mapper=NULLABLE_INTEGERS.get)
