"""Training: a class-balanced gunpowder pipeline into gp.torch.Train.

One source branch per class draws cubes centred on that class's training synapses
(Synister's balancing); augmentations follow; a random branch is chosen per sample.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import gunpowder as gp
import gunpowder.torch  # noqa: F401  (registers gp.torch)
import pandas as pd
import torch
from tqdm import tqdm

from ntclass.errors import NtclassError
from ntclass.intensity import intensity_of
from ntclass.io import (
    NamedOutputs,
    atomic_path,
    read_synapse_csv,
    remove_temporaries,
    write_csv,
    write_json,
)
from ntclass.models import build_model, modelfile
from ntclass.models.checkpoints import init_weights
from ntclass.models.modelfile import load_model, pick_device  # noqa: F401 (re-exported)
from ntclass.settings import Augment, TrainConfig
from ntclass.train.device_augment import DeviceAugment, iteration_generator
from ntclass.train.gp_nodes import AddClassLabel, SynapseCubeSource, centred_roi
from ntclass.train.losses import build_loss
from ntclass.train.neither import NEITHER, background_locations
from ntclass.train.validation import ValidationSet
from ntclass.volumes import open_raw_cached

log = logging.getLogger(__name__)


def learning_rate_at(cfg: TrainConfig, iteration: int) -> float:
    """The learning rate of an iteration: a function of the iteration alone, so a resumed
    run continues exactly where the killed one was."""
    if cfg.lr_schedule == "cosine":
        # a Python float: a numpy scalar in the optimizer state would make the checkpoint
        # unloadable with weights_only=True
        return float(cfg.learning_rate * 0.5 * (1 + math.cos(
            math.pi * min(iteration / cfg.iterations, 1))))
    return float(cfg.learning_rate)


def step_seed(cfg: TrainConfig, iteration: int) -> int:
    """The seed of torch's generator for one iteration's step (dropout): a function of the
    iteration alone, so a resumed run draws what the killed one would have."""
    return cfg.seed * 1_000_003 + iteration + 13  # not the device augmentations' stream


class ScheduledTrain(gp.torch.Train):
    """gp.torch.Train with the learning rate and the random draws of each step set from
    its iteration, starting from the training loop's checkpoint (`resume`, see
    `newest_checkpoint`). The loop writes the checkpoints: gunpowder's own are never due
    (save_every beyond the run) and never found (a basename nothing is written to)."""

    def __init__(self, *args, cfg: TrainConfig, resume: Checkpoint | None, **kwargs):
        super().__init__(*args, save_every=cfg.iterations + 1, **kwargs)
        self.cfg = cfg
        self.resume = resume

    def start(self):
        super().start()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shape: autotuning pays
        if self.resume is not None:
            self.model.model.load_state_dict(self.resume.state["model_state_dict"])
            self.optimizer.load_state_dict(self.resume.state["optimizer_state_dict"])
            self.iteration = self.resume.iteration
            self.resume = None  # its tensors are copied: free them

    def train_step(self, batch, request):
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate_at(self.cfg, self.iteration)
        self.model.iteration = self.iteration  # seeds the device augmentations
        torch.manual_seed(step_seed(self.cfg, self.iteration))
        super().train_step(batch, request)

    def checkpoint(self) -> dict:
        """The state to resume from, as gunpowder's Train node saves it and Synister reads
        it: the bare model's weights (without the Autocast wrapper) and the optimizer's."""
        return {"model_state_dict": self.model.model.state_dict(),
                "optimizer_state_dict": self.optimizer.state_dict()}


class Autocast(torch.nn.Module):
    """Runs the wrapped model's forward under bf16 autocast on a GPU; returns float32, so
    the loss and the backward pass stay in full precision. Off on the CPU. In training
    mode, first turns the data path's cubes into the model's input with the device
    augmentations (`augment`), seeded by (`seed`, `iteration`)."""

    def __init__(self, model: torch.nn.Module, enabled: bool = True,
                 augment: DeviceAugment | None = None, seed: int = 0):
        super().__init__()
        self.model = model
        self.enabled = enabled
        self.augment = augment
        self.seed = seed
        self.iteration = 0

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        if self.training and self.augment is not None:
            raw = self.augment(raw, iteration_generator(self.seed, self.iteration))
        on_gpu = self.enabled and raw.is_cuda
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
            return self.model(raw).float()


def device_augment(cfg: TrainConfig) -> DeviceAugment:
    """The augmentations of `cfg` that run on the training device (which also maps raw
    values to [0, 1] when the data path delivers them as stored)."""
    return DeviceAugment.from_config(cfg.augment, cfg.input_shape, cfg.voxel_size,
                                     raw_range(cfg))


def raw_range(cfg: TrainConfig) -> tuple[float, float] | None:
    """When every training volume has one dtype, its intensity range: the data path then
    delivers raw as stored and the device maps it. None: it delivers float32 in [0, 1]."""
    if len(cfg.intensity) != 1:
        return None
    low, high = next(iter(cfg.intensity.values()))
    return float(low), float(high)


def data_shape(cfg: TrainConfig) -> list[int]:
    """Voxels of the cubes the data path provides: the model's, or with the device
    deformation on, the context that it samples from."""
    return list(device_augment(cfg).context_shape())


def _augmentations(augment: Augment) -> list[gp.BatchFilter]:
    """Synister's augmentations that run in the data path: sections that slip or shift
    (lengths in nm). The others run on the device (`DeviceAugment`), where the benchmark
    showed them cheaper."""
    nodes: list[gp.BatchFilter] = []
    if (misalign := augment.misalign).enabled:
        # sections that slip (one alone) or shift (it and all after it) in y/x
        nodes.append(gp.ShiftAugment(prob_slip=misalign.prob_slip,
                                     prob_shift=misalign.prob_shift,
                                     sigma=misalign.sigma, shift_axis=0))
    return nodes


def build_batches(synapses: pd.DataFrame, cfg: TrainConfig, keys: dict,
                  background: pd.DataFrame | None = None) -> gp.Pipeline:
    """The data path up to the model: class-balanced batches of cubes in [0, 1] with the
    context the device augmentations need (the class 'neither', when trained, from the
    `background` locations)."""
    branches = []
    raw_dtype = next(iter(cfg.intensity)) if raw_range(cfg) else None
    for label, nt in enumerate(cfg.classes):
        rows = background if nt == NEITHER and background is not None else synapses[
            synapses["nt"] == nt]
        if rows.empty:
            hint = (f"; set training.neither.enabled to train '{NEITHER}' on random locations "
                    "away from synapses") if nt == NEITHER else ""
            raise NtclassError(f"class '{nt}' has no training synapse in the split "
                               f"manifest{hint}")
        branch = SynapseCubeSource(keys["raw"], rows, cfg.voxel_size, cfg.intensity_range,
                                   cache_bytes=cfg.cache_raw_mb * 2**20, raw_dtype=raw_dtype)
        for node in _augmentations(cfg.augment):
            branch += node
        branches.append(branch + AddClassLabel(keys["label"], label))
    pipeline = tuple(branches) + gp.RandomProvider()
    pipeline += gp.Unsqueeze([keys["raw"]])
    pipeline += gp.Stack(cfg.batch_size)
    if cfg.workers > 0:
        pipeline += gp.PreCache(cache_size=4 * cfg.workers, num_workers=cfg.workers)
    return pipeline


def build_pipeline(synapses: pd.DataFrame, cfg: TrainConfig, keys: dict,
                   model: torch.nn.Module, loss: torch.nn.Module, folder: Path,
                   background: pd.DataFrame | None = None,
                   resume: Checkpoint | None = None) -> tuple[gp.Pipeline, ScheduledTrain]:
    """The full training pipeline, ending in gp.torch.Train (returned too)."""
    node = ScheduledTrain(
        Autocast(model, cfg.mixed_precision, device_augment(cfg), cfg.seed),
        loss,
        torch.optim.Adam(model.parameters(), lr=cfg.learning_rate),
        inputs={"raw": keys["raw"]},
        outputs={0: keys["logits"]},
        loss_inputs={0: keys["logits"], 1: keys["label"]},
        array_specs={keys["logits"]: gp.ArraySpec(nonspatial=True)},
        checkpoint_basename=str(folder / "gunpowder"),
        device=pick_device(cfg.device),
        cfg=cfg,
        resume=resume,
    )
    return build_batches(synapses, cfg, keys, background) + node, node


def _request_seed(cfg: TrainConfig, iteration: int) -> int | None:
    """A seed per iteration makes runs reproducible, except through PreCache: its workers
    re-copy one stored request, so a seeded request would yield the same batch forever."""
    return None if cfg.workers > 0 else cfg.seed * 1_000_003 + iteration


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint of the training loop: its iteration, its file and what it holds."""

    iteration: int
    path: Path
    state: dict


