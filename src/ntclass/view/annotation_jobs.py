"""The annotation layer as many small jobs: plan, map per row range, reduce per shard.

- plan (one job, one streaming scan of the points and ids): the count, the bounds, the
  relationships' distinct segments (HyperLogLog) and a hash sample of at most `SAMPLE`
  annotations, from which each spatial level's densest cell is estimated; it fixes the
  levels, their quotas, every index's sharding and the row ranges of the map jobs. Each
  index is sharded by the top bits of its keys as far as the sample's shards stay even
  (`sharded.local_preshift`): a spatial level's shards are then blocks of space, and a
  change in one place rewrites the shards of that place.
- map (per row range): each annotation encoded once and filed under (index, shard) for
  by_id, each relationship and its spatial level, as one Parquet part.
- reduce (per index and shard): that shard's rows of every part, sorted and grouped,
  written as one whole `.shard` file (or, small layers, one file per key).
- assemble: the shards linked under the layer's folder, and the `info`.

Spatial levels. The spec (annotations.md) samples each level in every cell alike and caps
each cell at `limit`, the rest going to finer levels. Here the level of an annotation is a
pure function of its id: a uniform number `u(id)` against the cumulative quotas `Q`; level L
takes `Q[L-1] <= u < Q[L]`, so what remains for L is a uniform sample of all annotations,
and each zoomed-out level is one too. The quota of L is `TARGET(limit)` over the expected
count of L's densest cell (the sample's densest cell times the share remaining); the first
level whose expected densest cell fits takes all that remains. Departure from the spec: the
cap. A cell over `limit` (a binomial draw above its expectation) keeps its `limit` lowest
`u`; the rest pass to the next level, filed by the reduce job of that cell, so the reduce
jobs of a level wait for those of the level above (a chain of waves, each wave parallel).
`SPARE_LEVELS` finer levels take what the finest overflows; a spare level left empty is
left out of `info`, and an overflow of the last spare level is refused.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ntclass.errors import NtclassError
from ntclass.io import atomic_path
from ntclass.settings import View
from ntclass.sql import duckdb_connection, query_one
from ntclass.view import sharded as shd
from ntclass.view.annotations import LIMIT, layer_info

SHARDED_ABOVE: int = View.default("sharded_above")  # one file per key below
ROWS_PER_PART: int = View.default("synapses_per_job")  # a map job's memory
SAMPLE = 1 << 21  # points from which the plan estimates the densest cells
SPARE_LEVELS = 2
RELATIONSHIPS = {"pre_segment": "pre_id", "post_segment": "post_id"}
BY_ID, FIRST_SPATIAL = 0, 1 + len(RELATIONSHIPS)


def target_count(limit: int) -> float:
    """The expected count of a level's densest cell: a standard deviation of a
    binomial draw under `limit`, so that few cells overflow (into the next level)."""
    return max(1.0, limit - math.sqrt(limit))


def uniform(ids: np.ndarray) -> np.ndarray:
    """splitmix64 of each id as a uint64: a reproducible uniform number per annotation."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def unit(hashed: np.ndarray) -> np.ndarray:
    return (hashed >> np.uint64(11)).astype(np.float64) / 2.0**53


def halve_longest(grid: list[int], chunk: list[float]) -> None:
    """The next level's cells: the longest side halved (the first of equal ones), so that
    levels above the finest take at least 1/3, 1/7, 1/15... of what reaches them."""
    d = chunk.index(max(chunk))
    chunk[d] /= 2
    grid[d] *= 2


def cells(points: np.ndarray, lower: Sequence[float], chunk: Sequence[float],
          grid: Sequence[int]) -> np.ndarray:
    """Each point's cell (n x 3), points as float64 of the stored float32."""
    cell = np.floor((points - np.asarray(lower)) / np.asarray(chunk)).astype(np.int64)
    return np.minimum(np.maximum(cell, 0), np.asarray(grid) - 1)


def morton_bits(grid: Sequence[int]) -> int:
    """The bits of the compressed Morton codes of a grid's cells."""
    return sum(max(0, math.ceil(math.log2(g))) for g in grid)


