"""Training: a class-balanced gunpowder pipeline into gp.torch.Train.

One source branch per class draws cubes centred on that class's training synapses
(Synister's balancing); augmentations follow; a random branch is chosen per sample.
"""

from __future__ import annotations

import csv
import json
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
from ntclass.io import NamedOutputs, atomic_path, read_synapse_csv, write_csv
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


# gunpowder writes a checkpoint to the name `_checkpoint_name` gives; ntclass gives it a
# name that no resume reads (gunpowder's looks for "<basename>_checkpoint_*") and renames
# it when the write is done
INCOMPLETE = "incomplete-"


def _incomplete(name: str) -> Path:
    path = Path(name)
    return path.with_name(INCOMPLETE + path.name)


class ScheduledTrain(gp.torch.Train):
    """gp.torch.Train with the learning rate set from the iteration before each step, and
    checkpoints written atomically: a job killed while writing one leaves only a temporary
    file that no resume reads."""

    def __init__(self, *args, cfg: TrainConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.cfg = cfg

    def start(self):
        super().start()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shape: autotuning pays

    def train_step(self, batch, request):
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate_at(self.cfg, self.iteration)
        self.model.iteration = self.iteration  # seeds the device augmentations
        super().train_step(batch, request)
        if batch.iteration % self.save_every == 0:
            name = super()._checkpoint_name(self.checkpoint_basename, batch.iteration)
            written = _incomplete(name)
            with open(written, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(written, name)

    def _checkpoint_name(self, basename, iteration):
        return str(_incomplete(super()._checkpoint_name(basename, iteration)))


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
                   model: torch.nn.Module, loss: torch.nn.Module, checkpoint_basename: str,
                   background: pd.DataFrame | None = None):
    """The full training pipeline, ending in gp.torch.Train."""
    pipeline = build_batches(synapses, cfg, keys, background)
    pipeline += ScheduledTrain(
        Autocast(model, cfg.mixed_precision, device_augment(cfg), cfg.seed),
        loss,
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


def _checkpoints(checkpoint_dir: Path) -> dict[int, Path]:
    """The finished checkpoints of a run, by iteration."""
    return {int(m.group(1)): p for p in checkpoint_dir.glob("model_checkpoint_*")
            if (m := re.fullmatch(r"model_checkpoint_(\d+)", p.name))}


def _loads(path: Path) -> str | None:
    """Why a checkpoint does not load (None: it does)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, empty or not a checkpoint at all
        return f"{type(e).__name__}: {e}".splitlines()[0]
    if not isinstance(state, dict) or not {"model_state_dict", "optimizer_state_dict"
                                            } <= set(state):
        return "it holds no model and optimizer state"
    return None


def logged_through(checkpoint_dir: Path, validate_every: int) -> int:
    """The last iteration an earlier run logged completely: its loss row, and every
    validation due by then (validate_every 0: none). gunpowder writes a checkpoint inside
    the step, before the step's rows are written, so a kill can leave one ahead of them."""
    done = 0
    for row in _rows_up_to(checkpoint_dir / "loss.csv", 2**62):
        if int(row[0]) != done + 1:
            break
        done += 1
    if validate_every:
        validated = {int(r[0]) for r in _rows_up_to(checkpoint_dir / "validation.csv",
                                                     2**62)}
        for due in range(validate_every, done + 1, validate_every):
            if due not in validated:
                return due - 1
    return done


def resume_point(checkpoint_dir: Path, logged: int | None = None) -> int:
    """The iteration of the newest checkpoint that loads and that the earlier run's logs
    reach (`logged`, see `logged_through`; None: any); 0: none. Newer ones that do not load
    (written by a job killed mid-write before writes were atomic, or damaged since) are set
    aside as `damaged-<name>`; newer ones the logs do not reach are removed and redone. So
    gunpowder, which loads the newest, resumes from the chosen one."""
    for left in checkpoint_dir.glob(INCOMPLETE + "*"):
        log.info("removing %s, a checkpoint whose writing was interrupted", left)
        left.unlink()
    found = _checkpoints(checkpoint_dir)
    damaged = []
    for iteration in sorted(found, reverse=True):
        reason = _loads(found[iteration])
        if reason is None and logged is not None and iteration > logged:
            log.info("removing %s: the job was killed before it logged iteration %d",
                     found[iteration], iteration)
            found[iteration].unlink()
            continue
        if reason is None:
            for bad, why in damaged:
                log.warning("checkpoint %s does not load (%s); set aside as damaged-%s, "
                            "resuming from %s", bad, why, bad.name, found[iteration])
            return iteration
        damaged.append((found[iteration], reason))
        found[iteration].rename(found[iteration].with_name(f"damaged-{found[iteration].name}"))
    for bad, why in damaged:
        log.warning("checkpoint %s does not load (%s); set aside as damaged-%s, training "
                    "from scratch", bad, why, bad.name)
    return 0


def _rows_up_to(path: Path, up_to: int) -> list[list[str]]:
    """CSV rows of an earlier run up to its last checkpoint (the rest is redone)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    # a job killed while writing leaves at most a torn last row: whole rows only
    return [r for r in rows if len(r) == 3 and r[0].isdigit() and int(r[0]) <= up_to]


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
    then lowest loss) as `best.pt` in the checkpoint folder, across resumed runs."""

    HEADER = ["iteration", "loss", "accuracy"]

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
        """The score of the kept best.pt: it may come from after the checkpoint resumed
        from, so it is looked up among all rows the earlier run wrote."""
        if not self.best_path.exists():
            return None
        iteration = torch.load(self.best_path, weights_only=True)["iteration"]
        scores = [(float(r[2]), -float(r[1])) for r in _rows_up_to(self.csv_path, 10**12)
                  if int(r[0]) == iteration]
        return scores[-1] if scores else None

    def due(self, iteration: int) -> bool:
        return self.data is not None and (iteration % self.cfg.validate_every == 0
                                          or iteration == self.cfg.iterations)

    def __call__(self, model: torch.nn.Module, iteration: int, writer) -> None:
        device = next(model.parameters()).device
        loss, accuracy = self.data.evaluate(model, self.loss.to(device), device)
        self.rows.append([iteration, f"{loss:.6f}", f"{accuracy:.6f}"])
        with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([self.HEADER, *self.rows])
        writer.add_scalar("validation/loss", loss, iteration)
        writer.add_scalar("validation/accuracy", accuracy, iteration)
        log.info("validation at iteration %d: loss %.4f accuracy %.3f", iteration, loss,
                 accuracy)
        if self.best is None or (accuracy, -loss) > self.best:
            self.best = (accuracy, -loss)
            with atomic_path(self.best_path) as tmp:
                torch.save(model_record(model, self.cfg, iteration), tmp)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=self.HEADER).astype(
            {"iteration": int, "loss": float, "accuracy": float})


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
    run resumes there, a changed one starts afresh.
    """
    from tensorboardX import SummaryWriter

    table = read_synapse_csv(manifest)
    cfg = resolve_geometry(table, cfg)
    log.info("voxel size %s nm; intensities mapped to [0, 1] from %s", cfg.voxel_size,
             cfg.intensity)
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
    loss = build_loss(cfg.loss, cfg.classes)

    checkpoint_dir = Path(checkpoint_root) / cfg.digest(manifest)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (checkpoint_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    validating = cfg.validate_every if (table["split"] == "validation").any() else 0
    start = resume_point(checkpoint_dir, logged_through(checkpoint_dir, validating))
    if start:
        log.info("resuming from iteration %d (%s)", start, checkpoint_dir)
    else:
        log.info("training from scratch in %s", checkpoint_dir)
    losses_path = checkpoint_dir / "loss.csv"
    rows = _rows_up_to(losses_path, start)
    validator = _Validator(table, cfg, checkpoint_dir, start, loss)

    keys = {"raw": gp.ArrayKey("RAW"), "label": gp.ArrayKey("LABEL"),
            "logits": gp.ArrayKey("LOGITS")}
    background = None
    if cfg.neither.enabled:
        background = background_locations(
            table, cfg.neither.locations, cfg.neither.min_distance, cfg.input_shape,
            cfg.voxel_size, cfg.seed)
        log.info("class '%s': %d random locations at least %g nm from every synapse",
                 NEITHER, len(background), cfg.neither.min_distance)
    pipeline = build_pipeline(table[table["split"] == "train"], cfg, keys, model, loss,
                              str(checkpoint_dir / "model"), background)
    writer = SummaryWriter(str(checkpoint_dir / "tensorboard"), purge_step=start + 1)
    # the rows kept are rewritten atomically, then the new ones appended as they come
    with atomic_path(losses_path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([["iteration", "loss", "seconds"], *rows])
    with open(losses_path, "a", newline="") as f, _progress(cfg, start) as bar:
        loss_csv = csv.writer(f)
        t0 = time.perf_counter()
        with gp.build(pipeline):
            iteration = start
            while iteration < cfg.iterations:
                request = gp.BatchRequest(random_seed=_request_seed(cfg, iteration))
                request[keys["raw"]] = gp.ArraySpec(
                    roi=centred_roi(data_shape(cfg), cfg.voxel_size))
                request[keys["label"]] = gp.ArraySpec(nonspatial=True)
                request[keys["logits"]] = gp.ArraySpec(nonspatial=True)
                batch = pipeline.request_batch(request)
                iteration = batch.iteration
                value = float(batch.loss)
                loss_csv.writerow([iteration, f"{value:.6f}",
                                   f"{time.perf_counter() - t0:.3f}"])
                bar.update(iteration - bar.n)
                if iteration % cfg.log_every == 0 or iteration == cfg.iterations:
                    f.flush()
                    bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                    writer.add_scalar("train/loss", value, iteration)
                    writer.add_scalar("train/learning_rate",
                                      learning_rate_at(cfg, iteration - 1), iteration)
                if validator.due(iteration):
                    validator(model, iteration, writer)
    writer.close()
    last = model_record(model, cfg, iteration)
    with atomic_path(outputs.last) as tmp:
        torch.save(last, tmp)
    with atomic_path(outputs.model) as tmp:
        if validator.best is not None:
            tmp.write_bytes(validator.best_path.read_bytes())
        else:
            torch.save(last, tmp)
    write_csv(validator.table(), outputs.validation)
    write_csv(pd.read_csv(losses_path), outputs.losses)
