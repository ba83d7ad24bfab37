"""Prediction throughput and memory: blockwise prediction from a zarr volume against the
model's forward pass alone.

In one run, with the same model, batch and cube shape:
  end to end   synapses/s of `predict_shard` (plan, daisy blocks, asynchronous cube reads,
               batched inference, results written and joined into the shard's table);
  model        synapses/s of the forward pass alone on tensors already on the device;
and the ratio. Then the peak memory (RSS) of prediction for N and 10 N synapses in the same
volume, each in a fresh process, and their ratio: memory is bounded by the block size, not by
the number of synapses.

  .venv/bin/python benchmarks/predict_throughput.py            # demo model and shape, CPU
  .venv/bin/python benchmarks/predict_throughput.py --fafb     # VGG3D on 16x160x160, GPU
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
import pandas as pd
import torch
import yaml

from ntclass.intensity import intensity_of, to_network
from ntclass.models import build_model
from ntclass.predict.shard import PredictConfig, predict_shard
from ntclass.predict.targets import shard_file, write_target
from ntclass.settings import Partition, Prediction
from ntclass.sources.kinds import source_of
from ntclass.train.run import TrainConfig, model_record, pick_device
from ntclass.volumes import write_zarr_volume

ROOT = Path(__file__).resolve().parents[1]
VOXEL = (40, 4, 4)
UINT8 = intensity_of("uint8", None, "the benchmark volume")
FAFB_VGG = {"fmaps": 12, "fmap_increase": 2, "fc_size": 4096, "dropout": 0.5,
            "downsample_factors": [[1, 2, 2], [1, 2, 2], [1, 2, 2], [2, 2, 2]]}


def model_settings(fafb: bool) -> tuple[dict, list[int], list[str]]:
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    if fafb:
        return FAFB_VGG, [16, 160, 160], config["classes"]
    return (config["models"]["vgg"]["params"], config["training"]["input_shape"],
            config["classes"])


def write_model(path: Path, params: dict, shape: list[int], classes: list[str]) -> None:
    torch.manual_seed(0)
    model = build_model("vgg3d", shape, len(classes), **params)
    cfg = TrainConfig.from_config({"architecture": "vgg3d", "model_params": params,
                                   "classes": classes, "voxel_size": list(VOXEL),
                                   "input_shape": shape})
    torch.save(model_record(model, cfg, 0), path)


def write_volume(path: Path, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    write_zarr_volume(path, "raw", rng.integers(0, 256, shape, dtype=np.uint8), VOXEL,
                      chunks=(16, 256, 256))


def synapse_table(volume: Path, n: int, shape: tuple[int, int, int], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    locations = rng.uniform(0, 1, (n, 3)) * np.array(shape) * VOXEL
    return pd.DataFrame({"synapse_id": np.arange(n), "z": locations[:, 0],
                         "y": locations[:, 1], "x": locations[:, 2],
                         "raw_container": str(volume), "raw_dataset": "raw"})


def predict_once(args) -> dict:
    """One prediction run in this process; returns synapses/s and peak RSS."""
    classes = json.loads(args.classes)
    shape = tuple(args.volume_shape)
    table = synapse_table(Path(args.volume), args.synapses, shape, seed=1)
    cfg = PredictConfig(classes=tuple(classes), voxel_size=VOXEL, intensity_range=None,
                        settings=Prediction(device=args.device, mixed_precision=True,
                                            rows_per_block=1024, batch_size=args.batch_size,
                                            workers=1))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table.drop(columns=["raw_container", "raw_dataset"]).to_csv(tmp / "s.csv", index=False)
        target = {"type": "table", "table": str(tmp / "s.csv"), "raw_container": args.volume,
                  "raw_dataset": "raw"}
        write_target(None, source_of(target), classes, None,
                     Partition(shards=1, synapses_per_shard=None,
                               block_size=tuple(args.block_size), read_batch_rows=1_000_000),
                     str(tmp / "target"))
        start = time.perf_counter()
        predict_shard(args.model, tmp / "target" / shard_file(0), cfg, tmp / "work",
                      tmp / "cache", str(tmp / "o.parquet"))
        seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"synapses_per_s": args.synapses / seconds, "peak_mb": peak_mb}


def forward_rate(params: dict, shape: list[int], classes: list[str], batch: int, device: str,
                 iterations: int) -> float:
    device = torch.device(pick_device(device))
    model = build_model("vgg3d", shape, len(classes), **params).to(device).eval()
    cubes = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, device=device)
    on_gpu = device.type == "cuda"
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=on_gpu):
        for _ in range(3):
            torch.softmax(model(to_network(cubes, UINT8)), dim=1).float().cpu()
        start = time.perf_counter()
        for _ in range(iterations):
            torch.softmax(model(to_network(cubes, UINT8)), dim=1).float().cpu()
    return iterations * batch / (time.perf_counter() - start)


def run_child(args, volume: Path, model: Path, n: int, classes: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", "--volume", str(volume), "--model", str(model),
           "--synapses", str(n), "--classes", json.dumps(classes),
           "--batch-size", str(args.batch_size), "--device", args.device,
           "--volume-shape", *map(str, args.volume_shape),
           "--block-size", *map(str, args.block_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fafb", action="store_true")
    parser.add_argument("--synapses", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--volume-shape", type=int, nargs=3, default=[96, 2048, 2048])
    parser.add_argument("--block-size", type=int, nargs=3, default=[1920, 2048, 2048],
                        help="nm")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--volume", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--classes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(predict_once(args)))
        return

    params, shape, classes = model_settings(args.fafb)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        volume, model = tmp / "volume.zarr", tmp / "model.pt"
        write_volume(volume, tuple(args.volume_shape))
        write_model(model, params, shape, classes)
        model_only = forward_rate(params, shape, classes, args.batch_size, args.device,
                                  max(3, args.synapses // args.batch_size))
        small = run_child(args, volume, model, args.synapses, classes)
        large = run_child(args, volume, model, 10 * args.synapses, classes)
    print(f"device {pick_device(args.device)}, torch threads {torch.get_num_threads()}")
    print(f"model vgg3d {params}, cubes {shape}, batch {args.batch_size}")
    print(f"volume {args.volume_shape} voxels, blocks {args.block_size} nm")
    print(f"forward only        {model_only:10.1f} synapses/s")
    print(f"end to end (N)      {small['synapses_per_s']:10.1f} synapses/s  "
          f"(N = {args.synapses})")
    print(f"end to end (10 N)   {large['synapses_per_s']:10.1f} synapses/s")
    print(f"ratio end to end / forward  {small['synapses_per_s'] / model_only:.3f} (N), "
          f"{large['synapses_per_s'] / model_only:.3f} (10 N)")
    print(f"peak memory  N: {small['peak_mb']:.0f} MB   10 N: {large['peak_mb']:.0f} MB   "
          f"ratio {large['peak_mb'] / small['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
