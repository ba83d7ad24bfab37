"""Synapse predictions as neuroglancer precomputed annotations (points), out of core.

The format is google/neuroglancer's `src/datasource/precomputed/annotations.md`:
- `info`: the coordinate space (x, y, z in nm), the bounds (the upper one exclusive), the
  properties and the relationships;
- `by_id/`: each annotation by its id (the synapse id), with its related segments;
- `pre_segment/`, `post_segment/`: the annotations of each pre- and post-synaptic segment,
  so that selecting a neuron in a linked segmentation layer shows its synapses;
- `spatial<L>/`: a multi-level spatial index. Level 0 is one cell over the bounds; each
  finer level halves the longest side of the cells. Each level takes the same share of the
  annotations not yet emitted above in every cell, `limit` over the count of the densest
  cell, and no cell holds more than `limit`: a viewer shows a sample zoomed out and every
  synapse zoomed in. The levels stop once every cell holds at most `limit`.

Every record is float32 x, y, z; float32 properties (confidence, then each class's
probability); the uint8 `nt` enum; zero padding to 4 bytes. DuckDB holds the table on disk
and assigns levels; indices are written in key order, sharded
(`neuroglancer_uint64_sharded_v1`, through TensorStore) above `SHARDED_ABOVE` annotations,
so the number of files stays bounded and memory does not grow with the synapses.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import tensorstore as ts

from ntclass.errors import NtclassError
from ntclass.io import atomic_path
from ntclass.sql import duckdb_connection, query_one, quoted

SHARDED_ABOVE = 10_000  # one file per annotation and per segment below: 4 files a synapse
LIMIT = 1000  # annotations per spatial cell: a sample a viewer draws at once
BATCH_BYTES = 64 << 20  # encoded bytes per TensorStore transaction
# keys per transaction: TensorStore keeps about a kilobyte per staged key, so small values
# (a relationship's few annotations) would otherwise fill memory long before BATCH_BYTES
BATCH_KEYS = 1 << 15
RELATIONSHIPS = {"pre_segment": "pre_id", "post_segment": "post_id"}


def property_id(name: str) -> str:
    """A class's probability property: neuroglancer ids match [a-z][a-zA-Z0-9_]*."""
    return "p_" + re.sub(r"[^a-z0-9_]", "_", name.lower())