def morton(cell: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """neuroglancer's compressed Morton code of each cell: bit i of each dimension that
    still has bits at i, interleaved."""
    bits = [max(0, math.ceil(math.log2(g))) for g in grid]
    code, out = np.zeros(len(cell), np.uint64), 0
    c = cell.astype(np.uint64)
    for i in range(max(bits, default=0)):
        for d, b in enumerate(bits):
            if i < b:
                code |= ((c[:, d] >> np.uint64(i)) & np.uint64(1)) << np.uint64(out)
                out += 1
    return code


def cell_name(code: int, grid: Sequence[int]) -> str:
    """The unsharded file name `x_y_z` of a cell, from its compressed Morton code."""
    bits = [max(0, math.ceil(math.log2(g))) for g in grid]
    cell, out = [0, 0, 0], 0
    for i in range(max(bits, default=0)):
        for d, b in enumerate(bits):
            if i < b:
                cell[d] |= ((code >> out) & 1) << i
                out += 1
    return "_".join(str(c) for c in cell)


def record_size(classes: Sequence[str]) -> int:
    return (12 + 4 + 4 * len(classes) + 1 + 3) // 4 * 4


# --- plan -------------------------------------------------------------------------------


def plan_annotations(predictions: str, classes: Sequence[str], work: Path,
                     limit: int = LIMIT, sharded: bool | None = None,
                     rows_per_part: int = ROWS_PER_PART, sample: int = SAMPLE,
                     minishard_keys: int = shd.MINISHARD_KEYS,
                     shard_bytes: int = shd.SHARD_BYTES,
                     sharded_above: int = SHARDED_ABOVE) -> dict:
    """The jobs of one annotation layer: levels, quotas, shardings and row ranges. The
    count (the target's, from the Parquet footer) fixes the row ranges and the shards of
    by_id; `sharded`: None shards every index above `sharded_above` annotations."""
    n = _count(predictions)
    if n == 0:
        raise NtclassError(f"'{predictions}' holds no prediction to show")
    share = min(1.0, sample / n)
    scan = _scan(predictions, work, share)
    lower, upper = scan.lower, scan.upper
    sharded = n > sharded_above if sharded is None else sharded
    levels, quotas = _levels(scan.points, share, lower, upper, limit)
    size = record_size(classes)

    def sharding(keys: int, total: float, sample: np.ndarray, key_bits: int,
                 encoding: str = "gzip") -> dict | None:
        if not sharded:
            return None
        spec = shd.sharding_spec(max(1, int(keys)), int(total), encoding, minishard_keys,
                                 shard_bytes)
        return {**spec, "preshift_bits": shd.local_preshift(sample, key_bits, spec)}

    def segments(column: str) -> np.ndarray:
        return scan.keys[column][scan.keys[column] != 0]

    # the levels' cells only for the points a preshift is checked on
    checked = scan.points[::max(1, len(scan.points) // shd.CHECKED)]

    indices = [{"key": "by_id", "sharding": sharding(
        n, n * (size + 24), scan.keys["synapse_id"], scan.key_bits["synapse_id"], "raw")}]
    indices += [{"key": rel, "sharding": sharding(count, n * (size + 8), segments(column),
                                                  scan.key_bits[column])}
                for (rel, column), count in zip(RELATIONSHIPS.items(), scan.distinct)]
    previous = 0.0
    for spec, quota in zip(levels, quotas + [1.0] * SPARE_LEVELS):
        expected = n * (quota - previous) if spec["key"] != "spare" else 0
        previous = quota
        cells_ = min(expected, math.prod(spec["grid_shape"]))
        grid = spec["grid_shape"]
        codes = morton(cells(checked, lower, spec["chunk_size"], grid), grid)
        indices.append({**spec, "sharding": sharding(cells_, expected * (size + 8), codes,
                                                     morton_bits(grid))})
    for number, spec in enumerate(indices[FIRST_SPATIAL:]):
        spec["key"] = f"spatial{number}"
    parts = [[start, min(n, start + rows_per_part)] for start in range(0, n, rows_per_part)]
    return {"predictions": str(predictions), "count": n, "classes": list(classes),
            "limit": limit, "lower_bound": lower, "upper_bound": upper, "quotas": quotas,
            "parts": parts, "indices": indices}


def _count(predictions: str) -> int:
    """The annotations: the rows in the Parquet footer, known before any scan."""
    return pq.ParquetFile(predictions).metadata.num_rows


@dataclass(frozen=True)
class Scan:
    """What the plan needs of the predictions, from one streaming scan."""

    lower: list[float]  # the bounds, whole nm (x y z), the upper one exclusive
    upper: list[float]
    distinct: list[int]  # the distinct pre- and post-synaptic segments (HyperLogLog)
    points: np.ndarray  # a hash sample of the annotations' points (n x 3, x y z)
    keys: dict[str, np.ndarray]  # the sample's ids and segments (0: none), by column
    key_bits: dict[str, int]  # the bit length of each of those columns' largest value


ID_COLUMNS = ("synapse_id", *RELATIONSHIPS.values())


def _scan(predictions: str, work: Path, share: float) -> Scan:
    """One streaming scan of the points and ids, and one of a hash sample of `share` of
    the annotations."""
    work.mkdir(parents=True, exist_ok=True)
    con = duckdb_connection(work)
    source = f"read_parquet('{predictions}')"
    ids = {c: f"coalesce({c}::UBIGINT, 0::UBIGINT)" for c in ID_COLUMNS}
    row = query_one(con, f"""SELECT floor(min(x::FLOAT)), floor(min(y::FLOAT)),
        floor(min(z::FLOAT)), floor(max(x::FLOAT)) + 1, floor(max(y::FLOAT)) + 1,
        floor(max(z::FLOAT)) + 1, approx_count_distinct(nullif(pre_id, 0)),
        approx_count_distinct(nullif(post_id, 0)),
        {", ".join(f"max({v})" for v in ids.values())} FROM {source}""")
    sample = con.execute(f"""SELECT x::FLOAT::DOUBLE AS x, y::FLOAT::DOUBLE AS y,
        z::FLOAT::DOUBLE AS z, {", ".join(f"{v} AS {c}" for c, v in ids.items())}
        FROM {source}
        WHERE (hash(synapse_id::UBIGINT) >> 11)::DOUBLE / 9007199254740992.0 < {share!r}
        """).fetchnumpy()
    con.close()
    shutil.rmtree(work, ignore_errors=True)
    return Scan(lower=[float(v) for v in row[:3]], upper=[float(v) for v in row[3:6]],
                distinct=[max(1, int(v or 0)) for v in row[6:8]],
                points=np.stack([sample[a] for a in "xyz"], axis=1),
                keys={c: np.asarray(sample[c], np.uint64) for c in ID_COLUMNS},
                key_bits={c: int(v or 0).bit_length() for c, v in zip(ID_COLUMNS, row[8:])})


def write_plan(plan: dict, path: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(plan, indent=1))


def read_plan(path: str) -> dict:
    return json.loads(Path(path).read_text())


def _levels(points, share: float, lower, upper, limit: int) -> tuple[list[dict], list[float]]:
    """The spatial levels (then the spare ones) and each level's cumulative quota."""
    grid, chunk = [1, 1, 1], [u - lo for u, lo in zip(upper, lower)]
    levels, quotas, remaining = [], [], 1.0
    while True:
        spec = {"key": "level", "grid_shape": list(grid), "chunk_size": list(chunk),
                "limit": limit}
        levels.append(spec)
        counts = np.unique(morton(cells(points, lower, chunk, grid), grid),
                           return_counts=True)[1]
        densest = remaining * counts.max() / share
        if densest <= limit or max(chunk) <= 1.0:
            quotas.append(1.0)
            break
        remaining *= 1 - target_count(limit) / densest
        quotas.append(1 - remaining)
        halve_longest(grid, chunk)
    for _ in range(SPARE_LEVELS):
        halve_longest(grid, chunk)
        levels.append({"key": "spare", "grid_shape": list(grid), "chunk_size": list(chunk),
                       "limit": limit})
    return levels, quotas


# --- map --------------------------------------------------------------------------------

def _schema(size: int) -> pa.Schema:
    return pa.schema([("index", pa.uint16()), ("shard", pa.uint32()), ("key", pa.uint64()),
                      ("order", pa.uint64()), ("id", pa.uint64()),
                      ("record", pa.binary(size)), ("pre", pa.uint64()),
                      ("post", pa.uint64())])


def _read_rows(predictions: str, start: int, end: int, columns: list[str]) -> pa.Table:
    """Rows [start, end) of a Parquet file, reading only the row groups that hold them."""
    meta = pq.ParquetFile(predictions).metadata
    groups, first, offset = [], None, 0
    for g in range(meta.num_row_groups):
        rows = meta.row_group(g).num_rows
        if offset < end and offset + rows > start:
            groups.append(g)
            first = offset if first is None else first
        offset += rows
    table = pq.ParquetFile(predictions).read_row_groups(groups, columns=columns)
    return table.slice(start - first, end - start)


def _column(table: pa.Table, name: str, dtype) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(dtype)


def map_annotations(plan: dict, part: int, out: Path, predictions: str | None = None) -> int:
    """Encode the annotations of row range `part` of `predictions` (by default the
    planned table) once and file them under (index, shard) as one Parquet part; returns
    the rows written."""
    classes = plan["classes"]
    start, end = plan["parts"][part]
    columns = ["synapse_id", "x", "y", "z", "confidence", *classes, "predicted_nt",
               "pre_id", "post_id"]
    table = _read_rows(predictions or plan["predictions"], start, end, columns)
    n, size = table.num_rows, record_size(classes)
    record = np.zeros((n, size // 4), "<u4")
    floats = record.view("<f4")
    for i, name in enumerate(["x", "y", "z", "confidence", *classes]):
        floats[:, i] = _column(table, name, np.float32)
    nt = _nt(table.column("predicted_nt").to_pylist(), classes)
    record.view(np.uint8)[:, 4 * (4 + len(classes))] = nt
    points = floats[:, :3].astype(np.float64)
    ids = _column(table, "synapse_id", np.uint64)
    related = [table.column(c).fill_null(0).to_numpy().astype(np.uint64)
               for c in RELATIONSHIPS.values()]
    hashed = uniform(ids)
    level = np.searchsorted(np.asarray(plan["quotas"]), unit(hashed), side="right")
    pieces = [(BY_ID, ids, ids, np.arange(n))]
    for r, segments in enumerate(related):
        rows = np.flatnonzero(segments != 0)
        pieces.append((1 + r, segments[rows], ids[rows], rows))
    for lv in np.unique(level).tolist():
        rows = np.flatnonzero(level == lv)
        spec = plan["indices"][FIRST_SPATIAL + lv]
        keys = morton(cells(points[rows], plan["lower_bound"], spec["chunk_size"],
                            spec["grid_shape"]), spec["grid_shape"])
        pieces.append((FIRST_SPATIAL + lv, keys, hashed[rows], rows))
    blocks = [_part_block(plan, index, keys, order, ids, record.view(np.uint8), related, rows)
              for index, keys, order, rows in pieces]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pq.write_table(pa.concat_tables(blocks), tmp, row_group_size=1 << 16)
    return sum(b.num_rows for b in blocks)


def _nt(names: list, classes: Sequence[str]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    try:
        return np.array([lookup[v] for v in names], np.uint8)
    except KeyError as err:
        raise NtclassError(f"predicted_nt {err.args[0]!r} is not one of the classes "
                           f"{list(classes)}") from None


def _part_block(plan: dict, index: int, keys, order, ids, record, related, rows) -> pa.Table:
    """One index's rows of a part, sorted by (shard, key, order)."""
    spec = plan["indices"][index].get("sharding")
    shard = shd.shard_of(keys, spec) if spec else np.zeros(len(keys), np.uint32)
    sort = np.lexsort((order, keys, shard))
    rows = rows[sort]
    size = record.shape[1]
    pre, post = (related[0][rows], related[1][rows]) if index == BY_ID else (
        np.zeros(len(rows), np.uint64),) * 2
    return pa.table([pa.array(np.full(len(rows), index, np.uint16)), pa.array(shard[sort]),
                     pa.array(keys[sort]), pa.array(order[sort]), pa.array(ids[rows]),
                     pa.FixedSizeBinaryArray.from_buffers(
                         pa.binary(size), len(rows),
                         [None, pa.py_buffer(np.ascontiguousarray(record[rows]).tobytes())]),
                     pa.array(pre), pa.array(post)], schema=_schema(size))


# --- reduce -----------------------------------------------------------------------------


def reduce_annotations(plan: dict, index: int, shard: int, parts: Sequence[str],
                       overflow_in: Sequence[str], out: Path, overflow_out: Path) -> int:
    """Write shard `shard` of index `index` (a folder holding its `.shard` file, or a file
    per key) from every part, and the cells' overflow for the next level; returns keys."""
    spec = plan["indices"][index]
    size = record_size(plan["classes"])
    filters = [("index", "=", index), ("shard", "=", shard)]
    tables = [pq.read_table(p, filters=filters, schema=_schema(size)) for p in parts]
    tables += [pq.read_table(p, filters=[("shard", "=", shard)], schema=_schema(size))
               for p in overflow_in]
    table = pa.concat_tables(tables) if tables else _schema(size).empty_table()
    keys, order = _column(table, "key", np.uint64), _column(table, "order", np.uint64)
    sort = np.lexsort((order, keys))
    keys, ids = keys[sort], _column(table, "id", np.uint64)[sort]
    record = np.frombuffer(table.column("record").combine_chunks().buffers()[1], np.uint8,
                           len(keys) * size).reshape(-1, size)[sort] if len(keys) else \
        np.zeros((0, size), np.uint8)
    order = order[sort]
    starts = np.flatnonzero(np.diff(keys, prepend=keys[:1] - 1 if len(keys) else keys)) \
        if len(keys) else np.zeros(0, np.int64)
    if index >= FIRST_SPATIAL:
        rank = np.arange(len(keys)) - np.repeat(starts, np.diff(np.append(starts, len(keys))))
        keep = rank < spec["limit"]
        _write_overflow(plan, index, order[~keep], ids[~keep], record[~keep], overflow_out)
        keys, ids, record = keys[keep], ids[keep], record[keep]
        starts = np.flatnonzero(np.diff(keys, prepend=keys[:1] - 1)) if len(keys) else starts[:0]
    else:  # by_id and the relationships overflow nothing: an empty file, as every job has
        overflow_out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(overflow_out) as tmp:
            pq.write_table(_schema(size).empty_table(), tmp)
    ends = np.append(starts[1:], len(keys))
    if index == BY_ID:
        tails = _relationship_tails(_column(table, "pre", np.uint64)[sort],
                                    _column(table, "post", np.uint64)[sort])
        values = [record[i].tobytes() + tails[i] for i in range(len(keys))]
    else:
        values = [np.uint64(b - a).astype("<u8").tobytes() + record[a:b].tobytes()
                  + ids[a:b].astype("<u8").tobytes()
                  for a, b in zip(starts.tolist(), ends.tolist())]
    unique = keys[starts]
    if index == BY_ID and len(unique) < len(keys):
        raise NtclassError(f"'{plan['predictions']}' holds synapse_id "
                           f"{int(keys[np.flatnonzero(np.diff(keys) == 0)[0]])} more than once")
    with atomic_path(out, is_dir=True) as tmp:
        if spec.get("sharding"):
            if len(unique):
                name = shd.shard_name(shard, spec["sharding"])
                (tmp / name).write_bytes(shd.shard_file(unique, values, spec["sharding"]))
        else:
            for key, value in zip(unique.tolist(), values):
                name = cell_name(key, spec["grid_shape"]) if index >= FIRST_SPATIAL else key
                (tmp / str(name)).write_bytes(value)
    return len(unique)


def _relationship_tails(pre: np.ndarray, post: np.ndarray) -> list[bytes]:
    """by_id's related segments: per relationship a uint32 count and the uint64 ids."""
    none, one = (0).to_bytes(4, "little"), (1).to_bytes(4, "little")
    return [b"".join(none if s == 0 else one + s.to_bytes(8, "little") for s in pair)
            for pair in zip(pre.tolist(), post.tolist())]


def _write_overflow(plan: dict, index: int, order, ids, record, out: Path) -> None:
    """The annotations over their cell's limit, filed under the next level."""
    size = record.shape[1]
    if index + 1 >= len(plan["indices"]):
        if len(ids):
            raise NtclassError(f"{len(ids)} annotations still over the spatial index's "
                               f"limit of {plan['limit']} a cell at its finest level "
                               f"({plan['indices'][index]['chunk_size']} nm): points closer "
                               "than that cannot be told apart")
        table = _schema(size).empty_table()
    else:
        spec = plan["indices"][index + 1]
        points = np.ascontiguousarray(record[:, :12]).view("<f4").astype(np.float64)
        keys = morton(cells(points, plan["lower_bound"], spec["chunk_size"],
                            spec["grid_shape"]), spec["grid_shape"])
        table = _part_block(plan, index + 1, keys, order, ids, record,
                            [np.zeros(len(ids), np.uint64)] * 2, np.arange(len(ids)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)


def index_shards(plan: dict) -> list[tuple[int, int]]:
    """Every reduce job: (index, shard)."""
    return [(i, s) for i, spec in enumerate(plan["indices"])
            for s in range(shd.shards(spec["sharding"]) if spec.get("sharding") else 1)]


# --- assemble ---------------------------------------------------------------------------


def _layer_info(plan: dict, filled: set[int]) -> dict:
    """The layer's `info`; spatial levels without annotations are left out."""
    def entry(spec: dict) -> dict:
        return {k: v for k, v in spec.items() if v is not None}
    indices = plan["indices"]
    return layer_info(plan["lower_bound"], plan["upper_bound"], plan["classes"],
                      entry(indices[BY_ID]),
                      [{"id": s["key"], **entry(s)} for s in indices[1:FIRST_SPATIAL]],
                      [entry(s) for i, s in enumerate(indices)
                       if i >= FIRST_SPATIAL and i in filled])


def assemble_annotations(plan: dict, reduced: Sequence[tuple[int, str]], out: Path,
                         extra_info: dict | None = None) -> dict:
    """The layer's folder: every reduced shard linked (or copied) under its index, and the
    info; returns the info. `extra_info`: keys added to the info beside the spec's
    (neuroglancer ignores them), such as the provenance."""
    filled = set()
    with atomic_path(out, is_dir=True) as tmp:
        for index, folder in reduced:
            target = tmp / plan["indices"][index]["key"]
            for path in Path(folder).iterdir():
                if path.name.startswith("."):  # Snakemake's .snakemake_timestamp
                    continue
                target.mkdir(exist_ok=True)
                filled.add(index)
                try:
                    os.link(path, target / path.name)
                except OSError:  # another file system: copy
                    shutil.copyfile(path, target / path.name)
        info = {**_layer_info(plan, filled), **(extra_info or {})}
        (tmp / "info").write_text(json.dumps(info, indent=1))
    return info


# --- one process ------------------------------------------------------------------------


def write_annotations(predictions: str, out: Path, classes: Sequence[str], work: Path,
                      limit: int = LIMIT, sharded: bool | None = None,
                      extra_info: dict | None = None, **plan_options) -> dict:
    """Write `predictions` (a Parquet table of ntclass predictions) as an annotation
    collection in `out`: plan, map, reduce and assemble in this process (the layer as one
    job), the very code of the jobs; returns the info. `sharded`: None decides by the
    count."""
    plan = plan_annotations(predictions, classes, work, limit, sharded, **plan_options)
    parts = [work / "parts" / f"{p}.parquet" for p in range(len(plan["parts"]))]
    for p, path in enumerate(parts):
        map_annotations(plan, p, path)
    reduced, overflow = [], {}
    for index, shard in index_shards(plan):  # levels in order: an overflow feeds the next
        folder = work / "shards" / str(index) / str(shard)
        spill = work / "overflow" / str(index) / f"{shard}.parquet"
        reduce_annotations(plan, index, shard, parts, overflow.get(index, []), folder, spill)
        overflow.setdefault(index + 1, []).append(spill) if index >= FIRST_SPATIAL else None
        reduced.append((index, folder))
    info = assemble_annotations(plan, reduced, out, extra_info)
    shutil.rmtree(work, ignore_errors=True)
    return info
