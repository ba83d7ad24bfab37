"""Prediction of one shard of a target: plan, read, infer, write.

A target's synapses come partitioned by shard and sorted spatially (`targets`). A shard
job
  stamps: each synapse with the identity of the raw its cube is read from now
         (`rawstamps`: the volume's metadata and the chunk files its cube touches);
  plans: its synapses whose prediction is not yet in the target's cache (keyed by the
         model file, the settings and each synapse's raw volume, location and raw stamp),
         sorted, into `todo.parquet`; blocks are runs of `rows_per_block` consecutive
         rows, so no block is empty and a block reads only its own rows;
  reads: the cubes of a block, asynchronously and in parallel (`cubes`);
  infers: batch by batch while later cubes are still being read;
  writes: each block's result atomically next to daisy's done markers (a killed shard
         resumes where it stopped), then all of them into the cache, then the shard's
         table: every synapse of the shard exactly once, joined from the cache.
A new release of a target thus predicts only the synapses whose location is new, and a
rerun after the raw changed only those whose cubes touch what changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import daisy
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from funlib.geometry import Roi

from ntclass.cubes import EMPTY_SHARE, cpu_count, cube_reader, hold_no_data
from ntclass.errors import NtclassError
from ntclass.intensity import Intensity, intensity_of, to_network
from ntclass.io import NULLABLE_INTEGERS, atomic_path, remove_files
from ntclass.jpeg import choose_jpeg_decoder
from ntclass.models.modelfile import load_model, pick_device
from ntclass.predict.rawstamps import STAMP, stamp_shard
from ntclass.predict.targets import shard_file
from ntclass.settings import Prediction
from ntclass.sql import duckdb_connection, query_one
from ntclass.volumes import CROP_REVISION, RawVolume, forget_opened_raw

log = logging.getLogger(__name__)
META_COLUMNS = ["synapse_id", "z", "y", "x", "pre_id", "post_id", "nt"]
# what a prediction depends on besides the model: the synapse's volume and location
KEY = ["raw_container", "raw_dataset", "z", "y", "x"]
# ... and what the raw of its cube is now (rawstamps)
STAMPED_KEY = [*KEY, STAMP]
# the version of the raw stamps in the cache key: caches from before them are not read
RAW_STAMPS = 1


@dataclass(frozen=True)
class PredictConfig:
    """What a shard job predicts with: the classes, the raw's voxel size and intensity
    range (None: the raw's own, the dtype's range) and the prediction settings."""

    classes: tuple[str, ...]
    voxel_size: tuple[int, int, int] | None
    intensity_range: tuple[float, float] | None
    settings: Prediction

    def result_key(self) -> dict:
        """What a prediction's value depends on: the settings declared RESULT (not how the
        work is cut), the device as picked, and the versions of the reading."""
        return {"classes": list(self.classes), "voxel_size": _list(self.voxel_size),
                **self.settings.results(), "device": pick_device(self.settings.device),
                "intensity_range": _list(self.intensity_range), "empty_share": EMPTY_SHARE,
                "crop_revision": CROP_REVISION, "raw_stamps": RAW_STAMPS}


def _list(values) -> list | None:
    return list(values) if values is not None else None


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


# ---------------------------------------------------------------------------- read rows

def read_rows(path: Path, begin: int, end: int) -> pd.DataFrame:
    """Rows `begin`..`end` of a Parquet file, reading only the row groups they lie in."""
    pf = pq.ParquetFile(path)
    starts = np.cumsum([0] + [pf.metadata.row_group(i).num_rows
                              for i in range(pf.num_row_groups)])
    groups = [i for i in range(pf.num_row_groups) if starts[i] < end and starts[i + 1] > begin]
    if not groups:
        return pf.schema_arrow.empty_table().to_pandas(types_mapper=NULLABLE_INTEGERS.get)
    table = pf.read_row_groups(groups).slice(begin - starts[groups[0]], end - begin)
    return table.to_pandas(types_mapper=NULLABLE_INTEGERS.get)


# ---------------------------------------------------------------------- read and infer

class BlockPredictor:
    """Predicts the rows of daisy blocks; loads the model once per worker process."""

    def __init__(self, model_path: str, todo: Path, cfg: PredictConfig, blocks_dir: Path):
        self.model_path = model_path
        self.todo = todo
        self.cfg = cfg
        self.blocks_dir = blocks_dir
        self._model = None
        self._buffers: dict = {}

    @classmethod
    def cube_placement(cls, model_path: str, cfg: PredictConfig) -> tuple[tuple, str]:
        """The shape of the model's input cube and its crop convention (volumes.CROPS),
        without keeping the model."""
        _, record = load_model(model_path, cfg.classes, "cpu")
        return tuple(record["input_shape"]), record.get("crop", "ntclass")

    def model(self):
        if self._model is None:
            self._device = pick_device(self.cfg.settings.device)
            self._model, self._record = load_model(self.model_path, self.cfg.classes,
                                                   self._device)
            self._threads = max(1, cpu_count() // self.cfg.settings.workers)
        return self._model

    def __call__(self, block) -> None:
        begin, end = block.write_roi.begin[0], block.write_roi.end[0]
        rows = read_rows(self.todo, begin, end)
        # the rows after this block (one block per worker): their chunks are kept
        later = read_rows(self.todo, end, end + self.cfg.settings.rows_per_block
                          * self.cfg.settings.workers)
        probs, padded, empty = self.predict(rows, later)
        out = rows[[*STAMPED_KEY, "cell"]].copy()
        for i, nt in enumerate(self.cfg.classes):
            out[nt] = probs[:, i]
        out["padded"] = padded
        out["empty"] = empty
        with atomic_path(self.blocks_dir / f"{block.block_id[1]}.parquet") as tmp:
            out.to_parquet(tmp, index=False)

    def predict(self, rows: pd.DataFrame, later: pd.DataFrame | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Class probabilities (N x classes, float32), and flags of the cubes that reach
        outside the volume (padded) and of those that hold no data (empty) of some rows.
        `later`: the rows that come next (their chunks are kept for them)."""
        model = self.model()
        jpeg = choose_jpeg_decoder(self.cfg.settings.jpeg_decoder, self._device)
        probs = np.zeros((len(rows), len(self.cfg.classes)), dtype=np.float32)
        padded = np.zeros(len(rows), dtype=bool)
        empty = np.zeros(len(rows), dtype=bool)
        for (container, dataset), idx in rows.groupby(
                ["raw_container", "raw_dataset"], sort=False).indices.items():
            reader = cube_reader(container, dataset, _tuple(self.cfg.voxel_size),
                                 tuple(self._record["input_shape"]), self._threads,
                                 os.getpid(), jpeg, self._device)
            intensity = model_input_mapping(reader.volume, self._record,
                                            self.cfg.intensity_range, self.model_path)
            locations = rows[["z", "y", "x"]].to_numpy(dtype=np.float64)[idx]
            # where the model's trainer placed its cubes (files before this record: ntclass)
            pending, padded[idx] = reader.submit(locations, self._record.get("crop", "ntclass"),
                                                 _locations_in(later, container, dataset))
            flags = np.zeros(len(idx), dtype=bool)
            probs[idx] = self._infer(model, pending, intensity, flags,
                                     reader.volume.fill_value)
            empty[idx] = flags
        return probs, padded, empty

    def _infer(self, model, pending: list, intensity: Intensity, empty: np.ndarray,
               fill) -> np.ndarray:
        """Batches in order; later cubes are still being read while the model runs."""
        out = [self._run(model, batch, intensity)
               for batch in self._batches(pending, empty, fill)]
        return np.concatenate(out) if out else np.zeros((0, len(self.cfg.classes)),
                                                        np.float32)

    def _batches(self, pending: list, empty: np.ndarray, fill):
        """The host's part: raw cubes, as read, in batches (pinned for a GPU); marks in
        `empty` the cubes that hold no data."""
        for n, start in enumerate(range(0, len(pending), self.cfg.settings.batch_size)):
            part = pending[start:start + self.cfg.settings.batch_size]
            batch = self._buffer(n % 2, part[0].shape, part[0].dtype,
                                 part[0].device)[:len(part)]
            # cut on the device where chunks were decoded there
            slots = batch.numpy() if batch.device.type == "cpu" else batch
            for i, cube in enumerate(part):  # each cube straight into its slot
                cube.result(slots[i])
            empty[start:start + len(part)] = hold_no_data(part, slots, fill)
            yield batch

    def _buffer(self, which: int, shape: tuple[int, ...], dtype, on: str = "cpu"
                ) -> torch.Tensor:
        """Two batch buffers, reused (pinned for a GPU): fresh memory for every batch
        would cost a page fault per 4 KB written. A batch is consumed (copied to the
        device, or mapped to floats) before its buffer comes round again."""
        key = (which, tuple(shape), np.dtype(dtype).name, on)
        if key not in self._buffers:
            self._buffers[key] = torch.empty(
                (self.cfg.settings.batch_size, *shape), dtype=_TORCH_DTYPES[np.dtype(dtype)],
                device=on, pin_memory=on == "cpu" and torch.device(self._device).type == "cuda")
        return self._buffers[key]

    def _run(self, model, batch: torch.Tensor, intensity: Intensity) -> np.ndarray:
        """The device's part: copy, intensity mapping, the model, class probabilities."""
        device = torch.device(self._device)
        on_gpu = device.type == "cuda"
        with torch.inference_mode(), torch.autocast(
                "cuda", torch.bfloat16, enabled=on_gpu and self.cfg.settings.mixed_precision):
            x = to_network(batch.to(device, non_blocking=True), intensity)
            return torch.softmax(model(x).float(), dim=1).cpu().numpy()