def checkpoint_path(folder: Path, iteration: int) -> Path:
    """`model_checkpoint_<N>`, the name gunpowder's Train node and Synister give it."""
    return folder / f"model_checkpoint_{iteration}"


def save_checkpoint(folder: Path, iteration: int, state: dict) -> Path:
    """Writes the checkpoint of `iteration` durably under its final name, or not at all."""
    path = checkpoint_path(folder, iteration)
    with atomic_path(path, durable=True) as tmp:
        torch.save(state, tmp)
    return path


def newest_checkpoint(folder: Path) -> Checkpoint | None:
    """The newest checkpoint of a run that loads; None: none. The loop writes them
    atomically, so one that does not load was damaged since: it is set aside as
    `damaged-<name>`, saying so, so that no later resume (nor gunpowder nor Synister, which
    take the newest name) picks it."""
    found = {int(m.group(1)): p for p in folder.glob("model_checkpoint_*")
             if (m := re.fullmatch(r"model_checkpoint_(\d+)", p.name))}
    for iteration in sorted(found, reverse=True):
        path = found[iteration]
        state, why = _load_checkpoint(path)
        if state is not None:
            return Checkpoint(iteration, path, state)
        log.warning("checkpoint %s does not load (%s); set aside as damaged-%s", path, why,
                    path.name)
        path.rename(path.with_name(f"damaged-{path.name}"))
    return None


