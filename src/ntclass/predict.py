"""Blockwise prediction of one shard with daisy.

A target's synapses are cut into shards (Snakemake jobs) and each shard into daisy blocks:
blocks in space for synapses in one large volume (a block reads its raw plus context once
and crops every synapse it owns), row ranges for synapses in many small crops. A block owns
the synapses whose location lies in its write ROI (half-open), so every synapse is
predicted exactly once. Block results are written atomically next to daisy's done markers,
outside Snakemake's declared outputs, so a killed shard resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import daisy
import numpy as np
import pandas as pd
import torch
from funlib.geometry import Roi

from .errors import NtclassError
from .io import read_parquet, read_synapse_csv, write_csv, write_parquet
from .synapses import LOCATION, read_source
from .train import load_model, pick_device
from .validation import to_network
from .volumes import Intensity, RawVolume, crop_cubes, intensity_of, open_raw_cached

log = logging.getLogger(__name__)
META_COLUMNS = ["synapse_id", *LOCATION, "pre_id", "post_id", "nt"]


@dataclass
class PredictConfig:
    classes: list[str]
    voxel_size: list[int] | None  # None: the one stored with the raw
    block_size: list[int]  # nm, for volume targets
    rows_per_block: int = 256  # for targets of many crops
    batch_size: int = 32
    workers: int = 1
    device: str = "auto"
    mixed_precision: bool = True  # bf16 autocast on a GPU
    intensity_range: list[float] | None = None  # None: the dtype's range (8/16-bit ints)


def is_single_volume(table: pd.DataFrame) -> bool:
    return table[["raw_container", "raw_dataset"]].drop_duplicates().shape[0] == 1


def _block_grid(locations: np.ndarray, block_size: np.ndarray, origin: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Grid begin and number of blocks covering all locations, aligned to `origin`."""
    first = np.floor((locations.min(axis=0) - origin) / block_size).astype(np.int64)
    last = np.floor((locations.max(axis=0) - origin) / block_size).astype(np.int64)
    return origin + first * block_size, last - first + 1


def shard_rois(table: pd.DataFrame, n_shards: int, block_size: Sequence[int],
               origin: Sequence[int]) -> list[Roi]:
    """Cut the target's block grid into `n_shards` slabs along its longest axis, balanced
    by synapse count. Every location lies in exactly one slab (empty slabs possible)."""
    block = np.asarray(block_size, dtype=np.int64)
    locs = table[LOCATION].to_numpy(dtype=np.float64)
    begin, n_blocks = _block_grid(locs, block, np.asarray(origin, dtype=np.int64))
    axis = int(np.argmax(n_blocks))
    layer = np.floor((locs[:, axis] - begin[axis]) / block[axis]).astype(np.int64)
    per_layer = np.bincount(layer, minlength=n_blocks[axis])
    # cut at the layer boundaries whose cumulative counts come closest to k/n of the synapses
    cum = np.cumsum(per_layer)
    targets = np.arange(1, n_shards) * cum[-1] / n_shards
    cuts = np.abs(cum[None, :] - targets[:, None]).argmin(axis=1) + 1
    edges = np.concatenate([[0], np.minimum(cuts, n_blocks[axis]), [n_blocks[axis]]])
    rois = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        shard_begin, shard_shape = begin.copy(), n_blocks * block
        shard_begin[axis] = begin[axis] + lo * block[axis]
        shard_shape[axis] = max(hi - lo, 0) * block[axis]
        rois.append(Roi(tuple(shard_begin), tuple(shard_shape)))
    return rois


def select_shard(table: pd.DataFrame, shard: int, n_shards: int, cfg: PredictConfig,
                 origin: Sequence[int]) -> tuple[pd.DataFrame, Roi | None]:
    """The rows of one shard, and its ROI when blocks are spatial."""
    if not 0 <= shard < n_shards:
        raise NtclassError(f"shard {shard} is out of range for {n_shards} shards")
    if table.empty:
        return table, None
    if is_single_volume(table):
        roi = shard_rois(table, n_shards, cfg.block_size, origin)[shard]
        return table[_inside(table, roi)], roi
    bounds = np.linspace(0, len(table), n_shards + 1).round().astype(int)
    return table.iloc[bounds[shard]:bounds[shard + 1]], None


def _inside(table: pd.DataFrame, roi: Roi) -> np.ndarray:
    locs = table[LOCATION].to_numpy(dtype=np.float64)
    begin, end = np.array(roi.begin, float), np.array(roi.end, float)
    return np.all((locs >= begin) & (locs < end), axis=1)


