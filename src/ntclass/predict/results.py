"""A target's prediction table: its shards as one Parquet file, and a CSV where wanted.

Both are streamed shard by shard and batch by batch, so memory does not grow with the
target; DuckDB checks that every synapse of the target is there exactly once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ntclass.errors import NtclassError
from ntclass.io import NULLABLE_INTEGERS, atomic_path
from ntclass.predict.targets import read_target_meta
from ntclass.sql import duckdb_connection, query_one

log = logging.getLogger(__name__)
BATCH_ROWS = 65536


def iter_predictions(path: str | os.PathLike, columns: Sequence[str] | None = None,
                     batch_rows: int = BATCH_ROWS) -> Iterator[pd.DataFrame]:
    """A prediction table (or any Parquet file) in pandas batches, ids exact."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
        yield batch.to_pandas(types_mapper=NULLABLE_INTEGERS.get)


def merge_target(shard_paths: Sequence[str], target_dir: str, out_parquet: str) -> int:
    """Concatenate a target's shards into one Parquet file; every synapse exactly once."""
    expected = read_target_meta(target_dir)["synapses"]
    files = [str(p) for p in shard_paths]
    con = duckdb_connection(Path(out_parquet).parent)
    listed = "[" + ", ".join(f"'{p}'" for p in files) + "]"
    n, distinct = query_one(con, f"SELECT count(*), count(DISTINCT synapse_id) "
                                          f"FROM read_parquet({listed})")
    if distinct != n:
        dup = query_one(con, f"SELECT synapse_id FROM read_parquet({listed}) GROUP BY 1 "
                              "HAVING count(*) > 1 LIMIT 1")[0]
        raise NtclassError(f"synapse {dup} was predicted by two shards")
    if n != expected:
        raise NtclassError(f"the target has {expected} synapses but its shards hold {n} "
                           "predictions")
    check_cubes_hold_data(con, listed, target_dir)
    con.close()
    # an empty shard's columns come from pandas: take the types of one with rows
    filled = [p for p in files if pq.ParquetFile(p).metadata.num_rows] or files
    schema = pq.read_schema(filled[0])
    with atomic_path(out_parquet) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
                writer.write_table(pa.Table.from_batches([batch]).cast(schema),
                                   row_group_size=BATCH_ROWS)
    log.info("%d predictions from %d shards", n, len(files))
    return n


# a target whose volume gave cubes without data for more than this share of its synapses
# is refused: its predictions would be the model's answer to blank input
MOST_EMPTY = 0.5


def check_cubes_hold_data(con, listed: str, target_dir: str) -> None:
    """Refuse a target most of whose cubes from one raw volume held no data; log the
    count of such cubes."""
    rows = con.execute(f"""
        SELECT t.raw_container, t.raw_dataset, count(*), count(*) FILTER (p.empty)
        FROM read_parquet({listed}) p
        JOIN read_parquet('{Path(target_dir) / "shard-*.parquet"}') t USING (synapse_id)
        GROUP BY 1, 2 ORDER BY 1, 2""").fetchall()
    for container, dataset, n, empty in rows:
        if empty:
            log.warning("raw '%s' (%s): %d of %d synapses' cubes hold no data", container,
                        dataset, empty, n)
        if n and empty / n > MOST_EMPTY:
            raise NtclassError(
                f"raw '{container}' (dataset '{dataset}'): {empty / n:.0%} of the {n} "
                "synapses' cubes hold no data (at least 99 % of their voxels are the fill "
                "value, as where chunks are missing or were never written); check that the "
                "volume is complete and that the synapse locations lie in its imaged part "
                "(a volume completed since its shards were predicted: rerun with "
                "--forcerun predict_shard)")


def write_predictions_csv(parquet: str, out_csv: str) -> None:
    """The prediction table as one CSV, written batch by batch."""
    with atomic_path(out_csv) as tmp:
        header = True
        for df in iter_predictions(parquet):
            df.to_csv(tmp, mode="w" if header else "a", header=header, index=False)
            header = False
