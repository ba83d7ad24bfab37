"""Training throughput: the full gunpowder pipeline against the model's own train step.

Both figures come from one run, with the same model, batch and input shape:
  pipeline  iterations/s of ntclass's training pipeline (reading cubes from the demo volume,
            augmenting, batching, PreCache workers, gp.torch.Train with Adam);
  model     iterations/s of forward + backward + Adam step on tensors already on the device.
The ratio pipeline/model says how much the data path costs: 1.0 means the model never waits.

  .venv/bin/python benchmarks/train_throughput.py                       # demo shape, CPU
  .venv/bin/python benchmarks/train_throughput.py --fafb --workers 8    # 16x160x160, batch 8
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import gunpowder as gp
import pandas as pd
import torch
import yaml

from ntclass.demo import DemoSpec, write_demo
from ntclass.gp_nodes import centred_roi
from ntclass.losses import build_loss
from ntclass.models import build_model
from ntclass.split import make_split
from ntclass.synapses import read_table_source
from ntclass.train import Autocast, TrainConfig, build_pipeline, pick_device

ROOT = Path(__file__).resolve().parents[1]
FAFB_VGG = {"fmaps": 12, "fmap_increase": 2, "fc_size": 4096, "dropout": 0.5,
            "downsample_factors": [[1, 2, 2], [1, 2, 2], [1, 2, 2], [2, 2, 2]]}


def demo_manifest(directory: Path, classes: list[str], shape: tuple[int, ...]) -> Path:
    spec = DemoSpec(classes=tuple(classes), shape=shape, neurons_per_class=6, seed=3)
    paths = write_demo(directory / "demo", spec)
    table = read_table_source(paths["table"], paths["volume"], "volumes/raw/s0", classes,
                              (40, 4, 4))
    manifest, _ = make_split(table, "random", {"train": 0.8, "validation": 0.1, "test": 0.1},
                             seed=0)
    path = directory / "manifest.csv"
    manifest.to_csv(path, index=False)
    return path


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    model = config["models"]["vgg"]
    cfg = TrainConfig(architecture=model["architecture"], model_params=model["params"],
                      classes=config["classes"], voxel_size=config["voxel_size"],
                      input_shape=config["training"]["input_shape"],
                      batch_size=config["training"]["batch_size"],
                      augment={"mirror_transpose": True,
                               "intensity": {"enabled": True, "scale": [0.9, 1.1],
                                             "shift": [-0.1, 0.1]}},
                      learning_rate=1e-4, iterations=10**9, save_every=10**9,
                      validate_every=0, device=args.device)
    if args.fafb:
        cfg = dataclasses.replace(cfg, model_params=FAFB_VGG, input_shape=[16, 160, 160],
                                  batch_size=8)
    if args.batch_size:
        cfg = dataclasses.replace(cfg, batch_size=args.batch_size)
    return dataclasses.replace(cfg, workers=args.workers)


def pipeline_rate(manifest: Path, cfg: TrainConfig, warmup: int, iterations: int,
                  checkpoints: Path) -> float:
    torch.manual_seed(0)
    model = build_model(cfg.architecture, cfg.input_shape, len(cfg.classes), **cfg.model_params)
    table = pd.read_csv(manifest, dtype={"nt": "string", "split": "string"})
    keys = {"raw": gp.ArrayKey("RAW"), "label": gp.ArrayKey("LABEL"),
            "logits": gp.ArrayKey("LOGITS")}
    pipeline = build_pipeline(table[table["split"] == "train"], cfg, keys, model,
                              build_loss({}, cfg.classes), str(checkpoints / "model"))
    request = gp.BatchRequest()
    request[keys["raw"]] = gp.ArraySpec(roi=centred_roi(cfg.input_shape, cfg.voxel_size))
    request[keys["label"]] = gp.ArraySpec(nonspatial=True)
    request[keys["logits"]] = gp.ArraySpec(nonspatial=True)
    with gp.build(pipeline):
        for _ in range(warmup):
            pipeline.request_batch(request)
        _synchronise(cfg.device)
        start = time.perf_counter()
        for _ in range(iterations):
            pipeline.request_batch(request)
        _synchronise(cfg.device)
        return iterations / (time.perf_counter() - start)


def model_rate(cfg: TrainConfig, warmup: int, iterations: int) -> float:
    device = torch.device(pick_device(cfg.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as ScheduledTrain does
    torch.manual_seed(0)
    model = build_model(cfg.architecture, cfg.input_shape, len(cfg.classes), **cfg.model_params)
    net = Autocast(model, cfg.mixed_precision).to(device).train()
    loss_fn = build_loss({}, cfg.classes).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    x = torch.rand(cfg.batch_size, 1, *cfg.input_shape, device=device) * 2 - 1
    y = torch.randint(len(cfg.classes), (cfg.batch_size,), device=device)

    def step():
        optimizer.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(warmup):
        step()
    _synchronise(cfg.device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    _synchronise(cfg.device)
    return iterations / (time.perf_counter() - start)


def _synchronise(device: str) -> None:
    if pick_device(device).startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fafb", action="store_true",
                        help="Synister's FAFB VGG3D on 16x160x160 cubes, batch 8")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workers", type=int, default=0, help="PreCache workers")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = demo_manifest(tmp, cfg.classes, (48, 832, 832) if not args.fafb
                                 else (64, 1024, 1024))
        model = model_rate(cfg, args.warmup, args.iterations)
        pipeline = pipeline_rate(manifest, cfg, args.warmup, args.iterations, tmp / "ckpt")
    device = pick_device(cfg.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, workers {cfg.workers}")
    print(f"model {cfg.architecture} {cfg.model_params}")
    print(f"batch {cfg.batch_size} x {cfg.input_shape}")
    print(f"model train step   {model:8.2f} it/s  ({model * cfg.batch_size:8.1f} samples/s)")
    print(f"full pipeline      {pipeline:8.2f} it/s  ({pipeline * cfg.batch_size:8.1f} samples/s)")
    print(f"ratio pipeline/model {pipeline / model:.3f}")


if __name__ == "__main__":
    main()