def record_dtype(classes: Sequence[str]) -> np.dtype:
    """One annotation's geometry and properties, in the spec's order: 4-byte values, then
    1-byte ones, then padding to a multiple of 4."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("confidence", "<f4")]
    fields += [(property_id(c), "<f4") for c in classes] + [("nt", "u1")]
    size = 4 * len(fields[:-1]) + 1
    return np.dtype({"names": [f for f, _ in fields], "formats": [t for _, t in fields],
                     "offsets": list(range(0, size - 1, 4)) + [size - 1],
                     "itemsize": (size + 3) // 4 * 4})


def properties(classes: Sequence[str]) -> list[dict]:
    return ([{"id": "confidence", "type": "float32",
              "description": "probability of the predicted transmitter"}]
            + [{"id": property_id(c), "type": "float32", "description": f"probability of {c}"}
               for c in classes]
            + [{"id": "nt", "type": "uint8", "description": "predicted transmitter",
                "enum_values": list(range(len(classes))), "enum_labels": list(classes)}])


def sharding_spec(n_keys: int) -> dict:
    """Shards of about 2^16 keys, minishards of about 2^10: 10^8 synapses in 2^11 files."""
    shard_bits = max(0, math.ceil(math.log2(max(1, n_keys) / 2**16)))
    return {"@type": "neuroglancer_uint64_sharded_v1", "hash": "identity",
            "preshift_bits": 0, "minishard_bits": 6, "shard_bits": shard_bits,
            "minishard_index_encoding": "gzip", "data_encoding": "gzip"}


class IndexWriter:
    """One uint64-keyed index: a file per key, or shards through TensorStore. Keys must
    come grouped by shard (ordered by `_shard_sql`) so that each shard is written once."""

    def __init__(self, folder: Path, sharding: dict | None):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.sharding = folder, sharding
        self.store = None if sharding is None else ts.KvStore.open({
            "driver": "neuroglancer_uint64_sharded", "metadata": sharding,
            "base": {"driver": "file", "path": str(folder) + "/"}}).result()
        self.txn, self.staged, self.pending, self.keys = None, None, 0, 0

    def write(self, key: int, value: bytes, name: str | None = None) -> None:
        if self.store is None:
            (self.folder / (name or str(key))).write_bytes(value)
            return
        if self.txn is None:
            self.txn = ts.Transaction()
            self.staged = self.store.with_transaction(self.txn)
        self.staged.write(int(key).to_bytes(8, "big"), value)
        self.pending += len(value)
        self.keys += 1
        if self.pending >= BATCH_BYTES or self.keys >= BATCH_KEYS:
            self.flush()

    def flush(self) -> None:
        if self.txn is not None:
            self.txn.commit_sync()
        self.txn, self.pending, self.keys = None, 0, 0


def write_annotations(predictions: str, out: Path, classes: Sequence[str], work: Path,
                      limit: int = LIMIT, sharded: bool | None = None,
                      extra_info: dict | None = None) -> dict:
    """Write `predictions` (a Parquet table of ntclass predictions) as an annotation
    collection in `out`; returns its info. `sharded`: None decides by the count.
    `extra_info`: keys added to the info beside the spec's (neuroglancer ignores them),
    such as the provenance."""
    work.mkdir(parents=True, exist_ok=True)
    con = duckdb_connection(work)
    con.execute(f"ATTACH '{work / 'annotations.duckdb'}' AS disk; USE disk")
    _load(con, predictions, classes)
    n = query_one(con, "SELECT count(*) FROM ann")[0]
    if n == 0:
        raise NtclassError(f"'{predictions}' holds no prediction to show")
    sharded = n > SHARDED_ABOVE if sharded is None else sharded
    lower, upper = _bounds(con)
    with atomic_path(out, is_dir=True) as tmp:
        levels = _assign_levels(con, lower, upper, limit, n if sharded else 0)
        dtype = record_dtype(classes)
        for level, spec in enumerate(levels):
            _write_level(con, tmp / spec["key"], level, spec, lower, dtype, classes)
        by_id = {"key": "by_id", **({"sharding": sharding_spec(n)} if sharded else {})}
        _write_by_id(con, tmp / "by_id", by_id.get("sharding"), dtype, classes)
        relationships = []
        for rel, column in RELATIONSHIPS.items():
            spec = {"id": rel, "key": rel}
            count = query_one(con, f"SELECT count(DISTINCT {column}) FROM ann")[0]
            if sharded:
                spec["sharding"] = sharding_spec(count)
            _write_related(con, tmp / rel, column, spec.get("sharding"), dtype, classes)
            relationships.append(spec)
        info = {"@type": "neuroglancer_annotations_v1",
                "dimensions": {axis: [1e-9, "m"] for axis in "xyz"},
                "lower_bound": lower, "upper_bound": upper, "annotation_type": "POINT",
                "properties": properties(classes), "relationships": relationships,
                "by_id": by_id, "spatial": levels}
        info.update(extra_info or {})
        (tmp / "info").write_text(json.dumps(info, indent=1))
    con.close()
    shutil.rmtree(work, ignore_errors=True)
    return info


def _load(con, predictions: str, classes: Sequence[str]) -> None:
    enum = " ".join(f"WHEN {_quoted_str(c)} THEN {i}" for i, c in enumerate(classes))
    probs = ", ".join(f"{quoted(c)}::FLOAT AS {property_id(c)}" for c in classes)
    con.execute(f"""CREATE TABLE ann AS SELECT synapse_id::UBIGINT AS id,
        x::FLOAT AS x, y::FLOAT AS y, z::FLOAT AS z, confidence::FLOAT AS confidence, {probs},
        (CASE predicted_nt {enum} END)::UTINYINT AS nt,
        pre_id::UBIGINT AS pre_id, post_id::UBIGINT AS post_id,
        NULL::INTEGER AS level FROM read_parquet('{predictions}')""")


def _bounds(con) -> tuple[list[float], list[float]]:
    """Whole-nm bounds around every point; the upper bound is exclusive."""
    row = query_one(con, "SELECT floor(min(x)), floor(min(y)), floor(min(z)), "
                    "floor(max(x)) + 1, floor(max(y)) + 1, floor(max(z)) + 1 FROM ann")
    return [float(v) for v in row[:3]], [float(v) for v in row[3:]]


def _cells(grid: Sequence[int], chunk: Sequence[float], lower: Sequence[float]) -> str:
    return ", ".join(
        f"least(floor(({a}::DOUBLE - {lo!r}::DOUBLE) / {c!r}::DOUBLE)::BIGINT, {g - 1}) AS c{a}"
        for a, lo, c, g in zip("xyz", lower, chunk, grid))


def _uniform(level: int) -> str:
    """A pseudo-random number in [0, 1) per annotation and level (reproducible). Hashed
    again after the level is mixed in: DuckDB's `hash(id, level)` combines the two hashes
    bitwise, so its numbers at two levels are far from independent (a level's sample
    would then be mostly the annotations an earlier level left or mostly those it took)."""
    return f"(hash(xor(hash(id), {level}::UBIGINT)) >> 11)::DOUBLE / 9007199254740992.0"


def _assign_levels(con, lower, upper, limit: int, sharded_keys: int) -> list[dict]:
    """Give every annotation its spatial level, by the spec's sampling with each cell
    capped at `limit`; returns the levels' info entries."""
    extent = [u - lo for u, lo in zip(upper, lower)]
    grid, chunk = [1, 1, 1], list(extent)
    levels = []
    while True:
        level = len(levels)
        cells = _cells(grid, chunk, lower)
        remaining, most = _densest_cell(con, cells)
        if not remaining:
            break
        last = max(chunk) <= 1.0  # points closer than 1 nm never separate: emit all
        share = 1.0 if last else min(1.0, limit / most)
        cap = "" if last else f"AND rank <= {limit}"
        con.execute(f"""UPDATE ann SET level = {level} FROM (
            SELECT id AS chosen FROM (
                SELECT id, u, row_number() OVER (PARTITION BY cx, cy, cz ORDER BY u) AS rank
                FROM (SELECT id, {_uniform(level)} AS u, {cells} FROM ann
                      WHERE level IS NULL))
            WHERE u < {share} {cap}) WHERE ann.id = chosen""")
        # the info stays true if more than `limit` points lie within a nanometre
        spec = {"key": f"spatial{level}", "grid_shape": list(grid), "chunk_size": list(chunk),
                "limit": max(limit, most) if last else limit}
        if sharded_keys:  # shards by the cells that hold annotations, not the grid's
            filled = query_one(con, f"SELECT count(*) FROM (SELECT DISTINCT {cells} FROM ann "
                                    f"WHERE level = {level})")[0]
            spec["sharding"] = sharding_spec(filled)
        levels.append(spec)
        _halve_longest(grid, chunk)
    return levels


