"""Prediction's data path alone, at FAFB shape and FAFB synapse density, per store layout.

Everything a shard job does except the model's forward pass: plan (which synapses the
cache lacks, in spatial order), daisy blocks, cube reads and chunk decoding, batches
assembled and mapped to the network's input, results written, published to the cache and
joined into the shard's table. The model is replaced by one that returns zeros.

The same EM-like voxels are written in each layout labs use (neuroglancer precomputed
JPEG 64^3 sharded, N5 gzip 64^3, zarr Blosc-LZ4), and printed per layout in one run:
  - synapses/s per worker, for 1 worker and for one worker per core (the fixed cost of a
    shard job, measured on its first 64 synapses, taken out), and the scaling per added
    worker (rate(w) / (w * rate(1)), each worker given cores // w decode threads);
  - chunk voxels decoded per synapse (in cube volumes), counted by the reader, and the
    least possible: every chunk a cube touches decoded once;
  - the decode bound: TensorStore alone decoding every touched chunk once, concurrently
    on every core, measured in the same run, and the data path's ratio to it;
  - with --http: the same data path reading the volume from a local HTTP server with
    byte ranges, and its ratio to the local rate.

  .venv/bin/python benchmarks/predict_feed.py                      # all three layouts
  .venv/bin/python benchmarks/predict_feed.py --layouts jpeg --http --volume-shape 128 2048 2048
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import tensorstore as ts
from scipy.ndimage import gaussian_filter

from ntclass import stores
from ntclass.predict.cubes import cpu_count, cube_reader
from ntclass.predict.shard import BlockPredictor, PredictConfig, predict_shard
from ntclass.predict.targets import shard_file, write_target
from ntclass.settings import Partition, Prediction
from ntclass.sources.kinds import source_of
from ntclass.volumes import open_raw, open_tensorstore

VOXEL = (40, 4, 4)
CUBE = (16, 160, 160)  # Synister's FAFB input shape
FAFB_DENSITY = 1.9e-6  # synapses per voxel
CLASSES = ["acetylcholine", "gaba", "glutamate", "serotonin", "dopamine", "octopamine",
           "tyramine"]
SHARDING = {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 0, "hash": "identity",
            "minishard_bits": 6, "shard_bits": 3, "minishard_index_encoding": "gzip",
            "data_encoding": "raw"}
# layout: (folder, dataset, TensorStore spec without kvstore)
LAYOUTS = ("jpeg", "gzip", "blosc")


def em_tile(rng: np.random.Generator, shape=(64, 1024, 1024)) -> np.ndarray:
    """Grey texture with membrane-like dark ridges and fine grain: about as compressible
    as EM (Blosc-LZ4 about 1.2x)."""
    blobs = gaussian_filter(rng.normal(size=shape).astype(np.float32), (0.5, 6, 6))
    ridges = np.exp(-(blobs / blobs.std()) ** 2 * 8)
    grain = gaussian_filter(rng.normal(0, 6, size=shape).astype(np.float32), (0, 0.7, 0.7))
    return np.clip(150 - 90 * ridges + 3 * grain, 0, 255).astype(np.uint8)


def create(layout: str, root: Path, shape: tuple[int, int, int], chunk: tuple[int, ...]
           ) -> tuple[ts.TensorStore, str, str]:
    """An empty volume of `layout` as a z, y, x store; its container and dataset."""
    if layout == "jpeg":
        path = root / "em.precomputed"
        store = ts.open({
            "driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(path)},
            "create": True,
            "multiscale_metadata": {"type": "image", "data_type": "uint8", "num_channels": 1},
            "scale_metadata": {"size": list(shape[::-1]), "resolution": list(VOXEL[::-1]),
                               "encoding": "jpeg", "jpeg_quality": 85,
                               "chunk_size": list(chunk[::-1]), "voxel_offset": [0, 0, 0],
                               "sharding": SHARDING}}).result()
        return store[..., 0].T, str(path), "s0"
    if layout == "gzip":
        path = root / "em.n5"
        store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": f"{path}/raw"},
                         "create": True, "metadata": {
                             "dimensions": list(shape[::-1]), "blockSize": list(chunk[::-1]),
                             "dataType": "uint8", "compression": {"type": "gzip"}}}).result()
        (path / "raw/attributes.json").write_text(
            (path / "raw/attributes.json").read_text()[:-1]
            + f', "resolution": {list(VOXEL[::-1])}}}')
        return store.T, str(path), "raw"
    path = root / "em.zarr"
    store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": f"{path}/raw"},
                     "create": True, "metadata": {
                         "shape": list(shape), "chunks": list(chunk), "dtype": "|u1",
                         "compressor": {"id": "blosc", "cname": "lz4", "clevel": 5,
                                        "shuffle": 1}}}).result()
    (path / "raw/.zattrs").write_text(f'{{"voxel_size": {list(VOXEL)}}}')
    return store, str(path), "raw"


def write_volume(layout: str, root: Path, shape, chunk, seed: int = 0, tile: int = 1024
                 ) -> tuple[str, str, float]:
    """The same EM-like voxels in `layout` (from a texture of `tile`^2 voxels a section,
    shifted about); returns container, dataset, compression."""
    rng = np.random.default_rng(seed)
    tile = em_tile(rng, (chunk[0], tile, tile))
    store, container, dataset = create(layout, root, shape, chunk)
    for z in range(0, shape[0], tile.shape[0]):
        slab = np.empty((min(tile.shape[0], shape[0] - z), *shape[1:]), np.uint8)
        for y in range(0, shape[1], tile.shape[1]):
            for x in range(0, shape[2], tile.shape[2]):
                piece = np.roll(tile, rng.integers(0, tile.shape[1], 2), axis=(1, 2))
                h, w = min(tile.shape[1], shape[1] - y), min(tile.shape[2], shape[2] - x)
                slab[:, y:y + h, x:x + w] = piece[:len(slab), :h, :w]
        store[z:z + len(slab)].write(slab).result()
    stored = sum(p.stat().st_size for p in Path(container).rglob("*") if p.is_file())
    return container, dataset, float(np.prod(shape)) / stored


class FeedOnly(BlockPredictor):
    """The data path of `BlockPredictor`: everything up to the batch of raw cubes a GPU
    would receive (its copy, intensity mapping and forward pass run on the device)."""

    def _run(self, model, batch, intensity) -> np.ndarray:
        return np.zeros((len(batch), len(self.cfg.classes)), np.float32)

    @classmethod
    def cube_placement(cls, model_path, cfg) -> tuple[tuple, str]:
        return tuple(CUBE), "ntclass"

    def model(self):
        if self._model is None:
            self._device = "cpu"
            self._record = {"input_shape": list(CUBE), "voxel_size": list(VOXEL),
                            "intensity": {"uint8": [0.0, 255.0]}}
            self._threads = max(1, cpu_count() // self.cfg.settings.workers)
            self._model = "none"
        return self._model


def touched_chunks(store: ts.TensorStore, rows: pd.DataFrame) -> list[tuple]:
    """Every chunk a cube touches, once."""
    chunk = np.asarray(store.chunk_layout.read_chunk.shape)
    vox = np.floor(rows[["z", "y", "x"]].to_numpy() / VOXEL).astype(np.int64)
    lo = np.maximum(vox - np.array(CUBE) // 2, 0) // chunk
    hi = (np.minimum(vox - np.array(CUBE) // 2 + CUBE, store.shape) - 1) // chunk
    found = set()
    for a, b in zip(lo, hi):
        found.update((z, y, x) for z in range(a[0], b[0] + 1) for y in range(a[1], b[1] + 1)
                     for x in range(a[2], b[2] + 1))
    return sorted(found)


def decode_bound(container: str, dataset: str, rows: pd.DataFrame) -> tuple[float, float]:
    """Synapses/s when TensorStore alone decodes every touched chunk once, concurrently on
    every core; and those chunks' voxels per synapse."""
    volume = open_raw(container, dataset)
    store = open_tensorstore(volume, stores.context(cpu_count(), 0))
    chunk = np.asarray(store.chunk_layout.read_chunk.shape)
    keys = touched_chunks(store, rows)
    voxels = 0
    start = time.perf_counter()
    for first in range(0, len(keys), 512):  # 512 chunks in flight at most
        futures = []
        for key in keys[first:first + 512]:
            a = np.asarray(key) * chunk
            b = np.minimum(a + chunk, store.shape)
            voxels += int(np.prod(b - a))
            futures.append(store[a[0]:b[0], a[1]:b[1], a[2]:b[2]].read())
        for f in futures:
            f.result()
    return len(rows) / (time.perf_counter() - start), voxels / len(rows)


