"""A training job killed with SIGKILL resumes from its checkpoint, and resuming changes
nothing: the resumed model equals one trained without interruption."""

from __future__ import annotations

import copy
import os
import signal
import time

import pandas as pd
import torch
from workflow_helpers import (
    TINY_CONFIG,
    planned_jobs,
    snakemake,
    start_snakemake,
    write_config,
)

ITERATIONS = 60


def two_model_config() -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["training"].update({"iterations": ITERATIONS, "save_every": 10, "log_every": 10,
                               "validate_every": 20})
    # the same model twice: b is the uninterrupted twin of a
    config["models"] = {"a": config["models"]["tiny"], "b": copy.deepcopy(config["models"]["tiny"])}
    return config


def wait_for_checkpoint(directory, model: str, iteration: int, proc, timeout=600) -> None:
    pattern = f"results/models/{model}/checkpoints/*/model_checkpoint_{iteration}"
    deadline = time.monotonic() + timeout
    while not list(directory.glob(pattern)):
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, f"no checkpoint {iteration} after {timeout} s"
        time.sleep(0.2)


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_killed_training_resumes_and_a_changed_rate_retrains_only_that_model(tmp_path):
    config = two_model_config()
    write_config(tmp_path, config)
    snakemake(tmp_path, "results/split/manifest.csv")

    proc = start_snakemake(tmp_path, "results/models/a/model.pt")
    wait_for_checkpoint(tmp_path, "a", 30, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its job, mid-training
    proc.wait()
    assert not (tmp_path / "results/models/a/model.pt").exists()

    # what a kill during a checkpoint's write leaves: the temporary file of the next one;
    # and a checkpoint torn under its final name, as a copy or a disk may leave it
    (folder,) = (tmp_path / "results/models/a/checkpoints").iterdir()
    newest = max((p for p in folder.glob("model_checkpoint_*")),
                 key=lambda p: int(p.name.rsplit("_", 1)[1]))
    newest_iteration = int(newest.name.rsplit("_", 1)[1])
    left = folder / f".model_checkpoint_{newest_iteration + 10}.tmp-killed"
    left.write_bytes(newest.read_bytes()[:1000])
    torn = folder / f"model_checkpoint_{newest_iteration + 20}"
    torn.write_bytes(newest.read_bytes()[:1000])

    snakemake(tmp_path, "--unlock")  # a killed Snakemake leaves its lock behind
    snakemake(tmp_path, "--rerun-incomplete", "results/models/a/model.pt",
              "results/models/b/model.pt")
    log = (tmp_path / "logs/train/a.log").read_text()
    # from the newest checkpoint that loads: the loop writes one after the rows it follows
    assert (f"resuming from iteration {newest_iteration} ({newest.relative_to(tmp_path)})"
            in log), log[-2000:]
    assert newest_iteration >= 30
    assert f"checkpoint {torn.relative_to(tmp_path)} does not load" in log
    assert f"removed {left.relative_to(tmp_path)}" in log and not left.exists()
    losses = pd.read_csv(tmp_path / "results/models/a/training_log.csv")
    assert list(losses["iteration"]) == list(range(1, ITERATIONS + 1))
    validation = pd.read_csv(tmp_path / "results/models/a/validation.csv")
    assert list(validation["iteration"]) == [20, 40, 60]

    # resuming is exact: a equals its uninterrupted twin b, loss curve and weights
    twin_losses = pd.read_csv(tmp_path / "results/models/b/training_log.csv")
    assert losses["loss"].tolist() == twin_losses["loss"].tolist()
    for name in ("model.pt", "model_last.pt"):
        a = weights(tmp_path / "results/models/a" / name)
        b = weights(tmp_path / "results/models/b" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name

    # a new learning rate for a: a retrains from scratch, b is left alone
    config["models"]["a"]["training"] = {"learning_rate": 0.002}
    write_config(tmp_path, config)
    targets = ["results/models/a/model.pt", "results/models/b/model.pt"]
    assert planned_jobs(tmp_path, *targets) == {"train": 1}
    b_before = (tmp_path / "results/models/b/model.pt").stat().st_mtime_ns
    snakemake(tmp_path, *targets)
    assert (tmp_path / "results/models/b/model.pt").stat().st_mtime_ns == b_before
    log = (tmp_path / "logs/train/a.log").read_text()  # Snakemake starts each job's log anew
    assert "training from scratch" in log and "resuming" not in log
    assert len(list((tmp_path / "results/models/a/checkpoints").iterdir())) == 2
    a, b = (weights(tmp_path / f"results/models/{m}/model_last.pt") for m in "ab")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_killed_prediction_shard_resumes_and_predicts_every_synapse_once(tmp_path):
    config = copy.deepcopy(TINY_CONFIG)
    config["training"].update({"iterations": 4, "save_every": 4, "validate_every": 4})
    config["targets"] = {"all": {"type": "table", "table": "data/demo/synapses.csv",
                                 "raw_container": "data/demo/volume.zarr"}}
    # one shard of many small blocks, so that the kill lands between blocks
    config["prediction"] = {"shards": 1, "rows_per_block": 16, "batch_size": 4}
    write_config(tmp_path, config)
    snakemake(tmp_path, "results/models/tiny/model.pt", "results/targets/all")
    blocks = "results/predictions/tiny/all/work/0/*/blocks/*.parquet"

    proc = start_snakemake(tmp_path, "results/predictions/tiny/all/predictions.csv")
    deadline = time.monotonic() + 600
    while len(list(tmp_path.glob(blocks))) < 5:
        assert proc.poll() is None, "the shard finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in tmp_path.glob(blocks)}
    assert not (tmp_path / "results/predictions/tiny/all/shards/0.parquet").exists()
    assert not (tmp_path / "results/predictions/tiny/all/predictions.csv").exists()

    snakemake(tmp_path, "--unlock")
    snakemake(tmp_path, "--rerun-incomplete", "results/predictions/tiny/all/predictions.csv")
    # the finished blocks were kept, not redone
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())
    assert len(list(tmp_path.glob(blocks))) > len(done)
    table = pd.read_csv(tmp_path / "data/demo/synapses.csv")
    predictions = pd.read_csv(tmp_path / "results/predictions/tiny/all/predictions.csv")
    assert not predictions["synapse_id"].duplicated().any()
    assert sorted(predictions["synapse_id"]) == sorted(table["synapse_id"])