def _densest_cell(con, cells: str) -> tuple[int, int]:
    """The annotations not yet emitted, and the most of them in one cell of `cells`."""
    remaining, most = query_one(con, f"""SELECT sum(n), max(n) FROM (
        SELECT count(*) AS n FROM (SELECT {cells} FROM ann WHERE level IS NULL)
        GROUP BY cx, cy, cz)""")
    return int(remaining or 0), int(most or 0)


def _halve_longest(grid: list[int], chunk: list[float]) -> None:
    """The next level's cells: the longest side halved (the first of equal ones).
    Doubling the cells per level leaves at most about half of the annotations for the
    finest level, whatever the data: a level's densest cell holds at least half of what
    the densest above it kept, so the levels above the finest, counted upwards, take at
    least 1/3, 1/7, 1/15... of what reaches them. Halving every side at once (8 times the
    cells) would leave up to 7/8."""
    d = chunk.index(max(chunk))
    chunk[d] /= 2
    grid[d] *= 2


def _records(table: pa.Table, dtype: np.dtype) -> np.ndarray:
    out = np.zeros(table.num_rows, dtype=dtype)
    for name in dtype.names:
        out[name] = table.column(name).to_numpy()
    return out


def _batches(con, query: str) -> Iterator[pa.Table]:
    reader = con.sql(query).to_arrow_reader(200_000)
    for batch in reader:
        yield pa.Table.from_batches([batch])