_TORCH_DTYPES = {np.dtype(t): getattr(torch, t) for t in (
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16",
    "float32", "float64")}


def _locations_in(rows: pd.DataFrame | None, container: str, dataset: str
                  ) -> np.ndarray | None:
    if rows is None or rows.empty:
        return None
    mine = (rows["raw_container"] == container) & (rows["raw_dataset"] == dataset)
    return rows.loc[mine, ["z", "y", "x"]].to_numpy(dtype=np.float64)


def _tuple(values) -> tuple | None:
    return tuple(values) if values is not None else None


# ------------------------------------------------------------------------------- plan

def _cache_files(cache: Path) -> str | None:
    """The glob of the cache's result files, or None while it has none."""
    return f"{cache}/*.parquet" if any(cache.glob("*.parquet")) else None


def _cell_range(con, shard_path: Path) -> tuple:
    """The lowest and highest spatial key of a shard (None, None when it is empty): the
    cache files' row groups outside it are skipped."""
    return query_one(con, f"SELECT min(cell), max(cell) FROM '{shard_path}'")


def plan_todo(shard_path: Path, cache: Path, todo: Path, rows_per_block: int,
              work: Path) -> int:
    """Write the distinct (volume, location, raw stamp) keys of a stamped shard that the
    cache lacks, in the shard's spatial order; return their number."""
    con = duckdb_connection(work)
    cached = _cache_files(cache)
    key = ", ".join(STAMPED_KEY)
    lacking = "" if cached is None else (
        f"ANTI JOIN (SELECT {key} FROM read_parquet('{cached}') "
        f"WHERE cell BETWEEN $lo AND $hi) c USING ({key})")
    lo, hi = _cell_range(con, shard_path)
    query = (f"SELECT DISTINCT ON ({key}) {key}, cell "
             f"FROM '{shard_path}' t {lacking} "
             f"ORDER BY raw_container, raw_dataset, cell, z, y, x")
    params = {"lo": lo, "hi": hi} if cached else {}
    reader = con.sql(query, params=params).to_arrow_reader(rows_per_block)
    n = 0
    with atomic_path(todo) as tmp:
        with pq.ParquetWriter(tmp, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch, row_group_size=rows_per_block)
                n += batch.num_rows
    con.close()
    return n