def _load_checkpoint(path: Path) -> tuple[dict | None, str | None]:
    """A checkpoint's state, or why it does not load."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, empty or not a checkpoint at all
        return None, f"{type(e).__name__}: {e}".splitlines()[0]
    if not isinstance(state, dict) or not {"model_state_dict", "optimizer_state_dict"
                                            } <= set(state):
        return None, "it holds no model and optimizer state"
    return state, None


LOSS_HEADER = ["iteration", "loss", "seconds"]
VALIDATION_HEADER = ["iteration", "loss", "accuracy"]


def cut_logs_to(folder: Path, iteration: int) -> None:
    """Cuts the run's loss and validation logs back to the checkpoint resumed from
    (`iteration`). The loop writes a checkpoint only once every row up to it is on disk, so
    those rows are whole; a killed job's rows after it (the last perhaps torn) are redone."""
    losses = _rows_up_to(folder / "loss.csv", iteration)
    if [int(r[0]) for r in losses] != list(range(1, iteration + 1)):
        raise NtclassError(f"{folder / 'loss.csv'} does not hold the loss of every iteration "
                           f"up to its checkpoint {iteration}; the folder was changed by "
                           f"hand: delete {folder} to train this model afresh")
    _write_rows(folder / "loss.csv", LOSS_HEADER, losses)
    validation = folder / "validation.csv"
    if validation.exists():
        _write_rows(validation, VALIDATION_HEADER, _rows_up_to(validation, iteration))


