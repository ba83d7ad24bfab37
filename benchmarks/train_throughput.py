"""Training throughput: the data path, the device augmentations, the bare train step and
the whole training loop, measured in one run with the same model, batch and input shape.

  data path   batches/s of gunpowder's part (class-balanced cubes read from a Blosc-LZ4
              zarr of EM-like texture, never held in memory, the data-path augmentations,
              batching), with every augmentation off, each alone, and all of them; then
              with 1 and 2 PreCache workers
  device      milliseconds per batch of the device augmentations (the elastic deformation,
              mirror/transpose, intensity, noise, defects), each alone and all
  bare step   batches/s of forward + backward + Adam on tensors already on the device
  loop        batches/s of the whole training loop (data path, device deformation, step)

The ratio loop / bare step says how much the data path costs: 1.0 means the model never
waits.

  .venv/bin/python benchmarks/train_throughput.py --fafb     # 16x160x160, batch 8, VGG
  .venv/bin/python benchmarks/train_throughput.py            # the demo shape
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import gunpowder as gp
import numpy as np
import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from predict_feed import write_em_volume  # noqa: E402

from ntclass.config import SCHEMA_PATH, model_training  # noqa: E402
from ntclass.models import build_model  # noqa: E402
from ntclass.settings import Augment  # noqa: E402
from ntclass.train.device_augment import iteration_generator  # noqa: E402
from ntclass.train.gp_nodes import centred_roi  # noqa: E402
from ntclass.train.losses import build_loss  # noqa: E402
from ntclass.train.run import (  # noqa: E402
    Autocast,
    TrainConfig,
    build_batches,
    build_pipeline,
    data_shape,
    device_augment,
    pick_device,
    resolve_geometry,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = SCHEMA_PATH


def fafb_config(args: argparse.Namespace) -> TrainConfig:
    """config/examples/fafb.yaml's VGG and augmentations (or the demo's, smaller)."""
    name = "config/examples/fafb.yaml" if args.fafb else "config/config.yaml"
    config = yaml.safe_load((ROOT / name).read_text())
    model = config["models"]["vgg"]
    training = model_training(config, "vgg", SCHEMA)
    augment = training["augment"]
    if not args.fafb:  # the demo switches the expensive ones off; measure them anyway
        augment = model_training({**config, "training": {
            **config["training"], "augment": yaml.safe_load(
                (ROOT / "config/examples/fafb.yaml").read_text())["training"]["augment"]}},
            "vgg", SCHEMA)["augment"]
    return TrainConfig.from_config({
        "architecture": model["architecture"], "model_params": model["params"],
        "classes": config["classes"], "voxel_size": config["voxel_size"],
        "input_shape": training["input_shape"], "batch_size": training["batch_size"],
        "augment": augment, "learning_rate": 1e-4, "iterations": 10**9,
        "save_every": 10**9, "validate_every": 0, "device": args.device,
        "cache_raw_mb": 0})


def random_synapses(volume: Path, cfg: TrainConfig, n: int, seed: int = 0) -> pd.DataFrame:
    """`n` training synapses at random places of the volume, classes round robin."""
    import zarr

    shape = np.array(zarr.open(str(volume), mode="r")["raw"].shape)
    margin = np.array(data_shape(cfg)) // 2 + 1
    rng = np.random.default_rng(seed)
    voxels = rng.integers(margin, shape - margin, size=(n, 3))
    nm = voxels * np.array(cfg.voxel_size)
    return pd.DataFrame({"synapse_id": np.arange(n), "z": nm[:, 0].astype(float),
                         "y": nm[:, 1].astype(float), "x": nm[:, 2].astype(float),
                         "nt": [cfg.classes[i % len(cfg.classes)] for i in range(n)],
                         "pre_id": np.arange(n) // 10, "split": "train",
                         "raw_container": str(volume), "raw_dataset": "raw"})


def keys() -> dict:
    return {"raw": gp.ArrayKey("RAW"), "label": gp.ArrayKey("LABEL"),
            "logits": gp.ArrayKey("LOGITS")}


def data_path_rate(synapses: pd.DataFrame, cfg: TrainConfig, batches: int,
                   warmup: int) -> float:
    """Batches/s of the data path alone (no model)."""
    k = keys()
    pipeline = build_batches(synapses, cfg, k)
    request = gp.BatchRequest()
    request[k["raw"]] = gp.ArraySpec(roi=centred_roi(data_shape(cfg), cfg.voxel_size))
    request[k["label"]] = gp.ArraySpec(nonspatial=True)
    with gp.build(pipeline):
        for _ in range(warmup):
            pipeline.request_batch(request)
        start = time.perf_counter()
        for _ in range(batches):
            pipeline.request_batch(request)
        return batches / (time.perf_counter() - start)


def device_seconds(cfg: TrainConfig, batches: int) -> float:
    """Seconds per batch of the device augmentations (deformation and raw values)."""
    augment = device_augment(cfg)
    device = torch.device(pick_device(cfg.device))
    cubes = torch.rand(cfg.batch_size, 1, *augment.context_shape(), device=device)
    augment(cubes, iteration_generator(0, 0))
    _synchronise(device)
    start = time.perf_counter()
    for i in range(batches):
        augment(cubes, iteration_generator(0, i + 1))
    _synchronise(device)
    return (time.perf_counter() - start) / batches


def bare_step_rate(cfg: TrainConfig, batches: int, warmup: int) -> float:
    device = torch.device(pick_device(cfg.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as ScheduledTrain does
    torch.manual_seed(0)
    model = build_model(cfg.architecture, cfg.input_shape, len(cfg.classes), **cfg.model_params)
    net = Autocast(model, cfg.mixed_precision).to(device).train()
    loss_fn = build_loss(cfg.loss, cfg.classes).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    x = torch.rand(cfg.batch_size, 1, *cfg.input_shape, device=device) * 2 - 1
    y = torch.randint(len(cfg.classes), (cfg.batch_size,), device=device)

    def step():
        optimizer.zero_grad()
        loss_fn(net(x), y).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _synchronise(device)
    start = time.perf_counter()
    for _ in range(batches):
        step()
    _synchronise(device)
    return batches / (time.perf_counter() - start)


def loop_rate(synapses: pd.DataFrame, cfg: TrainConfig, batches: int, warmup: int,
              checkpoints: Path) -> float:
    """Batches/s of the training loop as `ntclass.train.run.train` runs it."""
    torch.manual_seed(0)
    model = build_model(cfg.architecture, cfg.input_shape, len(cfg.classes), **cfg.model_params)
    k = keys()
    pipeline = build_pipeline(synapses, cfg, k, model, build_loss(cfg.loss, cfg.classes),
                              str(checkpoints / "model"))
    request = gp.BatchRequest()
    request[k["raw"]] = gp.ArraySpec(roi=centred_roi(data_shape(cfg), cfg.voxel_size))
    request[k["label"]] = gp.ArraySpec(nonspatial=True)
    request[k["logits"]] = gp.ArraySpec(nonspatial=True)
    device = torch.device(pick_device(cfg.device))
    with gp.build(pipeline):
        for _ in range(warmup):
            pipeline.request_batch(request)
        _synchronise(device)
        start = time.perf_counter()
        for _ in range(batches):
            pipeline.request_batch(request)
        _synchronise(device)
        return batches / (time.perf_counter() - start)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def only(augment: Augment, name: str | None) -> Augment:
    """`augment` with every augmentation off but `name` (None: all off)."""
    changes = {"mirror_transpose": augment.mirror_transpose and name == "mirror_transpose"}
    for key in Augment.nested_sections():
        part = getattr(augment, key)
        changes[key] = dataclasses.replace(part, enabled=part.enabled and key == name)
    return dataclasses.replace(augment, **changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fafb", action="store_true",
                        help="config/examples/fafb.yaml: VGG fmaps 12 on 16x160x160, batch 8")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", type=int, default=20, help="per data-path figure")
    parser.add_argument("--model-batches", type=int, default=0,
                        help="for the bare step and the loop (default: 50 on a GPU, 2 on "
                        "the CPU)")
    parser.add_argument("--volume", type=int, nargs=3, default=[128, 4096, 4096],
                        help="voxels of the compressed volume read from")
    parser.add_argument("--max-workers", type=int, default=2)
    args = parser.parse_args()
    cfg = fafb_config(args)
    device = pick_device(cfg.device)
    model_batches = args.model_batches or (50 if device.startswith("cuda") else 2)
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    print(f"model {cfg.architecture} {cfg.model_params}")
    print(f"batch {cfg.batch_size} x {cfg.input_shape}; data path cubes {data_shape(cfg)}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        ratio = write_em_volume(tmp / "raw.zarr", tuple(args.volume))
        print(f"volume {args.volume} Blosc-LZ4 (ratio {ratio:.2f}), written in "
              f"{time.perf_counter() - t0:.0f} s; raw never held in memory")
        synapses = random_synapses(tmp / "raw.zarr", cfg, 5000)
        cfg = resolve_geometry(synapses, cfg)  # as training does: uint8 moves as uint8

        print("\ndata path, one process (batches/s; the augmentations named run on the "
              "device, and cost the data path only the context they need)")
        names = [None] + (["mirror_transpose"] if cfg.augment.mirror_transpose else []) + [
            n for n in Augment.nested_sections() if getattr(cfg.augment, n).enabled]
        for name in names:
            c = dataclasses.replace(cfg, augment=only(cfg.augment, name))
            label = "no augmentation" if name is None else f"{name} alone"
            print(f"  {label:<24}{data_path_rate(synapses, c, args.batches, 2):8.2f}",
                  flush=True)
        every = data_path_rate(synapses, cfg, args.batches, 2)
        print(f"  {'every FAFB augmentation':<24}{every:8.2f}")
        for workers in range(1, args.max_workers + 1):
            c = dataclasses.replace(cfg, workers=workers)
            rate = data_path_rate(synapses, c, args.batches * workers, 4 * workers)
            print(f"  {workers} PreCache worker(s)     {rate:8.2f}  ({rate / workers:.2f} "
                  "per worker)", flush=True)

        for name in names[1:]:
            if name in ("misalign",):
                continue  # in the data path
            c = dataclasses.replace(cfg, augment=only(cfg.augment, name))
            print(f"device: {name:<16}{device_seconds(c, 10) * 1000:8.1f} ms per batch on "
                  f"{device}")
        print(f"device: every one     {device_seconds(cfg, 10) * 1000:8.1f} ms per batch")
        bare = bare_step_rate(cfg, model_batches, 1 if model_batches < 5 else 5)
        print(f"bare train step     {bare:8.2f} batches/s")
        loop = loop_rate(synapses, dataclasses.replace(cfg, workers=args.max_workers),
                         model_batches, 1 if model_batches < 5 else 5, tmp / "ckpt")
        print(f"training loop       {loop:8.2f} batches/s ({args.max_workers} workers)")
        print(f"ratio loop / bare step {loop / bare:.3f}")


if __name__ == "__main__":
    main()
