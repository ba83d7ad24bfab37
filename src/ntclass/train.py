"""Training: a class-balanced gunpowder pipeline into gp.torch.Train.

One source branch per class draws cubes centred on that class's training synapses
(Synister's balancing); augmentations follow; a random branch is chosen per sample.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gunpowder as gp
import gunpowder.torch  # noqa: F401  (registers gp.torch)
import numpy as np
import pandas as pd
import torch

from .errors import NtclassError
from .gp_nodes import AddClassLabel, SynapseCubeSource, centred_roi
from .io import atomic_path, write_csv
from .models import build_model

log = logging.getLogger(__name__)
MODEL_FORMAT = "ntclass-model/1"


@dataclass
class TrainConfig:
    architecture: str
    model_params: dict
    classes: list[str]
    voxel_size: list[int]
    input_shape: list[int]
    batch_size: int = 8
    iterations: int = 1000
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"
    seed: int = 0
    save_every: int = 500
    log_every: int = 50
    workers: int = 0
    device: str = "auto"
    cache_raw_mb: int = 1024
    augment: dict = field(default_factory=dict)

    def digest(self, manifest: str | os.PathLike) -> str:
        """Hash of everything that makes a run: a changed one never resumes a stale one."""
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        h.update(Path(manifest).read_bytes())
        return h.hexdigest()[:16]


def learning_rate_at(cfg: TrainConfig, iteration: int) -> float:
    """The learning rate of an iteration: a function of the iteration alone, so a resumed
    run continues exactly where the killed one was."""
    if cfg.lr_schedule == "cosine":
        return cfg.learning_rate * 0.5 * (1 + np.cos(np.pi * min(iteration / cfg.iterations, 1)))
    return cfg.learning_rate


class ScheduledTrain(gp.torch.Train):
    """gp.torch.Train with the learning rate set from the iteration before each step."""

    def __init__(self, *args, cfg: TrainConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.cfg = cfg

    def train_step(self, batch, request):
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate_at(self.cfg, self.iteration)
        super().train_step(batch, request)


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _augmentations(raw: gp.ArrayKey, augment: dict) -> list[gp.BatchFilter]:
    nodes: list[gp.BatchFilter] = []
    intensity = augment.get("intensity")
    if intensity:
        # per section: EM sections differ in brightness and contrast
        nodes.append(gp.IntensityAugment(raw, *intensity["scale"], *intensity["shift"],
                                         slab=(1, -1, -1)))
    if augment.get("mirror_transpose", False):
        nodes.append(gp.SimpleAugment(mirror_only=(1, 2), transpose_only=(1, 2)))
    return nodes


def build_pipeline(synapses: pd.DataFrame, cfg: TrainConfig, keys: dict,
                   model: torch.nn.Module, checkpoint_basename: str):
    """The full training pipeline, ending in gp.torch.Train."""
    branches = []
    for label, nt in enumerate(cfg.classes):
        rows = synapses[synapses["nt"] == nt]
        if rows.empty:
            raise NtclassError(f"class '{nt}' has no training synapse in the split manifest")
        branch = SynapseCubeSource(keys["raw"], rows, cfg.voxel_size,
                                   cache_bytes=cfg.cache_raw_mb * 2**20)
        branch += gp.Normalize(keys["raw"])
        for node in _augmentations(keys["raw"], cfg.augment):
            branch += node
        branches.append(branch + AddClassLabel(keys["label"], label))
    pipeline = tuple(branches) + gp.RandomProvider()
    pipeline += gp.IntensityScaleShift(keys["raw"], 2, -1)
    pipeline += gp.Unsqueeze([keys["raw"]])
    pipeline += gp.Stack(cfg.batch_size)
    if cfg.workers > 0:
        pipeline += gp.PreCache(cache_size=4 * cfg.workers, num_workers=cfg.workers)
    pipeline += ScheduledTrain(
        model,
        torch.nn.CrossEntropyLoss(),
        torch.optim.Adam(model.parameters(), lr=cfg.learning_rate),
        inputs={"raw": keys["raw"]},
        outputs={0: keys["logits"]},
        loss_inputs={0: keys["logits"], 1: keys["label"]},
        array_specs={keys["logits"]: gp.ArraySpec(nonspatial=True)},
        checkpoint_basename=checkpoint_basename,
        save_every=cfg.save_every,
        device=pick_device(cfg.device),
        cfg=cfg,
    )
    return pipeline


def _request_seed(cfg: TrainConfig, iteration: int) -> int | None:
    """A seed per iteration makes runs reproducible, except through PreCache: its workers
    re-copy one stored request, so a seeded request would yield the same batch forever."""
    return None if cfg.workers > 0 else cfg.seed * 1_000_003 + iteration


def _latest_iteration(checkpoint_dir: Path) -> int:
    found = [int(m.group(1)) for p in checkpoint_dir.glob("model_checkpoint_*")
             if (m := re.fullmatch(r"model_checkpoint_(\d+)", p.name))]
    return max(found, default=0)


def _loss_rows(path: Path, up_to: int) -> list[list[str]]:
    """Loss rows of an earlier run up to its last checkpoint (the rest is redone)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r for r in rows if int(r[0]) <= up_to]