def _rows_up_to(path: Path, up_to: int) -> list[list[str]]:
    """The whole CSV rows of a run's log up to iteration `up_to`."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r for r in rows if len(r) == 3 and r[0].isdigit() and int(r[0]) <= up_to]


def _write_rows(path: Path, header: list[str], rows: list) -> None:
    with atomic_path(path, durable=True) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def model_record(model: torch.nn.Module, cfg: TrainConfig, iteration: int) -> dict:
    """The model file of `model` trained with `cfg` (see `modelfile`)."""
    return modelfile.model_record(
        model, architecture=cfg.architecture, model_params=cfg.model_params,
        classes=cfg.classes, input_shape=cfg.input_shape, voxel_size=cfg.voxel_size,
        intensity=cfg.intensity, iteration=iteration, crop="ntclass")


class _LineWriter:
    """A file for tqdm that turns its carriage-return updates into lines: a job's log is
    a file, not a terminal."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.strip("\r\n")
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _progress(cfg: TrainConfig, start: int) -> tqdm:
    tty = sys.stderr.isatty()
    return tqdm(total=cfg.iterations, initial=start, unit="it", dynamic_ncols=tty,
                file=sys.stderr if tty else _LineWriter(sys.stderr),
                mininterval=0.5 if tty else 30, ascii=not tty, desc="train")


class _Validator:
    """Validates every `validate_every` iterations; keeps the best model (highest accuracy,
    then lowest loss, as logged) as `best.pt` in the checkpoint folder, across resumed runs."""

    def __init__(self, table: pd.DataFrame, cfg: TrainConfig, checkpoint_dir: Path,
                 start: int, loss: torch.nn.Module):
        self.cfg = cfg
        self.loss = loss
        self.best_path = checkpoint_dir / "best.pt"
        self.csv_path = checkpoint_dir / "validation.csv"
        self.rows = _rows_up_to(self.csv_path, start)
        part = table[table["split"] == "validation"]
        self.data = None
        if cfg.validate_every and len(part):
            self.data = ValidationSet(part, cfg.classes, cfg.input_shape, cfg.voxel_size,
                                      cfg.validation_synapses, cfg.seed, cfg.intensity_range)
            log.info("validating on %d synapses every %d iterations", len(self.data),
                     cfg.validate_every)
        self.best = self._best_so_far()

    def _best_so_far(self) -> tuple[float, float] | None:
        """The best score among the validations up to the checkpoint resumed from, while
        best.pt exists: it holds that model, or one of a later validation, which will be
        redone and best this score again (and be written again, the same)."""
        if not self.best_path.exists() or not self.rows:
            return None
        return max(map(_score, self.rows))

    def due(self, iteration: int) -> bool:
        return self.data is not None and (iteration % self.cfg.validate_every == 0
                                          or iteration == self.cfg.iterations)

    def __call__(self, model: torch.nn.Module, iteration: int, writer) -> None:
        device = next(model.parameters()).device
        loss, accuracy = self.data.evaluate(model, self.loss.to(device), device)
        row = [iteration, f"{loss:.6f}", f"{accuracy:.6f}"]
        self.rows.append(row)
        _write_rows(self.csv_path, VALIDATION_HEADER, self.rows)
        writer.add_scalar("validation/loss", loss, iteration)
        writer.add_scalar("validation/accuracy", accuracy, iteration)
        log.info("validation at iteration %d: loss %.4f accuracy %.3f", iteration, loss,
                 accuracy)
        # scored as logged: a resumed run compares with the logged scores of the killed one
        if self.best is None or _score(row) > self.best:
            self.best = _score(row)
            with atomic_path(self.best_path, durable=True) as tmp:
                torch.save(model_record(model, self.cfg, iteration), tmp)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=VALIDATION_HEADER).astype(
            {"iteration": int, "loss": float, "accuracy": float})


def _score(row: list) -> tuple[float, float]:
    """A validation row's rank: accuracy, then lower loss."""
    return float(row[2]), -float(row[1])