def count_raw_changed(todo: Path, cache: Path, work: Path) -> int:
    """How many planned locations the cache holds for other raw stamps: predicted again
    because the raw of their cubes changed."""
    cached = _cache_files(cache)
    if cached is None or not pq.ParquetFile(todo).metadata.num_rows:
        return 0
    con = duckdb_connection(work)
    lo, hi = query_one(con, f"SELECT min(cell), max(cell) FROM '{todo}'")
    n = con.execute(f"""
        SELECT count(*) FROM '{todo}' t SEMI JOIN (
            SELECT {', '.join(STAMPED_KEY)} FROM read_parquet('{cached}')
            WHERE cell BETWEEN $lo AND $hi) c
        ON {' AND '.join(f't.{k} = c.{k}' for k in KEY)} AND t.{STAMP} <> c.{STAMP}""",
                    {"lo": lo, "hi": hi}).fetchone()[0]
    con.close()
    return int(n)


# ------------------------------------------------------------------------------ write

def publish_blocks(blocks_dir: Path, n_todo: int, out: Path, classes: Sequence[str],
                   model_path: str) -> None:
    """All finished blocks as one cache file; refuses when rows are missing or doubled,
    and a model whose probabilities are not finite."""
    files = sorted(blocks_dir.glob("*.parquet"), key=lambda p: int(p.stem))
    n = sum(pq.ParquetFile(p).metadata.num_rows for p in files)
    if n != n_todo:
        raise NtclassError(f"the blocks in '{blocks_dir}' hold {n} predictions for "
                           f"{n_todo} planned synapses; remove '{blocks_dir.parent}' and rerun")
    if not files:
        return
    schema = pq.read_schema(files[0])
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for p in files:
            table = pq.read_table(p, schema=schema)
            probabilities = np.stack([table[c].to_numpy(zero_copy_only=False)
                                      for c in classes], axis=1)
            if not np.isfinite(probabilities).all():
                bad = int((~np.isfinite(probabilities).all(axis=1)).sum())
                raise NtclassError(
                    f"model '{model_path}' gives NaN or infinite outputs ({bad} of the "
                    f"{table.num_rows} synapses of a block); its weights are damaged or its "
                    "training diverged: retrain it (e.g. with a lower learning rate) or "
                    "replace the file")
            writer.write_table(table)


