"""What the raw stamps of the prediction cache cost (predict/rawstamps.py).

A shard job stamps every synapse with the identity of the raw its cube is read from:
the volume's metadata and one stamp per storage object its cube touches (a stat of a
local chunk file, a HEAD request over HTTP). Printed:
  - local zarr: synapses/s of `stamp_shard` (stream the shard, place the cubes, stat each
    touched chunk file once, write the stamped shard) on a FAFB-like volume whose chunk
    files all exist (empty files: a stat costs the same), and chunk files stat'ed;
  - HTTP (RangeHTTPServer on 127.0.0.1): HEAD requests/s as the stamps take them, against
    GET requests/s of the same objects' bytes (the least a reader must fetch).
Compare with reading the cubes: about 1,100-1,200 synapses/s per worker from local
Blosc zarr or raw precomputed, 180-190 from JPEG or gzip (README, Benchmarks).

  .venv/bin/python benchmarks/raw_stamps.py
  .venv/bin/python benchmarks/raw_stamps.py --synapses 1000000 --shape 256 16384 16384
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from remote_servers import http_server  # noqa: E402

from ntclass.predict.rawstamps import HttpStamps, stamp_shard  # noqa: E402
from ntclass.predict.targets import shard_file, write_target  # noqa: E402
from ntclass.settings import Partition  # noqa: E402
from ntclass.sources.kinds import source_of  # noqa: E402

VOXEL = (40, 4, 4)
CHUNK = (16, 256, 256)
CUBE = (16, 160, 160)


def virtual_zarr(folder: Path, shape) -> Path:
    """A zarr array whose every chunk file exists (empty: a stat costs the same)."""
    array = folder / "v.zarr" / "raw"
    array.mkdir(parents=True)
    (folder / "v.zarr" / ".zgroup").write_text('{"zarr_format": 2}')
    (array / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": list(shape), "chunks": list(CHUNK), "dtype": "|u1",
        "compressor": None, "fill_value": 0, "filters": None, "order": "C"}))
    (array / ".zattrs").write_text(json.dumps({"voxel_size": list(VOXEL)}))
    grid = [-(-s // c) for s, c in zip(shape, CHUNK)]
    for z in range(grid[0]):
        for y in range(grid[1]):
            for x in range(grid[2]):
                (array / f"{z}.{y}.{x}").touch()
    return folder / "v.zarr"


def local_rate(folder: Path, shape, n: int) -> tuple[float, int]:
    container = virtual_zarr(folder, shape)
    rng = np.random.default_rng(0)
    loc = rng.uniform(0, 1, (n, 3)) * np.array(shape) * VOXEL
    pd.DataFrame({"synapse_id": np.arange(n) + 1, "z": loc[:, 0], "y": loc[:, 1],
                  "x": loc[:, 2]}).to_csv(folder / "s.csv", index=False)
    target = source_of({"type": "table", "table": str(folder / "s.csv"),
                        "raw_container": str(container), "raw_dataset": "raw"}, "targets.t")
    write_target(None, target, ["a", "b"], None,
                 Partition(shards=1, synapses_per_shard=None, block_size=(640, 2048, 2048),
                           read_batch_rows=100_000), str(folder / "t"))
    begin = time.perf_counter()
    stamp_shard(folder / "t" / shard_file(0), folder / "stamped.parquet", None, CUBE,
                "ntclass")
    seconds = time.perf_counter() - begin
    files = len(list((container / "raw").iterdir()))
    return n / seconds, files


def http_rates(folder: Path, objects: int) -> tuple[float, float]:
    root = folder / "served"
    root.mkdir()
    payload = np.random.default_rng(0).integers(0, 256, 64 * 1024, np.uint8).tobytes()
    for i in range(objects):
        (root / f"{i}").write_bytes(payload)  # a 64 KB chunk, as JPEG 64^3 chunks are
    server = http_server(root, folder / "http.log")
    try:
        keys = [str(i) for i in range(objects)]
        begin = time.perf_counter()
        HttpStamps(server.url + "/", server.url)(keys)
        heads = objects / (time.perf_counter() - begin)

        def get(key):
            with urllib.request.urlopen(f"{server.url}/{key}") as answer:
                return len(answer.read())

        begin = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(get, keys))
        gets = objects / (time.perf_counter() - begin)
    finally:
        server.stop()
    return heads, gets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synapses", type=int, default=200_000)
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 8192, 8192])
    parser.add_argument("--objects", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rate, files = local_rate(Path(tmp), args.shape, args.synapses)
        print(f"local zarr {args.shape}, chunks {list(CHUNK)} ({files} chunk files), "
              f"cubes {list(CUBE)}: {rate:,.0f} synapses/s stamped")
        heads, gets = http_rates(Path(tmp), args.objects)
        print(f"HTTP, {args.objects} objects of 64 KB: {heads:,.0f} HEAD/s stamped, "
              f"{gets:,.0f} GET/s of their bytes")


if __name__ == "__main__":
    main()
