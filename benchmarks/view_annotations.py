"""Peak memory and time of the neuroglancer annotation writer at 10^5-10^7 synapses.

A prediction table at whole-brain shape (FAFB's extent, synapses clustered in neuropils,
64-bit ids, seven classes, one pre-synaptic segment per 300 synapses and one post-synaptic
per 100) is written as sharded precomputed annotations by
`ntclass.view.annotations.write_annotations`, each size in a fresh process. Printed per
size: seconds, synapses/s, peak memory (RSS), files and bytes written; then each spatial
level's cells, share of the synapses and fullest cell, read back from the written index
(which must hold every synapse once, no cell over its limit, and at most half of the
synapses at the finest level); then the ratio of the largest size's peak memory to the
smallest's. Target: memory bounded independent of the number of synapses (ratio within
1.2).

  .venv/bin/python benchmarks/view_annotations.py                 # 10^5, 10^6, 10^7
  .venv/bin/python benchmarks/view_annotations.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
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


def child(table: str, out: str) -> None:
    """Write the annotations; print a JSON line of seconds and peak memory."""
    from ntclass.view.annotations import write_annotations

    begin = time.perf_counter()
    info = write_annotations(table, Path(out), CLASSES, Path(out).parent / "work")
    seconds = time.perf_counter() - begin
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb,
                      "levels": len(info["spatial"]),
                      "sharded": "sharding" in info["by_id"]}))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**5, 10**6, 10**7])
    parser.add_argument("--child", nargs=2, metavar=("TABLE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    rows = []
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        for n in args.sizes:
            table, out = Path(tmp) / f"t{n}.parquet", Path(tmp) / f"a{n}" / "annotations"
            write_table(table, n)
            result = subprocess.run([sys.executable, __file__, "--child", str(table),
                                     str(out)], capture_output=True, text=True, check=True)
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            figures["files"], figures["bytes"] = files_and_bytes(out)
            rows.append((n, figures))
            print(f"{n:>10,} synapses  {figures['seconds']:7.1f} s  "
                  f"{n / figures['seconds']:9,.0f} synapses/s  peak {figures['peak_mb']:6.0f} MB"
                  f"  {figures['files']:>6} files  {figures['bytes'] / 2**20:8.1f} MiB  "
                  f"{figures['levels']} spatial levels  sharded {figures['sharded']}",
                  flush=True)
            for level, row in enumerate(spatial_levels(out, n)):
                chunk = " x ".join(f"{c:,.1f}" for c in row["chunk_um"])
                print(f"    level {level:>2}: {row['cells']:>7,} cells of {chunk} um, "
                      f"{row['annotations'] / n:6.1%} of the synapses, fullest cell "
                      f"{row['fullest']:,}", flush=True)
            table.unlink()
    if len(rows) > 1:
        (n0, small), (n1, large) = rows[0], rows[-1]
        print(f"peak memory at {n1:,} / at {n0:,}: {large['peak_mb'] / small['peak_mb']:.2f} "
              f"(target <= 1.2); time per synapse: "
              f"{(large['seconds'] / n1) / (small['seconds'] / n0):.2f}")


if __name__ == "__main__":
    main()