def resolve_geometry(table: pd.DataFrame, cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the voxel size shared by every raw volume of the manifest's training and
    validation synapses, and the intensity mapping of each of their raw dtypes."""
    used = table[table["split"].isin(["train", "validation"])]
    voxel_sizes, intensity = set(), {}
    for container, dataset in used[["raw_container", "raw_dataset"]].drop_duplicates(
            ).itertuples(index=False):
        volume = open_raw_cached(container, dataset, cfg.voxel_size)
        voxel_sizes.add(volume.voxel_size)
        mapping = intensity_of(volume.dtype, cfg.intensity_range, volume.name)
        intensity[mapping.dtype] = mapping.record()
    if len(voxel_sizes) > 1:
        found = sorted(list(v) for v in voxel_sizes)
        raise NtclassError(f"the training synapses' raw volumes have different voxel sizes "
                           f"({found[0]} and {found[1]} nm); train on one resolution")
    return replace(cfg, voxel_size=list(voxel_sizes.pop()), intensity=intensity)


@dataclass(frozen=True)
class TrainOutputs(NamedOutputs):
    """The files of one training, named as the rule's outputs."""

    model: str  # the best validated model
    last: str
    losses: str
    validation: str


def train(manifest: str | os.PathLike, cfg: TrainConfig, outputs: TrainOutputs,
          checkpoint_root: str | os.PathLike) -> None:
    """Train one model on the manifest's `train` part, validating on its `validation` part.

    Writes the best validated model to `outputs.model` (the last one where there is no
    validation part), the last to `outputs.last`, and the loss and validation CSVs.
    Checkpoints, the TensorBoard log and the CSVs of the run live in a folder of
    `checkpoint_root` named by the hash of `cfg` and the manifest: a rerun of the same
    run resumes there from the newest checkpoint, a changed one starts afresh.
    """
    run = prepare_run(manifest, cfg, checkpoint_root)
    iteration = run_loop(run)
    publish(run, iteration, outputs)


@dataclass
class TrainingRun:
    """A training ready to run: its settings, model, pipeline and folder, and the iteration
    it starts after (0: from scratch)."""

    cfg: TrainConfig
    folder: Path
    start: int
    model: torch.nn.Module
    pipeline: gp.Pipeline
    node: ScheduledTrain
    keys: dict
    validator: _Validator


def prepare_run(manifest: str | os.PathLike, cfg: TrainConfig,
                checkpoint_root: str | os.PathLike) -> TrainingRun:
    """The model, the data path and the run's folder, resumed from its newest checkpoint."""
    table = read_synapse_csv(manifest)
    cfg = resolve_geometry(table, cfg)
    log.info("voxel size %s nm; intensities mapped to [0, 1] from %s", cfg.voxel_size,
             cfg.intensity)
    model, cfg = initial_model(cfg)
    loss = build_loss(cfg.loss, cfg.classes)
    folder = run_folder(checkpoint_root, cfg, manifest)
    resume = open_run_folder(folder, cfg)
    start = resume.iteration if resume else 0
    keys = {"raw": gp.ArrayKey("RAW"), "label": gp.ArrayKey("LABEL"),
            "logits": gp.ArrayKey("LOGITS")}
    pipeline, node = build_pipeline(table[table["split"] == "train"], cfg, keys, model, loss,
                                    folder, _background(table, cfg), resume)
    validator = _Validator(table, cfg, folder, start, loss)
    return TrainingRun(cfg, folder, start, model, pipeline, node, keys, validator)


def initial_model(cfg: TrainConfig) -> tuple[torch.nn.Module, TrainConfig]:
    """The model before its first step (seeded, or from `cfg.init_from`), and `cfg` with
    the initial weights' digest."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.architecture, cfg.input_shape, len(cfg.classes),
                        **cfg.model_params)
    if cfg.init_from:
        digest = init_weights(model, cfg.init_from, cfg.classes, cfg.architecture)
        # the initial weights' identity, not their path, names the run (and its resume)
        cfg = replace(cfg, init_from=replace(cfg.init_from, sha256=digest))
        log.info("initial weights from %s (sha256 %s..., output layer: %s)",
                 cfg.init_from.checkpoint, digest[:12], cfg.init_from.output_layer)
    model.train()
    return model, cfg


# the layout of a run's folder: 2 since the loop writes the checkpoints after their rows,
# with the bare model's weights, and seeds each step; a folder of an older layout is not
# resumed
RUN_LAYOUT = "2"


def run_folder(checkpoint_root: str | os.PathLike, cfg: TrainConfig,
               manifest: str | os.PathLike) -> Path:
    """The run's folder, named by what makes the run."""
    name = hashlib.sha256(f"{cfg.digest(manifest)} {RUN_LAYOUT}".encode()).hexdigest()[:16]
    return Path(checkpoint_root) / name


def open_run_folder(folder: Path, cfg: TrainConfig) -> Checkpoint | None:
    """Readies the run's folder: the newest checkpoint to resume from (None: none), the
    logs cut back to it, and what a killed job left half-written removed."""
    folder.mkdir(parents=True, exist_ok=True)
    for left in remove_temporaries(folder):
        log.info("removed %s, left by a job killed while writing it", left)
    write_json(asdict(cfg), folder / "train_config.json")
    resume = newest_checkpoint(folder)
    cut_logs_to(folder, resume.iteration if resume else 0)
    if resume:
        log.info("resuming from iteration %d (%s)", resume.iteration, resume.path)
    else:
        log.info("training from scratch in %s", folder)
    return resume


def _background(table: pd.DataFrame, cfg: TrainConfig) -> pd.DataFrame | None:
    """The locations of the class 'neither', when it is trained."""
    if not cfg.neither.enabled:
        return None
    background = background_locations(table, cfg.neither.locations, cfg.neither.min_distance,
                                      cfg.input_shape, cfg.voxel_size, cfg.seed)
    log.info("class '%s': %d random locations at least %g nm from every synapse", NEITHER,
             len(background), cfg.neither.min_distance)
    return background


def run_loop(run: TrainingRun) -> int:
    """Trains from `run.start` to the last iteration, which it returns. Each step appends
    its loss row, validates when due, and every `save_every` iterations puts the rows on
    disk and then writes its checkpoint: a checkpoint follows every row up to it."""
    from tensorboardX import SummaryWriter

    cfg = run.cfg
    writer = SummaryWriter(str(run.folder / "tensorboard"), purge_step=run.start + 1)
    iteration = run.start
    with (open(run.folder / "loss.csv", "a", newline="") as f,
          _progress(cfg, run.start) as bar, gp.build(run.pipeline)):
        losses = csv.writer(f)
        t0 = time.perf_counter()
        while iteration < cfg.iterations:
            batch = run.pipeline.request_batch(_request(cfg, run.keys, iteration))
            iteration, value = batch.iteration, float(batch.loss)
            losses.writerow([iteration, f"{value:.6f}", f"{time.perf_counter() - t0:.3f}"])
            bar.update(iteration - bar.n)
            if iteration % cfg.log_every == 0 or iteration == cfg.iterations:
                f.flush()
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                writer.add_scalar("train/loss", value, iteration)
                writer.add_scalar("train/learning_rate",
                                  learning_rate_at(cfg, iteration - 1), iteration)
            if run.validator.due(iteration):
                run.validator(run.model, iteration, writer)
            if iteration % cfg.save_every == 0:
                f.flush()
                os.fsync(f.fileno())
                save_checkpoint(run.folder, iteration, run.node.checkpoint())
    writer.close()
    return iteration


def _request(cfg: TrainConfig, keys: dict, iteration: int) -> gp.BatchRequest:
    """The request of the step after `iteration`."""
    request = gp.BatchRequest(random_seed=_request_seed(cfg, iteration))
    request[keys["raw"]] = gp.ArraySpec(roi=centred_roi(data_shape(cfg), cfg.voxel_size))
    request[keys["label"]] = gp.ArraySpec(nonspatial=True)
    request[keys["logits"]] = gp.ArraySpec(nonspatial=True)
    return request


def publish(run: TrainingRun, iteration: int, outputs: TrainOutputs) -> None:
    """Writes the run's outputs: the best and the last model, and its two logs."""
    last = model_record(run.model, run.cfg, iteration)
    with atomic_path(outputs.last) as tmp:
        torch.save(last, tmp)
    with atomic_path(outputs.model) as tmp:
        if run.validator.best is not None:
            tmp.write_bytes(run.validator.best_path.read_bytes())
        else:
            torch.save(last, tmp)
    write_csv(run.validator.table(), outputs.validation)
    write_csv(pd.read_csv(run.folder / "loss.csv"), outputs.losses)