def serve_http(root: Path) -> tuple[subprocess.Popen, str]:
    """RangeHTTPServer (http.server with byte ranges) on a free port of 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "RangeHTTPServer", str(port), "--bind",
                               "127.0.0.1"], cwd=root, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    return server, url


class Run:
    """Shard jobs of the data path on one target; each timed at its best of `repeats`."""

    def __init__(self, tmp: Path, args):
        self.tmp, self.args = tmp, args
        self.no_model = tmp / "no-model"  # names the cache; FeedOnly loads nothing
        self.no_model.write_bytes(b"feed only")
        self.count = 0
        self.decoded = 0  # chunk voxels the last full 1-worker job decoded

    def rate(self, shard: Path, small: Path, n: int, workers: int) -> float:
        """Synapses/s once running: the fixed cost (the job on 64 synapses) taken out."""
        from predict_feed import FeedOnly  # by this name, for daisy's worker processes

        cfg = PredictConfig(classes=tuple(CLASSES), voxel_size=VOXEL, intensity_range=None,
                            settings=Prediction(device="cpu", mixed_precision=True,
                                                rows_per_block=self.args.rows_per_block,
                                                batch_size=self.args.batch_size,
                                                workers=workers))
        full, fixed = [], []
        for _ in range(self.args.repeats):
            for path, times in ((shard, full), (small, fixed)):
                self.count += 1
                run = self.tmp / f"run-{self.count}"
                cube_reader.cache_clear()  # a fresh reader, as a new job has
                begin = time.perf_counter()
                predict_shard(str(self.no_model), path, cfg, run / "work", run / "cache",
                              str(run / "out.parquet"), predictor=FeedOnly)
                times.append(time.perf_counter() - begin)
                if workers == 1 and path == shard:  # its reader lives in this process
                    self.decoded = sum(r.cache.decoded_voxels for r in _readers())
        return (n - 64) / (min(full) - min(fixed))


def target(tmp: Path, name: str, container: str, dataset: str, locations: np.ndarray
           ) -> tuple[Path, Path, pd.DataFrame]:
    """The synapses as a one-shard target on `container`; the shard, its first 64 rows."""
    table = tmp / "synapses.csv"
    if not table.exists():
        pd.DataFrame({"synapse_id": np.arange(len(locations)), "z": locations[:, 0],
                      "y": locations[:, 1], "x": locations[:, 2]}).to_csv(table, index=False)
    spec = {"type": "table", "table": str(table), "raw_container": container,
            "raw_dataset": dataset}
    write_target(None, source_of(spec), CLASSES, None,
                 Partition(shards=1, synapses_per_shard=None, block_size=(640, 1024, 1024),
                           read_batch_rows=1_000_000), str(tmp / name))
    shard = tmp / name / shard_file(0)
    small = tmp / f"{name}-small.parquet"
    pq.write_table(pq.read_table(shard).slice(0, 64), small)
    return shard, small, pd.read_parquet(shard)


def _readers() -> list:
    """The cube readers of this process (a 1-worker job runs its blocks in-process)."""
    import gc

    from ntclass.predict.cubes import CubeReader
    return [o for o in gc.get_objects() if isinstance(o, CubeReader) and o.cache]


def main() -> None:
    # daisy's worker processes unpickle FeedOnly by reference: from this module, by name
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (here, os.environ.get("PYTHONPATH")) if p)
    sys.path.insert(0, here)

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volume-shape", type=int, nargs=3, default=[192, 4096, 4096],
                        help="voxels (default 3.2 GB)")
    parser.add_argument("--chunk", type=int, nargs=3, default=[64, 64, 64])
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--http", action="store_true",
                        help="also read each volume from a local HTTP server")
    parser.add_argument("--rows-per-block", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    shape, chunk = tuple(args.volume_shape), tuple(args.chunk)
    cores = cpu_count()
    cube = int(np.prod(CUBE))
    n = int(round(np.prod(shape) * FAFB_DENSITY))
    rng = np.random.default_rng(1)
    margin = np.array(VOXEL)  # inside the volume
    locations = margin + rng.uniform(0, 1, (n, 3)) * (np.array(shape) * VOXEL - 2 * margin)
    print(f"volume {shape} voxels ({np.prod(shape) / 1e9:.2f} GB), chunks {chunk}, {n} "
          f"synapses at {FAFB_DENSITY:g} per voxel, cubes {CUBE}; {cores} cores; rates are "
          "synapses/s")
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        tmp = Path(tmp)
        server, url = serve_http(tmp) if args.http else (None, None)
        feed = Run(tmp, args)
        try:
            for layout in args.layouts:
                start = time.perf_counter()
                container, dataset, ratio = write_volume(layout, tmp, shape, chunk)
                shard, small, rows = target(tmp, layout, container, dataset, locations)
                written = time.perf_counter() - start
                one = feed.rate(shard, small, n, 1)
                decoded = feed.decoded / n / cube
                bound, least = decode_bound(container, dataset, rows)
                print(f"\n{layout}: compression {ratio:.2f}x, written in {written:.0f} s")
                print(f"  1 worker ({cores} threads): {one:7.0f}/s; decode bound {bound:7.0f}/s;"
                      f" ratio {one / bound:.2f}")
                print(f"  chunk voxels decoded per synapse: {decoded:.2f} cube volumes "
                      f"(each touched chunk once: {least / cube:.2f})")
                if cores > 1:
                    many = feed.rate(shard, small, n, cores)
                    print(f"  {cores} workers: {many:7.0f}/s, {many / cores:7.0f} per worker; "
                          f"scaling per added worker {many / (cores * one):.2f}")
                if url:
                    remote = f"{url}/{Path(container).name}"
                    shard_r, small_r, _ = target(tmp, f"{layout}-http", remote, dataset,
                                                 locations)
                    over_http = feed.rate(shard_r, small_r, n, 1)
                    print(f"  over local HTTP (1 worker): {over_http:7.0f}/s; ratio to local "
                          f"{over_http / one:.2f}")
        finally:
            if server is not None:
                server.terminate()


if __name__ == "__main__":
    main()