def _runs(keys: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, end) of each run of equal consecutive keys."""
    if len(keys) == 0:
        return
    edges = np.flatnonzero(np.diff(keys)) + 1
    bounds = np.concatenate([[0], edges, [len(keys)]])
    yield from zip(bounds[:-1].tolist(), bounds[1:].tolist())


def _multiple(records: np.ndarray, ids: np.ndarray, dtype: np.dtype) -> bytes:
    """The multiple annotation encoding: count, the records, the ids. (Concatenating
    records drops their padding: they are laid out in `dtype` again.)"""
    return (np.uint64(len(ids)).astype("<u8").tobytes() + records.astype(dtype).tobytes()
            + ids.astype("<u8").tobytes())


def _grouped(con, query: str, key: str, dtype, classes) -> Iterator[tuple[int, bytes]]:
    """Rows of `query` (ordered by `key`, with id and the record's fields) encoded per key,
    across batch boundaries."""
    carry: list[tuple[np.ndarray, np.ndarray]] = []
    carry_key = None
    for table in _batches(con, query):
        keys = table.column(key).to_numpy()
        records, ids = _records(table, dtype), table.column("id").to_numpy()
        for start, end in _runs(keys):
            k = int(keys[start])
            if carry and k != carry_key:
                yield carry_key, _multiple(np.concatenate([r for r, _ in carry]),
                                           np.concatenate([i for _, i in carry]), dtype)
                carry = []
            carry_key = k
            carry.append((records[start:end], ids[start:end]))
    if carry:
        yield carry_key, _multiple(np.concatenate([r for r, _ in carry]),
                                   np.concatenate([i for _, i in carry]), dtype)


def _write_level(con, folder: Path, level: int, spec: dict, lower, dtype, classes) -> None:
    grid, sharding = spec["grid_shape"], spec.get("sharding")
    cells = _cells(grid, spec["chunk_size"], lower)
    bits = [max(0, math.ceil(math.log2(g))) for g in grid]
    morton = _morton_sql(bits)
    order = f"shard_of_key, key, {_uniform(level)}" if sharding else f"key, {_uniform(level)}"
    shard = _shard_sql("key", sharding) if sharding else "0"
    query = f"""SELECT *, {shard} AS shard_of_key FROM (
        SELECT *, {morton} AS key FROM (SELECT *, {cells} FROM ann WHERE level = {level}))
        ORDER BY {order}"""
    writer = IndexWriter(folder, sharding)
    for key, value in _grouped(con, query, "key", dtype, classes):
        writer.write(key, value, None if sharding else _cell_name(key, bits))
    writer.flush()


def _shard_sql(key: str, sharding: dict) -> str:
    """The shard of a uint64 key under an identity-hash sharding spec, in SQL."""
    return (f"(({key} >> {sharding['preshift_bits']}) >> {sharding['minishard_bits']}) & "
            f"{(1 << sharding['shard_bits']) - 1}")


def _morton_sql(bits: Sequence[int]) -> str:
    """neuroglancer's compressed Morton code of (cx, cy, cz) in SQL: bit i of each
    dimension that still has bits at i, interleaved."""
    terms, out = [], 0
    for i in range(max(bits, default=0)):
        for d, b in enumerate(bits):
            if i < b:
                terms.append(f"(((c{'xyz'[d]}::UBIGINT >> {i}) & 1) << {out})")
                out += 1
    return " | ".join(terms) if terms else "0::UBIGINT"


def _cell_name(code: int, bits: Sequence[int]) -> str:
    """The unsharded file name of a cell, from its compressed Morton code."""
    cell, out = [0, 0, 0], 0
    for i in range(max(bits, default=0)):
        for d, b in enumerate(bits):
            if i < b:
                cell[d] |= ((code >> out) & 1) << i
                out += 1
    return "_".join(str(c) for c in cell)


def _write_by_id(con, folder: Path, sharding: dict | None, dtype, classes) -> None:
    """Each annotation with its relationships (a count and the ids, per relationship)."""
    order = f"{_shard_sql('id', sharding)}, id" if sharding else "id"
    writer = IndexWriter(folder, sharding)
    for table in _batches(con, f"SELECT * FROM ann ORDER BY {order}"):
        records = _records(table, dtype)
        ids = table.column("id").to_numpy()
        related = [table.column(c).to_pylist() for c in RELATIONSHIPS.values()]
        for i, key in enumerate(ids.tolist()):
            tail = b"".join(
                np.array([0], "<u4").tobytes() if ids_[i] is None
                else np.array([1], "<u4").tobytes() + np.array([ids_[i]], "<u8").tobytes()
                for ids_ in related)
            writer.write(key, records[i].tobytes() + tail)
    writer.flush()


def _write_related(con, folder: Path, column: str, sharding: dict | None, dtype,
                   classes) -> None:
    """The annotations of each related segment id."""
    order = f"{_shard_sql(column, sharding)}, {column}" if sharding else column
    query = (f"SELECT * FROM ann WHERE {column} IS NOT NULL AND {column} != 0 "
             f"ORDER BY {order}")
    writer = IndexWriter(folder, sharding)
    for key, value in _grouped(con, query, column, dtype, classes):
        writer.write(key, value)
    writer.flush()


def _quoted_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