def damaged_parquet(path: Path) -> str | None:
    """Why a Parquet file cannot be read (None: its footer and schema read), as a job
    killed mid-write by an older version, a full disk or a lost file leaves it."""
    try:
        pq.ParquetFile(path).schema_arrow  # noqa: B018 (reads the footer)
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def set_aside_damaged(cache: Path, work: Path) -> None:
    """Delete damaged cache files (their rows are predicted again) and a work folder that
    holds a damaged file (the shard's work is planned again); say which."""
    for path in sorted(cache.glob("*.parquet")):
        if (why := damaged_parquet(path)) is not None:
            log.warning("cache file %s is damaged (%s); deleted: its synapses are predicted "
                        "again", path, why)
            path.unlink()
    if work.exists():
        for path in sorted(work.rglob("*.parquet")):
            if (why := damaged_parquet(path)) is not None:
                log.warning("work file %s is damaged (%s); the shard's work folder %s is "
                            "deleted and planned again", path, why, work)
                shutil.rmtree(work)
                return


def write_shard_table(shard_path: Path, cache: Path, classes: Sequence[str], out: Path,
                      work: Path, batch_rows: int = 65536) -> int:
    """The prediction table of a stamped shard, in the shard's order, from the cache:
    every synapse exactly once, predicted from its raw as stamped. Streams, so memory
    does not grow with the shard."""
    con = duckdb_connection(work)
    cached = _cache_files(cache)
    meta = ", ".join(f"t.{c}" for c in META_COLUMNS)
    probs = ", ".join(f'c."{c}"' for c in classes)
    source = ("(SELECT NULL::VARCHAR AS raw_container)" if cached is None else
              f"(SELECT DISTINCT ON ({', '.join(STAMPED_KEY)}) * FROM "
              f"read_parquet('{cached}') WHERE cell BETWEEN $lo AND $hi)")
    lo, hi = _cell_range(con, shard_path)
    query = (f"SELECT {meta}, {probs}, c.padded, c.empty FROM read_parquet('{shard_path}', "
             f"file_row_number = true) t LEFT JOIN {source} c "
             f"USING ({', '.join(STAMPED_KEY)}) "
             "ORDER BY t.file_row_number") if cached else None
    n = 0
    with atomic_path(out) as tmp:
        writer = None
        if query is not None and lo is not None:
            reader = con.sql(query, params={"lo": lo, "hi": hi}).to_arrow_reader(batch_rows)
            for batch in reader:
                table = with_calls(batch.to_pandas(types_mapper=NULLABLE_INTEGERS.get),
                                    classes)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, pa.Schema.from_pandas(
                        table, preserve_index=False))
                writer.write_table(pa.Table.from_pandas(table, schema=writer.schema,
                                                        preserve_index=False))
                n += len(table)
        if writer is None:  # an empty shard: the columns, no rows
            empty = read_rows(shard_path, 0, 0).reindex(columns=META_COLUMNS)
            with_calls(empty.assign(**{c: np.float32(0) for c in classes},
                                    padded=False, empty=False), classes).to_parquet(
                tmp, index=False)
        else:
            writer.close()
    con.close()
    return n


