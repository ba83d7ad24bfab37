"""Shared fixtures: a tiny demo dataset written once per test session."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ntclass.demo import DemoSpec, write_demo

# one torch thread for what the tests train and predict in this process (the workflow's
# jobs get theirs from resources): 2 threads on a busy 2-core machine ran 12x slower
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("acetylcholine", "gaba", "glutamate", "serotonin")
TINY = DemoSpec(classes=CLASSES, shape=(32, 512, 512), neurons_per_class=6,
                synapses_per_neuron=(3, 6), hemilineages_per_class=2, seed=3)


@contextlib.contextmanager
def one_at_a_time(name: str) -> Iterator[None]:
    """A lock across the test processes (pytest-xdist's workers): a service's start-up
    script or an apt install runs in one of them at a time."""
    with open(Path(tempfile.gettempdir()) / f"ntclass-tests-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class CodeRunningPayload:
    """Pickled, this object would create `marker` when unpickled: safe loaders must refuse
    it without running it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> dict[str, str]:
    """volume.zarr, synapses.csv and cremi/ of a small 4-class demo dataset."""
    out = tmp_path_factory.mktemp("demo")
    return write_demo(out, TINY)


@pytest.fixture(scope="session")
def two_model_run(tmp_path_factory) -> Path:
    """The finished run of `two_model_config`, shared read-only: tests copy it to change
    anything. Under pytest-xdist the first worker that needs it builds it where every
    worker finds it (their basetemps' parent, as xdist's documentation shows) and the
    others wait for it."""
    from workflow_helpers import snakemake, two_model_config, write_config

    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        directory = tmp_path_factory.mktemp("two_models")
    else:
        directory = tmp_path_factory.getbasetemp().parent / "two_models"
    finished = directory.with_name("two_models.finished")  # beside it: the run stays as made
    with one_at_a_time(f"two_models-{directory.parent.name}"):
        if not finished.exists():
            directory.mkdir(exist_ok=True)
            write_config(directory, two_model_config())
            snakemake(directory)
            finished.touch()
    return directory


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_or_skip(script: str, name: str) -> None:
    """Start a test service with the project's own script; skip only outside CI."""
    with one_at_a_time("services"):
        result = subprocess.run(["bash", str(ROOT / "scripts" / script)],
                                capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        message = f"{name} could not be started: {(result.stdout + result.stderr)[-800:]}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


MONGO_PORT = int(os.environ.get("MONGO_PORT", "27117"))


@pytest.fixture(scope="session")
def mongo_uri() -> str:
    """A MongoDB-protocol server on 127.0.0.1 (SecantusDB, started by scripts/mongo-up.sh)."""
    service_or_skip("mongo-up.sh", "the MongoDB-protocol server")
    return f"mongodb://127.0.0.1:{MONGO_PORT}"


@pytest.fixture(scope="session", autouse=True)
def slurm_controller_answers() -> None:
    """Snakemake's SLURM plugin runs `scontrol show config` each time Snakemake starts (for
    its option help), and with SLURM installed but its controller down that call waits
    9 s: every Snakemake call of the suite would. Where SLURM is installed and we are
    root, the local cluster (as slurm_cluster starts it) is brought up first; where it is
    not installed, scontrol is missing and the plugin moves on at once."""
    if shutil.which("scontrol") and os.geteuid() == 0:
        with one_at_a_time("services"):
            subprocess.run(["bash", str(ROOT / "scripts" / "slurm-up.sh")],
                           capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """A single-node SLURM cluster on localhost (scripts/slurm-up.sh; needs root)."""
    if os.geteuid() != 0 and not in_ci():
        pytest.skip("starting SLURM daemons needs root")
    service_or_skip("slurm-up.sh", "the local SLURM cluster")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless-capable Chromium, installed with apt when missing (needs root)."""
    with one_at_a_time("services"):
        return _chromium()


def _chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("chromium is missing and cannot be installed without root")
        pytest.skip("chromium is not installed (Debian package 'chromium')")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:  # the package lists may be stale or absent
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
    found = shutil.which("chromium")
    if not found:
        message = f"chromium could not be installed: {result.stderr[-800:]}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return found