class ShardPredictor:
    """Predicts the synapses of daisy blocks; loads the model once per process."""

    def __init__(self, model_path: str, rows: pd.DataFrame, cfg: PredictConfig,
                 blocks_dir: Path, spatial: bool):
        self.model_path = model_path
        self.rows = rows
        self.cfg = cfg
        self.blocks_dir = blocks_dir
        self.spatial = spatial
        self._model = None

    def model(self):
        if self._model is None:
            device = pick_device(self.cfg.device)
            self._model, self._record = load_model(self.model_path, self.cfg.classes, device)
            self._device = device
        return self._model

    def rows_of(self, block) -> pd.DataFrame:
        if self.spatial:
            return self.rows[_inside(self.rows, block.write_roi)]
        begin, end = block.write_roi.begin[0], block.write_roi.end[0]
        return self.rows.iloc[begin:end]

    def __call__(self, block) -> None:
        rows = self.rows_of(block)
        result = self.predict_rows(rows)
        write_parquet(result, self.blocks_dir / f"{block.block_id[1]}.parquet")

    def predict_rows(self, rows: pd.DataFrame) -> pd.DataFrame:
        model = self.model()
        shape = self._record["input_shape"]
        probs = np.zeros((len(rows), len(self.cfg.classes)), dtype=np.float32)
        padded = np.zeros(len(rows), dtype=bool)
        positions = np.arange(len(rows))
        for (container, dataset), idx in rows.groupby(
                ["raw_container", "raw_dataset"], sort=False).indices.items():
            volume = open_raw_cached(container, dataset, self.cfg.voxel_size)
            intensity = model_input_mapping(volume, self._record, self.cfg.intensity_range,
                                            self.model_path)
            locs = rows[LOCATION].to_numpy(dtype=np.float64)[idx]
            cubes, pad = crop_cubes(volume, locs, shape)
            probs[positions[idx]] = self._infer(model, cubes, intensity)
            padded[positions[idx]] = pad
        return assemble(rows, probs, padded, self.cfg.classes)

    def _infer(self, model, cubes: np.ndarray, intensity: Intensity) -> np.ndarray:
        out = []
        on_gpu = self.cfg.mixed_precision and torch.device(self._device).type == "cuda"
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=on_gpu):
            for start in range(0, len(cubes), self.cfg.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(
                    cubes[start:start + self.cfg.batch_size]))
                x = to_network(batch.to(self._device), intensity)
                out.append(torch.softmax(model(x), dim=1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.cfg.classes)))


# models saved before intensity mappings were recorded were all trained on uint8 raw
_UINT8_ONLY = {"uint8": [0.0, 255.0]}


def model_input_mapping(volume: RawVolume, record: dict, intensity_range, model_path: str
                        ) -> Intensity:
    """The intensity mapping of `volume`, checked against what the model was trained on:
    the same voxel size, and for raw of a dtype it has seen, the same intensity range."""
    if list(volume.voxel_size) != list(record["voxel_size"]):
        raise NtclassError(f"model '{model_path}' was trained at voxel size "
                           f"{list(record['voxel_size'])} nm, but raw '{volume.name}' has "
                           f"{list(volume.voxel_size)} nm")
    intensity = intensity_of(volume.dtype, intensity_range, volume.name)
    trained = (record.get("intensity") or _UINT8_ONLY).get(intensity.dtype)
    if trained is not None and [float(v) for v in trained] != intensity.record():
        raise NtclassError(
            f"model '{model_path}' was trained on {intensity.dtype} raw with intensities "
            f"{trained} mapped to its input range, but raw '{volume.name}' would be mapped "
            f"from {intensity.record()}; set intensity_range to {trained}")
    return intensity


def assemble(rows: pd.DataFrame, probs: np.ndarray, padded: np.ndarray,
             classes: Sequence[str]) -> pd.DataFrame:
    """The prediction table of some synapses."""
    out = rows[[c for c in META_COLUMNS if c in rows]].reset_index(drop=True).copy()
    for i, nt in enumerate(classes):
        out[nt] = probs[:, i]
    best = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
    out["predicted_nt"] = pd.array(np.asarray(classes, dtype=object)[best], dtype="string")
    out["confidence"] = probs.max(axis=1) if len(probs) else np.zeros(0)
    out["padded"] = padded
    return out


