"""Time and peak memory of the annotation layer's jobs at 10^5-10^7 synapses.

A prediction table at whole-brain shape (FAFB's extent, synapses clustered in neuropils,
64-bit ids, seven classes, one pre-synaptic segment per 300 synapses and one post-synaptic
per 100) is written as sharded precomputed annotations by the jobs of
`ntclass.view.annotation_jobs` (the plan, a map job per row range, a reduce job per index
and shard, the assembly), each job in a fresh process, one after another, as a cluster
would run them side by side. Printed per size: each kind of job's count, its slowest and
summed seconds, synapses/s per job (the rows it handled over its seconds) and its largest
peak memory (RSS); files and bytes written; then each spatial level's cells, share of the
synapses and fullest cell, read back from the written index (which must hold every
synapse once, no cell over its limit, and at most half of the synapses at the finest
level); then the jobs a FAFB-sized layer (2.4e8 synapses) is planned as. Targets: at least
50,000 synapses/s per job; each job's peak memory bounded whatever the target's size.

`--rerun`: instead, what a rerun rewrites. The ids are numbered in space (Morton order of
1 um cells, as block-wise detection numbers them), the layer is written (the jobs' code in
one process, the workflow's defaults), then again after 1 % of the synapses, the nearest to
one synapse, are predicted anew (positions and ids kept); printed per index: the shard
files and bytes that changed, of all (issue 28: at most 10 % of the files). `--shard-mb`
sets the shards' size: at 10^7 synapses, 2 MB gives about as many shards per index as the
default 50 MB gives a FAFB-sized layer (2.4e8).

  .venv/bin/python benchmarks/view_annotations.py                 # 10^5, 10^6, 10^7
  .venv/bin/python benchmarks/view_annotations.py --sizes 100000 1000000
  .venv/bin/python benchmarks/view_annotations.py --rerun --sizes 1000000 10000000
  .venv/bin/python benchmarks/view_annotations.py --rerun --sizes 10000000 --shard-mb 2
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CLASSES = ["acetylcholine", "gaba", "glutamate", "serotonin", "octopamine", "dopamine",
           "histamine"]
SYNAPSES_PER_PRE, SYNAPSES_PER_POST = 300, 100
EXTENT_NM = np.array([280e3, 400e3, 1000e3])  # z, y, x: about FAFB's
ROWS_PER_PART = 1_000_000


def write_table(path: Path, n: int, seed: int = 0) -> None:
    """n synapses in 200 neuropil-like clusters, written in parts of a million rows."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.1, 0.9, (200, 3)) * EXTENT_NM
    spreads = rng.uniform(5e3, 40e3, 200)
    # 64-bit segment ids above 2^53, as FlyWire's root ids
    pre_ids = rng.integers(2**56, 2**63, n // SYNAPSES_PER_PRE + 1, dtype=np.uint64)
    post_ids = rng.integers(2**56, 2**63, n // SYNAPSES_PER_POST + 1, dtype=np.uint64)
    writer = None
    for start in range(0, n, ROWS_PER_PART):
        m = min(ROWS_PER_PART, n - start)
        which = rng.integers(0, 200, m)
        loc = np.clip(rng.normal(centres[which], spreads[which, None]), 0, EXTENT_NM)
        probs = rng.dirichlet(np.ones(len(CLASSES)), m).astype(np.float32)
        columns = {"synapse_id": pa.array(np.arange(start, start + m, dtype=np.uint64)
                                          + 2**60),
                   "z": loc[:, 0], "y": loc[:, 1], "x": loc[:, 2],
                   "pre_id": pa.array(rng.choice(pre_ids, m)),
                   "post_id": pa.array(rng.choice(post_ids, m))}
        columns |= {c: probs[:, i] for i, c in enumerate(CLASSES)}
        columns["predicted_nt"] = pa.array(np.asarray(CLASSES)[probs.argmax(axis=1)])
        columns["confidence"] = probs.max(axis=1)
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def child(kind: str, args: list[str]) -> None:
    """Run one job; print a JSON line of its seconds, peak memory and rows handled."""
    from ntclass.view import annotation_jobs as jobs

    begin = time.perf_counter()
    if kind == "plan":
        table, plan_path = args
        plan = jobs.plan_annotations(table, CLASSES, Path(plan_path).parent / "plan-work")
        jobs.write_plan(plan, plan_path)
        rows = plan["count"]
    elif kind == "map":
        plan_path, part, out = args
        rows = jobs.map_annotations(jobs.read_plan(plan_path), int(part), Path(out))
    elif kind == "reduce":
        plan_path, index, shard, work = args
        plan, work = jobs.read_plan(plan_path), Path(work)
        parts = sorted(str(p) for p in (work / "parts").iterdir())
        overflow = sorted(str(p) for p in (work / "overflow" / str(int(index) - 1)).glob("*"))
        jobs.reduce_annotations(plan, int(index), int(shard), parts,
                                overflow if int(index) > jobs.FIRST_SPATIAL else [],
                                work / "shards" / index / shard,
                                work / "overflow" / index / f"{shard}.parquet")
        rows = 0  # counted from the parts by the parent
    else:
        plan_path, work, out = args
        plan, work = jobs.read_plan(plan_path), Path(work)
        reduced = [(i, str(work / "shards" / str(i) / str(s)))
                   for i, s in jobs.index_shards(plan)]
        rows = len(jobs.assemble_annotations(plan, reduced, Path(out))["spatial"])
    seconds = time.perf_counter() - begin
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "rows": rows}))