def model_record(model: torch.nn.Module, cfg: TrainConfig, iteration: int) -> dict:
    """What `model.pt` holds: plain types and tensors only, loadable with weights_only."""
    return {
        "format": MODEL_FORMAT,
        "architecture": cfg.architecture,
        "model_params": cfg.model_params,
        "classes": list(cfg.classes),
        "input_shape": list(cfg.input_shape),
        "voxel_size": list(cfg.voxel_size),
        "iteration": int(iteration),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def train(manifest: str | os.PathLike, cfg: TrainConfig, model_out: str | os.PathLike,
          loss_out: str | os.PathLike, checkpoint_root: str | os.PathLike) -> None:
    """Train one model on the manifest's `train` part; write model.pt and the loss CSV."""
    table = pd.read_csv(manifest, dtype={"nt": "string", "split": "string"})
    synapses = table[table["split"] == "train"]
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.architecture, cfg.input_shape, len(cfg.classes),
                        **cfg.model_params)
    model.train()

    checkpoint_dir = Path(checkpoint_root) / cfg.digest(manifest)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (checkpoint_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    start = _latest_iteration(checkpoint_dir)
    if start:
        log.info("resuming from iteration %d (%s)", start, checkpoint_dir)
    else:
        log.info("training from scratch in %s", checkpoint_dir)
    losses_path = checkpoint_dir / "loss.csv"
    rows = _loss_rows(losses_path, start)

    keys = {"raw": gp.ArrayKey("RAW"), "label": gp.ArrayKey("LABEL"),
            "logits": gp.ArrayKey("LOGITS")}
    pipeline = build_pipeline(synapses, cfg, keys, model,
                              str(checkpoint_dir / "model"))
    with open(losses_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["iteration", "loss", "seconds"])
        writer.writerows(rows)
        f.flush()
        t0 = time.perf_counter()
        with gp.build(pipeline):
            iteration = start
            while iteration < cfg.iterations:
                request = gp.BatchRequest(random_seed=_request_seed(cfg, iteration))
                request[keys["raw"]] = gp.ArraySpec(
                    roi=centred_roi(cfg.input_shape, cfg.voxel_size))
                request[keys["label"]] = gp.ArraySpec(nonspatial=True)
                request[keys["logits"]] = gp.ArraySpec(nonspatial=True)
                batch = pipeline.request_batch(request)
                iteration = batch.iteration
                elapsed = time.perf_counter() - t0
                writer.writerow([iteration, f"{float(batch.loss):.6f}", f"{elapsed:.3f}"])
                if iteration % cfg.log_every == 0 or iteration == cfg.iterations:
                    f.flush()
                    rate = (iteration - start) / max(elapsed, 1e-9)
                    log.info("iteration %d/%d loss %.4f (%.2f it/s)", iteration,
                             cfg.iterations, float(batch.loss), rate)
    with atomic_path(model_out) as tmp:
        torch.save(model_record(model, cfg, iteration), tmp)
    write_csv(pd.read_csv(losses_path), loss_out)


def load_model(path: str | os.PathLike, classes: Sequence[str] | None = None,
               device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a model.pt safely (weights_only); check it matches the expected classes."""
    try:
        record = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise NtclassError(f"cannot load model checkpoint '{path}': {e}") from None
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        raise NtclassError(f"'{path}' is not an ntclass model checkpoint ({MODEL_FORMAT})")
    if classes is not None and list(classes) != list(record["classes"]):
        raise NtclassError(f"model '{path}' was trained on classes {record['classes']}, "
                           f"but the config lists {list(classes)}")
    model = build_model(record["architecture"], record["input_shape"], len(record["classes"]),
                        **record["model_params"])
    try:
        model.load_state_dict(record["state_dict"])
    except RuntimeError as e:
        raise NtclassError(f"model checkpoint '{path}' does not fit architecture "
                           f"'{record['architecture']}': {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    return model, record