def with_calls(df: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Add `predicted_nt`, `confidence`, `margin` and `entropy`; refuse rows without a
    prediction."""
    probs = df[list(classes)]
    if probs.isna().any().any():
        row = df[probs.isna().any(axis=1)].iloc[0]
        raise NtclassError(f"synapse {int(row['synapse_id'])} has no prediction in the "
                           "cache; remove the prediction's work and cache folders and rerun")
    values = probs.to_numpy(dtype=np.float32)
    best = values.argmax(axis=1) if len(values) else np.zeros(0, dtype=int)
    df = df.astype({c: np.float32 for c in classes})
    df["predicted_nt"] = pd.array(np.asarray(classes, dtype=object)[best], dtype="string")
    df["confidence"] = values.max(axis=1) if len(values) else np.zeros(0, np.float32)
    df["padded"] = df["padded"].astype(bool)
    df["empty"] = df["empty"].astype(bool)
    df["margin"], df["entropy"] = margin_and_entropy(values)
    return df[[*META_COLUMNS, *classes, "predicted_nt", "confidence", "padded", "empty",
               "margin", "entropy"]]


def margin_and_entropy(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the top probability minus the second, and the entropy in nats (0: one
    class certain; ln(number of classes): all alike). Both say how far a synapse is from
    having no clear transmitter, which the top probability alone hides."""
    p = np.asarray(probabilities, dtype=np.float32)
    if not len(p):
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    top_two = np.sort(p, axis=1)[:, -2:]
    margin = top_two[:, 1] - top_two[:, 0]
    terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1)), 0)
    return margin.astype(np.float32), np.maximum(terms.sum(axis=1), 0).astype(np.float32)


# -------------------------------------------------------------------------- the shard

def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.digest()


