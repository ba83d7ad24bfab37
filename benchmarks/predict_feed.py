"""Prediction's data path alone, at FAFB shape and FAFB synapse density.

Everything a shard job does except the model's forward pass: plan (which synapses the
cache lacks, in spatial order), daisy blocks, asynchronous cube reads and decompression
from a Blosc-compressed zarr of EM-like texture, batches assembled and mapped to the
network's input, results written, published to the cache and joined into the shard's
table. The model is replaced by one that returns zeros.

Prints, per number of workers (daisy processes): synapses/s and synapses/s per worker once
running (the fixed cost of a shard job, measured on its first 64 synapses, taken out), the
whole job's rate with that cost, the scaling per added worker, voxels requested per
synapse (in cube volumes), and the chunk voxels each synapse costs to decompress when a
block's chunks are each decompressed once.

  .venv/bin/python benchmarks/predict_feed.py                  # 1 and 2 workers
  .venv/bin/python benchmarks/predict_feed.py --workers 1 2 4 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numcodecs
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import zarr
from scipy.ndimage import gaussian_filter

from ntclass.predict.cubes import cpu_count
from ntclass.predict.shard import BlockPredictor, PredictConfig, predict_shard
from ntclass.predict.targets import shard_file, write_target
from ntclass.settings import Partition, Prediction
from ntclass.sources.kinds import source_of

VOXEL = (40, 4, 4)
CUBE = (16, 160, 160)  # Synister's FAFB input shape
CHUNKS = (16, 256, 256)
FAFB_DENSITY = 1.9e-6  # synapses per voxel
CLASSES = ["acetylcholine", "gaba", "glutamate", "serotonin", "dopamine", "octopamine",
           "tyramine"]


def em_tile(rng: np.random.Generator, shape=(16, 1024, 1024)) -> np.ndarray:
    """Grey texture with membrane-like dark ridges and fine grain: about as compressible
    as EM (Blosc-LZ4 about 1.2x)."""
    blobs = gaussian_filter(rng.normal(size=shape).astype(np.float32), (0.5, 6, 6))
    ridges = np.exp(-(blobs / blobs.std()) ** 2 * 8)
    grain = gaussian_filter(rng.normal(0, 6, size=shape).astype(np.float32), (0, 0.7, 0.7))
    return np.clip(150 - 90 * ridges + 3 * grain, 0, 255).astype(np.uint8)


def write_em_volume(path: Path, shape: tuple[int, int, int], seed: int = 0) -> float:
    """A Blosc-LZ4 zarr of EM-like texture; returns its compression ratio."""
    rng = np.random.default_rng(seed)
    tile = em_tile(rng)
    array = zarr.open(str(path), mode="w").create_dataset(
        "raw", shape=shape, chunks=CHUNKS, dtype=np.uint8,
        compressor=numcodecs.Blosc("lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE))
    array.attrs.update({"voxel_size": list(VOXEL), "offset": [0, 0, 0]})
    for z in range(0, shape[0], tile.shape[0]):
        slab = np.empty((min(tile.shape[0], shape[0] - z), *shape[1:]), np.uint8)
        for y in range(0, shape[1], tile.shape[1]):
            for x in range(0, shape[2], tile.shape[2]):
                piece = np.roll(tile, rng.integers(0, 1024, 2), axis=(1, 2))
                h, w = min(tile.shape[1], shape[1] - y), min(tile.shape[2], shape[2] - x)
                slab[:, y:y + h, x:x + w] = piece[:len(slab), :h, :w]
        array[z:z + len(slab)] = slab
    stored = sum(p.stat().st_size for p in Path(path, "raw").iterdir())
    return array.nbytes / stored


class FeedOnly(BlockPredictor):
    """The data path of `BlockPredictor`: everything up to the batch of raw cubes a GPU
    would receive (its copy, intensity mapping and forward pass run on the device)."""

    def _run(self, model, batch, intensity) -> np.ndarray:
        return np.zeros((len(batch), len(self.cfg.classes)), np.float32)

    def model(self):
        if self._model is None:
            self._device = "cpu"
            self._record = {"input_shape": list(CUBE), "voxel_size": list(VOXEL),
                            "intensity": {"uint8": [0.0, 255.0]}}
            self._threads = max(1, cpu_count() // self.cfg.workers)
            self._model = "none"
        return self._model


def requested_per_synapse(rows: pd.DataFrame, shape: tuple[int, ...]) -> float:
    """Voxels the reader requests per synapse (as `CubeReader.submit` counts them)."""
    begins = np.floor(rows[["z", "y", "x"]].to_numpy() / VOXEL).astype(np.int64) - np.array(
        CUBE) // 2
    lo, hi = np.maximum(begins, 0), np.minimum(begins + CUBE, shape)
    return float(np.prod(hi - lo, axis=1).mean())


def chunk_voxels_per_synapse(rows: pd.DataFrame, rows_per_block: int) -> float:
    """Chunk voxels decompressed per synapse when each block decompresses each chunk its
    cubes touch once."""
    vox = np.floor(rows[["z", "y", "x"]].to_numpy() / VOXEL).astype(np.int64)
    lo = (vox - np.array(CUBE) // 2) // CHUNKS
    hi = (vox - np.array(CUBE) // 2 + np.array(CUBE) - 1) // CHUNKS
    total = 0
    for start in range(0, len(rows), rows_per_block):
        chunks = set()
        for a, b in zip(lo[start:start + rows_per_block], hi[start:start + rows_per_block]):
            chunks.update((z, y, x) for z in range(a[0], b[0] + 1)
                          for y in range(a[1], b[1] + 1) for x in range(a[2], b[2] + 1))
        total += len(chunks)
    return total * int(np.prod(CHUNKS)) / len(rows)


def main() -> None:
    # daisy's worker processes unpickle FeedOnly by reference: from this module, by name
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (here, os.environ.get("PYTHONPATH")) if p)
    sys.path.insert(0, here)
    from predict_feed import FeedOnly

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volume-shape", type=int, nargs=3, default=[160, 4096, 4096],
                        help="voxels (default 2.7 GB)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows-per-block", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    shape = tuple(args.volume_shape)

    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        ratio = write_em_volume(tmp / "em.zarr", shape)
        n = int(round(np.prod(shape) * FAFB_DENSITY))
        rng = np.random.default_rng(1)
        margin = np.array(VOXEL)  # inside the volume
        locations = margin + rng.uniform(0, 1, (n, 3)) * (np.array(shape) * VOXEL - 2 * margin)
        pd.DataFrame({"synapse_id": np.arange(n), "z": locations[:, 0],
                      "y": locations[:, 1], "x": locations[:, 2]}
                     ).to_csv(tmp / "synapses.csv", index=False)
        target = {"type": "table", "table": str(tmp / "synapses.csv"),
                  "raw_container": str(tmp / "em.zarr"), "raw_dataset": "raw"}
        write_target(None, source_of(target), CLASSES, None,
                     Partition(shards=1, synapses_per_shard=None, block_size=(640, 1024, 1024),
                               read_batch_rows=1_000_000), str(tmp / "target"))
        shard = tmp / "target" / shard_file(0)
        rows = pd.read_parquet(shard)
        print(f"volume {shape} voxels ({np.prod(shape) / 1e9:.2f} GB, Blosc-LZ4 "
              f"{ratio:.2f}x, chunks {CHUNKS}), {n} synapses at {FAFB_DENSITY:g} per voxel, "
              f"cubes {CUBE}; set up in {time.perf_counter() - start:.0f} s; "
              f"{cpu_count()} cores")
        cube = int(np.prod(CUBE))
        print(f"voxels requested per synapse: {requested_per_synapse(rows, shape) / cube:.2f} "
              f"cube volumes of {cube} (each cube's own voxels, once)")
        decompressed = chunk_voxels_per_synapse(rows, args.rows_per_block) / cube
        print(f"chunk voxels decompressed per synapse, each chunk once per block of "
              f"{args.rows_per_block}: {decompressed:.2f} cube volumes")
        no_model = tmp / "no-model"  # names the cache; FeedOnly loads nothing
        no_model.write_bytes(b"feed only")
        # the same data path on the first few synapses only: what a shard job costs
        # besides its synapses (daisy's worker processes starting, planning, the table)
        small = tmp / "small.parquet"
        rows_small = pq.read_table(shard).slice(0, 64)
        pq.write_table(rows_small, small)
        base = None
        for workers in args.workers:
            cfg = PredictConfig(classes=tuple(CLASSES), voxel_size=VOXEL, intensity_range=None,
                                settings=Prediction(device="cpu", mixed_precision=True,
                                                    rows_per_block=args.rows_per_block,
                                                    batch_size=args.batch_size,
                                                    workers=workers))
            full, fixed = [], []
            for repeat in range(args.repeats):
                for path, times in ((shard, full), (small, fixed)):
                    run = tmp / f"run-{workers}-{repeat}-{path.stem}"
                    begin = time.perf_counter()
                    predict_shard(str(no_model), path, cfg, run / "work", run / "cache",
                                  str(run / "out.parquet"), predictor=FeedOnly)
                    times.append(time.perf_counter() - begin)
            total, overhead = min(full), min(fixed)
            rate = (n - 64) / (total - overhead)
            base = base or rate
            scaling = (rate / base) ** (1 / (workers - 1)) if workers > 1 else 1.0
            print(f"workers {workers}: {rate:7.0f} synapses/s, {rate / workers:7.0f} per worker "
                  f"({rate / workers / 2000:.2f}x the 2,000/s target), scaling per added worker "
                  f"{scaling:.2f}; the whole shard job {n / total:.0f} synapses/s including "
                  f"{overhead:.1f} s of fixed cost")


if __name__ == "__main__":
    main()