def predict_shard(model_path: str, table: pd.DataFrame, shard: int, n_shards: int,
                  cfg: PredictConfig, work_dir: str | os.PathLike, out_path: str) -> None:
    """Predict one shard of `table` blockwise; write its rows to `out_path` atomically.

    `work_dir` keeps daisy's done markers and the finished blocks between attempts.
    """
    work_dir = Path(work_dir)
    spatial = not table.empty and is_single_volume(table)
    origin = (0, 0, 0)
    if spatial:
        volume = open_raw_cached(table["raw_container"].iloc[0], table["raw_dataset"].iloc[0],
                                 cfg.voxel_size)
        origin = volume.offset
    rows, shard_roi = select_shard(table, shard, n_shards, cfg, origin)
    blocks_dir = work_dir / "blocks"
    blocks_dir.mkdir(parents=True, exist_ok=True)
    if rows.empty:
        log.info("shard %d of %d holds no synapse", shard, n_shards)
        write_csv(assemble(rows, np.zeros((0, len(cfg.classes))), np.zeros(0, bool),
                           cfg.classes), out_path)
        return
    if spatial:
        block = Roi((0, 0, 0), tuple(cfg.block_size))
        total = shard_roi
    else:
        block = Roi((0,), (cfg.rows_per_block,))
        total = Roi((0,), (len(rows),))
    predictor = ShardPredictor(model_path, rows.reset_index(drop=True), cfg, blocks_dir,
                               spatial)
    # daisy's worker logs default to ./daisy_logs/<task_id>, shared by every model and
    # target running at once; this shard's work folder is its own
    daisy.logging.set_log_basedir(work_dir / "daisy_logs")
    task = daisy.Task(
        task_id=f"predict_shard_{shard}",
        total_roi=total, read_roi=block, write_roi=block,
        process_function=predictor, read_write_conflict=False, fit="shrink",
        max_workers=cfg.workers, max_retries=1, timeout=None,
        tracking_path=str(work_dir / "tracking"),
    )
    log.info("shard %d of %d: %d synapses in %s", shard, n_shards, len(rows), total)
    ok = daisy.run_blockwise([task], multiprocessing=cfg.workers > 1, progress=False)
    if not ok:
        raise RuntimeError(f"some blocks of shard {shard} failed; rerun to resume")
    parts = [read_parquet(p) for p in sorted(blocks_dir.glob("*.parquet"))]
    result = pd.concat(parts, ignore_index=True) if parts else assemble(
        rows.iloc[:0], np.zeros((0, len(cfg.classes))), np.zeros(0, bool), cfg.classes)
    missing = set(rows["synapse_id"]) - set(result["synapse_id"])
    if missing or len(result) != len(rows):
        raise RuntimeError(f"shard {shard}: {len(missing)} synapses were not predicted and "
                           f"{len(result) - len(rows) + len(missing)} twice; "
                           f"remove '{work_dir}' and rerun")
    write_csv(result.sort_values("synapse_id"), out_path)


def target_synapses(manifest_path: str | None, target: dict, classes: Sequence[str],
                    voxel_size: Sequence[int]) -> pd.DataFrame:
    """The synapses a target names: a part of the split manifest, or a synapse source of
    its own (a table over a volume, a folder of CREMI files, a MongoDB database)."""
    if target["type"] == "split":
        manifest = read_synapse_csv(manifest_path)
        return manifest[manifest["split"] == target["part"]].reset_index(drop=True)
    return read_source(target, classes, voxel_size)


def write_target(manifest_path: str | None, target: dict, classes: Sequence[str],
                 voxel_size: Sequence[int], out_path: str) -> None:
    """Write a target's synapses once, for all its shards and its merge to read."""
    table = target_synapses(manifest_path, target, classes, voxel_size)
    log.info("target of type %s: %d synapses", target["type"], len(table))
    write_parquet(table, out_path)


def load_target(path: str) -> pd.DataFrame:
    return read_parquet(path)


def _work_dir(base: str | os.PathLike, model_path: str, rows: pd.DataFrame,
              cfg: PredictConfig, n_shards: int) -> Path:
    """Done markers are only valid for this model, these synapses and these settings."""
    h = hashlib.sha256(Path(model_path).read_bytes())
    h.update(pd.util.hash_pandas_object(rows[["synapse_id", *LOCATION]], index=False)
             .to_numpy().tobytes())
    h.update(json.dumps([asdict(cfg), n_shards], sort_keys=True).encode())
    return Path(base) / h.hexdigest()[:16]


def predict_target_shard(model_path: str, target_path: str, shard: int, n_shards: int,
                         classes: Sequence[str], voxel_size: Sequence[int] | None,
                         intensity_range: Sequence[float] | None, settings: dict,
                         work_base: str, out_path: str) -> None:
    """Predict shard `shard` of `n_shards` of a target; the Snakemake job's entry point."""
    cfg = PredictConfig(classes=list(classes),
                        voxel_size=list(voxel_size) if voxel_size is not None else None,
                        intensity_range=(list(intensity_range) if intensity_range is not None
                                         else None),
                        block_size=list(settings["block_size"]),
                        rows_per_block=settings["rows_per_block"],
                        batch_size=settings["batch_size"], workers=settings["workers"],
                        device=settings["device"],
                        mixed_precision=settings.get("mixed_precision", True))
    rows = load_target(target_path)
    work_dir = _work_dir(work_base, model_path, rows, cfg, n_shards)
    predict_shard(model_path, rows, shard, n_shards, cfg, work_dir, out_path)


def merge_target(shard_paths: Sequence[str], target_path: str, out_csv: str,
                 out_parquet: str) -> pd.DataFrame:
    """Concatenate a target's shards; every synapse of the target exactly once."""
    expected = load_target(target_path)
    frames = [read_synapse_csv(p) for p in shard_paths]
    merged = pd.concat(frames, ignore_index=True).sort_values("synapse_id", kind="stable")
    dup = merged["synapse_id"].duplicated()
    if dup.any():
        raise NtclassError(f"synapse {int(merged['synapse_id'][dup].iloc[0])} was predicted "
                           "by two shards")
    missing = set(expected["synapse_id"]) - set(merged["synapse_id"])
    if missing:
        raise NtclassError(f"{len(missing)} synapses of the target have no prediction "
                           f"(for example {min(missing)})")
    merged = merged.reset_index(drop=True)
    write_parquet(merged, out_parquet)
    write_csv(merged, out_csv)
    return merged