def predict_shard(model_path: str, shard_path: Path, cfg: PredictConfig, work_base: Path,
                  cache_base: Path, out_path: str,
                  predictor: type[BlockPredictor] | None = None) -> dict:
    """Predict one shard: plan what the cache lacks, predict it blockwise with daisy,
    publish it to the cache, write the shard's table. Returns counts for the log.
    `predictor`: the class that predicts blocks (BlockPredictor; benchmarks swap it)."""
    predictor = predictor or BlockPredictor
    # this process may have read an earlier state of the raw
    cube_reader.cache_clear()
    forget_opened_raw()
    model_digest = _file_digest(Path(model_path))
    cache = cache_base / _digest(model_digest,
                                 json.dumps(cfg.result_key(), sort_keys=True).encode())
    stamping = work_base / "stamped-shard.parquet"
    stamps, unseen = stamp_shard(shard_path, stamping, cfg.voxel_size,
                                 *predictor.cube_placement(model_path, cfg))
    for name in unseen:
        log.warning("raw '%s': its store gives no ETag, generation or modification time "
                    "for its chunks, so a change of their content cannot be seen; after "
                    "it changes, delete %s", name, cache_base)
    # done markers are valid for these rows, their raw as stamped, this model and these
    # settings only
    work = work_base / _digest(model_digest, _file_digest(shard_path), stamps.encode(),
                               json.dumps(asdict(cfg), sort_keys=True).encode())
    blocks, todo = work / "blocks", work / "todo.parquet"
    set_aside_damaged(cache, work)
    if todo.exists() and _published(cache, work, todo).exists():
        shutil.rmtree(work)  # that plan was predicted and is in the cache: plan anew
    blocks.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    stamped = work / "shard.parquet"
    os.replace(stamping, stamped)
    if not todo.exists():
        plan_todo(stamped, cache, todo, cfg.settings.rows_per_block, work)
    n_todo = pq.ParquetFile(todo).metadata.num_rows
    n_rows = pq.ParquetFile(shard_path).metadata.num_rows
    n_changed = count_raw_changed(todo, cache, work)
    log.info("shard of %d synapses: %d locations to predict (%d of them again, as the raw "
             "of their cubes changed), the rest from the cache", n_rows, n_todo, n_changed)
    if n_todo:
        _run_blocks(predictor(model_path, todo, cfg, blocks), n_todo, cfg, work)
        publish_blocks(blocks, n_todo, _published(cache, work, todo), cfg.classes,
                       model_path)
    n = write_shard_table(stamped, cache, cfg.classes, Path(out_path), work)
    if n != n_rows:
        raise NtclassError(f"shard '{shard_path}' has {n_rows} synapses but {n} predictions")
    return {"synapses": n_rows, "predicted": n_todo, "raw_changed": n_changed}


def _published(cache: Path, work: Path, todo: Path) -> Path:
    """The cache file of a plan's predictions, named by its work folder and the plan."""
    return cache / f"{work.name}-{_digest(_file_digest(todo))}.parquet"


def _run_blocks(predictor: BlockPredictor, n_todo: int, cfg: PredictConfig, work: Path
                ) -> None:
    block = Roi((0,), (cfg.settings.rows_per_block,))
    # daisy's worker logs default to ./daisy_logs/<task_id>, shared by every job running
    # at once; this shard's work folder is its own
    daisy.logging.set_log_basedir(work / "daisy_logs")
    task = daisy.Task(
        task_id="predict", total_roi=Roi((0,), (n_todo,)), read_roi=block, write_roi=block,
        process_function=predictor,
        read_write_conflict=False, fit="shrink", max_workers=cfg.settings.workers, max_retries=1,
        timeout=None, tracking_path=str(work / "tracking"))
    ok = daisy.run_blockwise([task], multiprocessing=cfg.settings.workers > 1, progress=False)
    if not ok:
        raise RuntimeError("some blocks of the shard failed; rerun to resume")


def predict_target_shard(*, model: str, target_dir: str, shard: int, classes: Sequence[str],
                         voxel_size: Sequence[int] | None,
                         intensity_range: Sequence[float] | None, settings: Prediction,
                         work_base: str, cache_base: str, out: str,
                         supersedes: Sequence[str]) -> None:
    """Predict shard `shard` of a target; the Snakemake job's entry point. `supersedes`:
    outputs of an earlier prediction of the target, deleted first, so that a failed
    rerun leaves none of them looking current."""
    remove_files(supersedes)
    shard_path = Path(target_dir) / shard_file(shard)
    if not shard_path.exists():
        raise NtclassError(f"target '{target_dir}' has no shard {shard}")
    cfg = PredictConfig(classes=tuple(classes), voxel_size=_tuple(voxel_size),
                        intensity_range=_tuple(intensity_range), settings=settings)
    counts = predict_shard(model, shard_path, cfg, Path(work_base), Path(cache_base), out)
    log.info("shard %d: %d synapses, %d predicted now (%d of them because their raw "
             "changed)", shard, counts["synapses"], counts["predicted"], counts["raw_changed"])
