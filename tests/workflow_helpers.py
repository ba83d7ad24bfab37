"""Running the real workflow in a scratch directory."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

TINY_CONFIG = {
    "classes": ["acetylcholine", "gaba", "serotonin", "octopamine"],
    "demo": {"out_dir": "data/demo", "seed": 2, "shape": [32, 576, 576],
             "neurons_per_class": 9, "synapses_per_neuron": [3, 7],
             "hemilineages_per_class": 3},
    "source": {"type": "table", "table": "data/demo/synapses.csv",
               "raw_container": "data/demo/volume.zarr", "raw_dataset": "volumes/raw/s0"},
    "split": {"method": "grouped", "seed": 0, "max_deviation": 0.08},
    # the demo is learnable in a few hundred steps at this rate: 300 beat chance on the
    # test part as clearly (0.55 against 0.25, p < 0.001) as 1,000 at a tenth of it did
    "training": {"input_shape": [8, 48, 48], "batch_size": 8, "iterations": 300,
                 "learning_rate": 0.01, "lr_schedule": "cosine", "save_every": 100,
                 "log_every": 50, "validate_every": 100},
    "models": {"tiny": {"architecture": "vgg3d",
                        "params": {"fmaps": 6, "fc_size": 32, "dropout": 0.0,
                                   "global_pool": True,
                                   "downsample_factors": [[1, 2, 2], [1, 2, 2], [2, 2, 2],
                                                          [2, 2, 2]]}}},
    "targets": {"test": {"type": "split", "part": "test"}},
    "prediction": {"shards": 2, "block_size": [320, 512, 512], "batch_size": 16},
    # the demo and test_view write the views; the other workflow tests need not pay for them
    "view": {"enabled": False},
    # one torch thread a job: on 2 cores two such jobs run side by side, where 2 threads a
    # job on a loaded machine ran training 12x slower (OpenMP threads waiting on each other)
    "resources": {"train": {"threads": 1}, "predict": {"threads": 1}},
}


def two_model_config() -> dict:
    """Two small models (b with another seed), two split targets, two shards each: the
    reference run the kill, concurrency and rerun tests share."""
    config = copy.deepcopy(TINY_CONFIG)
    config["training"].update({"iterations": 40, "save_every": 10, "log_every": 10,
                               "validate_every": 20})
    config["models"] = {"a": config["models"]["tiny"],
                        "b": {**config["models"]["tiny"], "training": {"seed": 1}}}
    config["targets"] = {"test": {"type": "split", "part": "test"},
                         "validation": {"type": "split", "part": "validation"}}
    return config


def write_config(directory: Path, config: dict) -> Path:
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_command(directory: Path, *args: str, config: Path | None = None) -> list[str]:
    """snakemake on the project's Snakefile inside `directory`, on 2 cores."""
    # --configfile takes several values: the option after it ends the list
    return [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(directory),
            "--configfile", str(config or directory / "config.yaml"), "--cores", "2", *args]


SNAKEMAKE_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def start_snakemake(directory: Path, *targets: str, output=subprocess.DEVNULL
                    ) -> subprocess.Popen:
    """Snakemake in the background, in a session of its own so that os.killpg(proc.pid)
    kills it together with its jobs."""
    return subprocess.Popen(snakemake_command(directory, *targets), stdout=output,
                            stderr=subprocess.STDOUT, text=True, env=SNAKEMAKE_ENV,
                            start_new_session=True)


def snakemake(directory: Path, *args: str, config: Path | None = None,
              check: bool = True, timeout: float = 1500) -> subprocess.CompletedProcess:
    """Run snakemake on the project's Snakefile inside `directory`."""
    result = subprocess.run(snakemake_command(directory, *args, config=config),
                            capture_output=True, text=True, timeout=timeout, env=SNAKEMAKE_ENV)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}"
                             f"\n{result.stderr[-6000:]}")
    return result


def planned_jobs(directory: Path, *args: str, config: Path | None = None) -> dict[str, int]:
    """The jobs a dry run would execute, by rule."""
    # --quiet takes several values: targets must come before it
    out = snakemake(directory, *args, "-n", "--quiet", "rules", config=config).stdout
    jobs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("job", "total"):
            jobs[parts[0]] = int(parts[1])
    return jobs