def run_job(kind: str, *args) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", kind, *map(str, args)],
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{kind} job {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_layer(table: Path, work: Path, out: Path) -> dict[str, list[dict]]:
    """Every job of the layer, each in its own process; the figures of each, by kind."""
    from ntclass.view import annotation_jobs as jobs

    work.mkdir(parents=True)
    plan_path = work / "plan.json"
    figures = {"plan": [run_job("plan", table, plan_path)]}
    plan = jobs.read_plan(plan_path)
    figures["map"] = [run_job("map", plan_path, p, work / "parts" / f"{p}.parquet")
                      for p in range(len(plan["parts"]))]
    counts = _rows_per_shard(work / "parts")
    figures["reduce"] = []
    for index, shard in jobs.index_shards(plan):
        job = run_job("reduce", plan_path, index, shard, work)
        job["rows"] = counts.get((index, shard), 0)
        figures["reduce"].append(job)
    figures["assemble"] = [run_job("assemble", plan_path, work, out)]
    return figures


def _rows_per_shard(parts: Path) -> dict[tuple[int, int], int]:
    counts: dict[tuple[int, int], int] = {}
    for part in parts.iterdir():
        t = pq.read_table(part, columns=["index", "shard"]).group_by(["index", "shard"])
        for row in t.aggregate([("index", "count")]).to_pylist():
            key = (row["index"], row["shard"])
            counts[key] = counts.get(key, 0) + row["index_count"]
    return counts


def fafb_jobs(plan: dict, n: int = 240_000_000) -> dict[str, int]:
    """Map jobs and by_id and relationship shards (each a reduce job) of a FAFB-sized layer,
    the measured segments per synapse scaled to n; the spatial levels' shards come on top."""
    from ntclass.view import annotation_jobs as jobs
    from ntclass.view.sharded import sharding_spec

    size, scale = jobs.record_size(CLASSES), n / plan["count"]
    out = {"map": -(-n // jobs.ROWS_PER_PART),
           "by_id": 1 << sharding_spec(n, n * (size + 24), "raw")["shard_bits"]}
    for spec in plan["indices"][1:jobs.FIRST_SPATIAL]:
        keys = int(scale * (1000 << (spec["sharding"]["minishard_bits"]
                                     + spec["sharding"]["shard_bits"])))
        out[spec["key"]] = 1 << sharding_spec(keys, n * (size + 8))["shard_bits"]
    return out


def spatial_levels(out: Path, n: int) -> list[dict]:
    """Each spatial level's cells, annotations and fullest cell, read back from `out`;
    refuses an index that misses a synapse, holds one twice, or has a cell over its limit."""
    import tensorstore as ts

    info = json.loads((out / "info").read_text())
    record = (12 + 4 * (len(info["properties"]) - 1) + 1 + 3) // 4 * 4
    rows, ids = [], []
    for spec in info["spatial"]:
        base = f"file://{out / spec['key']}/"
        store = ts.KvStore.open({"driver": "neuroglancer_uint64_sharded", "base": base,
                                 "metadata": spec["sharding"]} if "sharding" in spec
                                else base).result()
        reads = [store.read(key) for key in store.list().result()]
        counts = []
        for value in (r.result().value for r in reads):
            count = int(np.frombuffer(value, "<u8", 1)[0])
            counts.append(count)
            ids.append(np.frombuffer(value, "<u8", count, 8 + count * record))
        if max(counts) > spec["limit"]:
            raise SystemExit(f"{spec['key']}: a cell holds {max(counts)} annotations, over "
                             f"its limit of {spec['limit']}")
        rows.append({"cells": len(counts), "annotations": sum(counts), "fullest": max(counts),
                     "chunk_um": [c / 1000 for c in spec["chunk_size"]]})
    found = np.sort(np.concatenate(ids))
    if not np.array_equal(found, np.arange(n, dtype=np.uint64) + 2**60):
        raise SystemExit(f"the spatial index holds {len(found):,} annotations "
                         f"({len(np.unique(found)):,} distinct), not each of {n:,} synapses once")
    if rows[-1]["annotations"] > n / 2:
        raise SystemExit(f"the finest spatial level holds {rows[-1]['annotations'] / n:.0%} "
                         "of the synapses, over half")
    return rows


def files_and_bytes(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def replaced(table: pa.Table, column: str, values: np.ndarray) -> pa.Table:
    return table.set_column(table.schema.get_field_index(column), column, pa.array(values))


def numbered_in_space(path: Path) -> pa.Table:
    """The table at `path` with its synapse ids renumbered in the Morton order of 1 um
    cells (the same range of ids as before)."""
    from ntclass.predict.targets import morton_cells

    table = pq.read_table(path)
    where = np.column_stack([table[c].to_numpy() for c in ("z", "y", "x")])
    order = np.argsort(morton_cells(where, (1000,) * 3), kind="stable")
    ids = np.empty(len(order), np.uint64)
    ids[order] = np.arange(len(order), dtype=np.uint64) + 2**60
    return replaced(table, "synapse_id", ids)


def repredicted_in_one_place(table: pa.Table, share: float = 0.01) -> pa.Table:
    """`table` with new probabilities for the `share` of its synapses nearest to one."""
    rng = np.random.default_rng(5)
    where = np.column_stack([table[c].to_numpy() for c in ("z", "y", "x")])
    distance = np.linalg.norm(where - where[rng.integers(len(where))], axis=1)
    count = int(share * len(where))
    changed = np.argpartition(distance, count)[:count]
    probs = np.column_stack([table[c].to_numpy() for c in CLASSES])
    probs[changed] = rng.dirichlet(np.ones(len(CLASSES)), len(changed)).astype(np.float32)
    for i, c in enumerate(CLASSES):
        table = replaced(table, c, probs[:, i])
    table = replaced(table, "predicted_nt", np.asarray(CLASSES)[probs.argmax(axis=1)])
    return replaced(table, "confidence", probs.max(axis=1))


def shard_files(folder: Path) -> dict[str, tuple[int, bytes]]:
    import hashlib

    return {str(p.relative_to(folder)): (p.stat().st_size,
                                         hashlib.sha1(p.read_bytes()).digest())
            for p in folder.rglob("*.shard")}


def rerun(tmp: Path, n: int, shard_mb: float | None) -> None:
    """Print the shard files and bytes that a rerun after 1 % changed in one place
    rewrites, per index (the spatial levels together)."""
    from ntclass.view.annotation_jobs import write_annotations

    write_table(tmp / "t.parquet", n)
    table = numbered_in_space(tmp / "t.parquet")
    layers = {}
    for name, version in (("before", table), ("after", repredicted_in_one_place(table))):
        pq.write_table(version, tmp / f"{name}.parquet")
        begin = time.perf_counter()
        write_annotations(str(tmp / f"{name}.parquet"), tmp / name, CLASSES, tmp / "work",
                          **({"shard_bytes": int(shard_mb * 1e6)} if shard_mb else {}))
        print(f"{n:>10,} synapses, layer {name}: {time.perf_counter() - begin:.1f} s",
              flush=True)
        layers[name] = shard_files(tmp / name)
    before, after = layers["before"], layers["after"]
    if before.keys() != after.keys():
        raise SystemExit("the rerun's layer has other shard files than the first")
    # per index: files changed, files, bytes changed, bytes
    tally: dict[str, np.ndarray] = {}
    for name, (size, digest) in before.items():
        index = name.split("/")[0]
        index = "spatial" if index.startswith("spatial") else index
        changed = digest != after[name][1]
        tally[index] = tally.get(index, 0) + np.array([changed, 1, changed * size, size])
    tally["all"] = sum(tally.values())
    for index, (files, of, size, total) in tally.items():
        print(f"    {index:<13} {files:>4} of {of:>4} shard files changed ({files / of:6.1%}),"
              f" {size / 2**20:8.1f} of {total / 2**20:8.1f} MiB ({size / total:6.1%})",
              flush=True)
    for path in tmp.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**5, 10**6, 10**7])
    parser.add_argument("--rerun", action="store_true",
                        help="what a rerun after 1 %% changed in one place rewrites")
    parser.add_argument("--shard-mb", type=float,
                        help="the shards' size with --rerun (default: the workflow's)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1:])
        return
    if args.rerun:
        with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
            for n in args.sizes:
                rerun(Path(tmp), n, args.shard_mb)
        return
    from ntclass.view.annotation_jobs import read_plan

    peaks = []
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        for n in args.sizes:
            table, out = Path(tmp) / f"t{n}.parquet", Path(tmp) / f"a{n}" / "annotations"
            write_table(table, n)
            figures = write_layer(table, Path(tmp) / f"w{n}", out)
            files, size = files_and_bytes(out)
            print(f"{n:>10,} synapses: {files} files, {size / 2**20:.1f} MiB", flush=True)
            for kind, jobs in figures.items():
                rates = [j["rows"] / j["seconds"] for j in jobs if j["rows"] > 10_000]
                rate = f"{min(rates):9,.0f}-{max(rates):9,.0f} synapses/s a job" if rates else ""
                slowest = max(j["seconds"] for j in jobs)
                print(f"    {kind:<8} {len(jobs):>4} jobs, slowest {slowest:6.1f} s, "
                      f"summed {sum(j['seconds'] for j in jobs):7.1f} s, largest peak "
                      f"{max(j['peak_mb'] for j in jobs):6.0f} MB  {rate}", flush=True)
            peaks.append((n, max(j["peak_mb"] for jobs in figures.values() for j in jobs)))
            for level, row in enumerate(spatial_levels(out, n)):
                chunk = " x ".join(f"{c:,.1f}" for c in row["chunk_um"])
                print(f"    level {level:>2}: {row['cells']:>7,} cells of {chunk} um, "
                      f"{row['annotations'] / n:6.1%} of the synapses, fullest cell "
                      f"{row['fullest']:,}", flush=True)
            plan = read_plan(Path(tmp) / f"w{n}" / "plan.json")
            print(f"    a FAFB-sized layer (2.4e8): {fafb_jobs(plan)} jobs, and a reduce "
                  "job per spatial shard", flush=True)
            shutil.rmtree(Path(tmp) / f"w{n}")
            table.unlink()
    if len(peaks) > 1:
        (n0, small), (n1, large) = peaks[0], peaks[-1]
        print(f"largest job's peak memory at {n1:,} / at {n0:,}: {large / small:.2f} "
              f"({large:.0f} MB; target within 1.2 or under 1,200 MB)")


if __name__ == "__main__":
    main()
