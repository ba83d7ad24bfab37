"""Every stage killed with SIGKILL at a random point and rerun with --rerun-incomplete ends
with the outputs of an uninterrupted run; jobs running at once never write the same file."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import torch
from workflow_helpers import (
    planned_jobs,
    snakemake,
    start_snakemake,
)

PRED = "results/predictions/{model}/test"
EVAL = "results/evaluation/{model}/test"


def stage(rule, target, outputs, log, scratch=()):
    return {"rule": rule, "target": target, "outputs": outputs, "log": log, "scratch": scratch}


STAGES = {
    "split": stage("split", "results/split/manifest.csv",
                   ["results/split/manifest.csv", "results/split/summary.csv"],
                   "logs/split.log"),
    "train": stage("train", "results/models/a/model.pt",
                   [f"results/models/a/{n}" for n in
                    ("model.pt", "model_last.pt", "training_log.csv", "validation.csv")],
                   "logs/train/a.log", scratch=["results/models/a/checkpoints"]),
    "target": stage("target_synapses", "results/targets/test", ["results/targets/test"],
                    "logs/targets/test.log"),
    "predict_shard": stage("predict_shard", f"{PRED}/shards/0.parquet".format(model="a"),
                           [f"{PRED}/shards/0.parquet".format(model="a")],
                           "logs/predict/a/test/0.log",
                           scratch=[f"{PRED}/{d}".format(model="a") for d in
                                    ("work/0", "cache")]),
    "merge": stage("merge_predictions", f"{PRED}/predictions.parquet".format(model="a"),
                   [f"{PRED}/predictions.parquet".format(model="a")],
                   "logs/predict/a/test/merge.log"),
    "evaluate": stage("evaluate", f"{EVAL}/metrics.json".format(model="a"),
                      [f"{EVAL}/{name}".format(model="a") for name in
                       ("metrics.json", "report.txt", "neurons.csv", "edges.csv",
                        "confusion.png", "calibration.png")],
                      "logs/evaluate/a/test.log"),
}


@pytest.fixture(scope="module")
def finished_run(two_model_run) -> Path:
    """Two small models, two shards: the uninterrupted reference."""
    return two_model_run


def copy_without(reference: Path, destination: Path, paths) -> Path:
    """A copy of the reference run (times kept, so Snakemake sees it as finished) without
    `paths`."""
    shutil.copytree(reference, destination, symlinks=True)
    for path in paths:
        target = destination / path
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    return destination


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"snakemake ended before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.01)
    return time.monotonic()


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", re.MULTILINE)


def job_seconds(reference: Path, spec: dict) -> float:
    """How long the stage's job ran in the reference run: from its log's first record (the
    job's start, written as the log is opened) to its last output's time (not to
    Snakemake's end, whose bookkeeping afterwards would let a late kill miss the job)."""
    first = LOG_TIME.search((reference / spec["log"]).read_text())
    assert first, f"no timed record in {spec['log']}"
    started = datetime.strptime(first.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    outputs = [reference / p for p in spec["outputs"]]
    files = [f for p in outputs for f in ([p] if p.is_file() else p.rglob("*"))]
    return max(f.stat().st_mtime for f in files) - started


def same_file(a: Path, b: Path) -> bool:
    if a.is_dir():
        names = sorted(p.name for p in a.iterdir())
        return names == sorted(p.name for p in b.iterdir()) and all(
            same_file(a / n, b / n) for n in names)
    if a.suffix == ".pt":
        x, y = (torch.load(p, weights_only=True) for p in (a, b))
        return x.keys() == y.keys() and all(
            all(torch.equal(x[k][n], y[k][n]) for n in x[k]) if k == "state_dict"
            else x[k] == y[k] for k in x)
    if a.name == "training_log.csv":  # its `seconds` column is wall-clock time
        x, y = (pd.read_csv(p).drop(columns="seconds") for p in (a, b))
        return x.equals(y)
    if a.suffix == ".parquet":
        return pd.read_parquet(a).equals(pd.read_parquet(b))
    return a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("name", STAGES)
def test_a_stage_killed_at_a_random_point_reruns_to_the_same_outputs(
        finished_run, tmp_path, name):
    spec = STAGES[name]
    removed = [*spec["outputs"], *spec["scratch"], spec["log"]]
    seconds = job_seconds(finished_run, spec)
    fraction = random.Random(name).uniform(0.05, 0.8)
    for attempt in range(3):
        run = copy_without(finished_run, tmp_path / f"run{attempt}", removed)
        proc = start_snakemake(run, spec["target"])
        wait_for(run / spec["log"], proc)
        time.sleep(fraction * seconds)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        snakemake(run, "--unlock")  # a killed Snakemake leaves its lock behind
        planned = planned_jobs(run, "--rerun-incomplete", spec["target"])
        if planned:
            break
        # the job ran faster than in the reference run (a machine less busy): earlier
        fraction /= 2
    assert planned == {spec["rule"]: 1}, "the kill did not interrupt the job"
    snakemake(run, "--rerun-incomplete", spec["target"])
    for output in spec["outputs"]:
        assert same_file(run / output, finished_run / output), output
    assert planned_jobs(run, spec["target"]) == {}


def snapshot(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Every file outside Snakemake's own bookkeeping, with its inode, time and size."""
    stamps = {}
    for path in directory.rglob("*"):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and not rel.startswith(".snakemake/"):
            st = path.stat()
            stamps[rel] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return stamps


def inputs_only(reference: Path, destination: Path, keep) -> Path:
    """A run folder holding the config and `keep` alone (times kept)."""
    destination.mkdir()
    shutil.copy2(reference / "config.yaml", destination)
    for path in keep:
        if (reference / path).is_dir():
            shutil.copytree(reference / path, destination / path)
        else:
            (destination / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(reference / path, destination / path)
    return destination


CONCURRENT_JOBS = {
    "train a": ["results/models/a/model.pt"],
    "train b": ["results/models/b/model.pt"],
    **{f"shard {m}/{s}": [f"{PRED}/shards/{s}.parquet".format(model=m)]
       for m in "ab" for s in (0, 1)},
}


def concurrent_scratch() -> list[str]:
    """Everything the jobs of CONCURRENT_JOBS write, declared or not."""
    paths = [f"results/models/{m}/{n}" for m in "ab" for n in
             ("model.pt", "model_last.pt", "training_log.csv", "validation.csv", "checkpoints")]
    paths += [f"{PRED}/{kind}/{s}{ext}".format(model=m) for m in "ab" for s in (0, 1)
              for kind, ext in (("shards", ".parquet"), ("work", ""))]
    return paths + [f"{PRED}/cache".format(model=m) for m in "ab"]


def job_inputs(job: str) -> list[str]:
    kept = ["data", "results/split", "results/targets"]
    return kept + ([f"results/models/{job[6]}"] if job.startswith("shard") else [])


def test_jobs_of_two_models_and_two_shards_never_write_the_same_file(finished_run, tmp_path):
    """Each job alone, from its inputs only: the files it writes, declared or not (logs,
    checkpoints, daisy's markers and worker logs), are disjoint from every other job's."""
    def files_written(i: int, job: str) -> set[str]:
        run = inputs_only(finished_run, tmp_path / str(i), job_inputs(job))
        before = snapshot(run)
        snakemake(run, *CONCURRENT_JOBS[job])
        return {p for p, stamp in snapshot(run).items() if before.get(p) != stamp}

    # each in a folder of its own, two at a time: a job takes one core
    with ThreadPoolExecutor(2) as pool:
        written = dict(zip(CONCURRENT_JOBS, pool.map(files_written, *zip(
            *enumerate(CONCURRENT_JOBS)))))
    for job, targets in CONCURRENT_JOBS.items():
        assert set(targets) <= written[job], job
    jobs = list(written)
    for i, first in enumerate(jobs):
        for second in jobs[i + 1:]:
            assert not written[first] & written[second], (first, second)


def test_two_models_and_two_shards_run_at_once_give_the_reference_outputs(
        finished_run, tmp_path):
    run = copy_without(finished_run, tmp_path / "run", concurrent_scratch())
    for together in ([["train a"], ["train b"]],
                     [["shard a/0", "shard b/1"], ["shard a/1", "shard b/0"]]):
        procs = [start_snakemake(run, *(t for job in group for t in CONCURRENT_JOBS[job]),
                                 output=subprocess.PIPE)
                 for group in together]
        with ThreadPoolExecutor(len(procs)) as pool:  # drain both outputs while they run
            outputs = list(pool.map(lambda p: p.communicate()[0], procs))
        for proc, out in zip(procs, outputs):
            assert proc.returncode == 0, out[-3000:]
    for job, targets in CONCURRENT_JOBS.items():
        for target in targets:
            assert same_file(run / target, finished_run / target), job
