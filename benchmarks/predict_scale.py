"""The whole prediction path through Snakemake at growing target sizes.

A tiny model (trained for a few iterations on the demo data) predicts targets of 10^4, 10^5
and 10^6 synapses (more with --sizes) at FAFB synapse density, spread over a sub-volume of
a virtual FAFB-sized volume (a zarr whose chunks were never written: reads cost no
decompression, so this measures the workflow, not the disk). Each target runs its target
step, shards, merge, CSV (up to prediction.csv_max_synapses) and evaluation.

Prints per size: seconds per 1,000 synapses (the whole Snakemake call) and every job's
peak memory (RSS, from its log), and the ratios of the largest to the smallest target.
Targets: peak memory within 1.2x, seconds per 1,000 synapses within 1.5x. Then a new
release of the 10^5-synapse target with 1 % of its synapses moved: how many the rerun
predicts (target: at most 5 %).

  .venv/bin/python benchmarks/predict_scale.py
  .venv/bin/python benchmarks/predict_scale.py --sizes 10000 100000 1000000 10000000
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
import zarr

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
VOXEL = np.array([40, 4, 4])
FAFB_SHAPE = (7062, 134424, 248153)  # voxels, z y x (FAFB v14 s0)
FAFB_DENSITY = 1.9e-6  # synapses per voxel
CLASSES = ["acetylcholine", "gaba", "serotonin", "octopamine"]
PEAK = re.compile(r"peak memory \(RSS\): (\d+) MB in this process, (\d+) MB in its largest")

CONFIG = {
    "classes": CLASSES,
    "demo": {"out_dir": "data/demo", "seed": 2, "shape": [32, 576, 576],
             "neurons_per_class": 9, "synapses_per_neuron": [3, 7],
             "hemilineages_per_class": 3},
    "source": {"type": "table", "table": "data/demo/synapses.csv",
               "raw_container": "data/demo/volume.zarr", "raw_dataset": "volumes/raw/s0"},
    "split": {"method": "grouped", "seed": 0, "max_deviation": 0.1},
    "training": {"input_shape": [4, 24, 24], "batch_size": 8, "iterations": 4,
                 "save_every": 4, "log_every": 2, "validate_every": 4},
    "models": {"tiny": {"architecture": "vgg3d",
                        "params": {"fmaps": 2, "fc_size": 8, "dropout": 0.0,
                                   "global_pool": True,
                                   "downsample_factors": [[1, 2, 2], [2, 2, 2]]}}},
    "prediction": {"synapses_per_shard": 250_000, "rows_per_block": 1024,
                   "batch_size": 256, "csv_max_synapses": 100_000},
}


def virtual_fafb(path: Path) -> None:
    """A FAFB-sized uint8 zarr with no chunk written."""
    array = zarr.open(str(path), mode="w").create_dataset(
        "raw", shape=FAFB_SHAPE, chunks=(16, 256, 256), dtype=np.uint8)
    array.attrs.update({"voxel_size": VOXEL.tolist(), "offset": [0, 0, 0]})


def synapse_table(n: int, seed: int) -> pd.DataFrame:
    """`n` synapses at FAFB density in a box (isotropic in nm) inside FAFB: 100 synapses a
    neuron, partners drawn among the same neurons, a tenth of the neurons labelled."""
    side_nm = (n / FAFB_DENSITY * VOXEL.prod()) ** (1 / 3)
    box = np.minimum(side_nm, np.array(FAFB_SHAPE) * VOXEL * 0.9)
    return labelled_synapses(n, seed, (np.array(FAFB_SHAPE) * VOXEL - box) / 2, box)


def labelled_synapses(n: int, seed: int, start: np.ndarray, box: np.ndarray) -> pd.DataFrame:
    """`n` synapses uniform in the box (nm) from `start`: 100 a neuron, partners drawn among
    the same neurons, a tenth of the neurons labelled."""
    rng = np.random.default_rng(seed)
    locations = start + rng.uniform(0, 1, (n, 3)) * box
    neurons = max(1, n // 100)
    pre = rng.integers(0, neurons, n)
    nts = np.asarray(CLASSES, dtype=object)[rng.integers(0, len(CLASSES), neurons)]
    labelled = rng.uniform(size=neurons) < 0.1
    return pd.DataFrame({
        "synapse_id": np.arange(n, dtype=np.uint64) + 10**12,
        "z": locations[:, 0], "y": locations[:, 1], "x": locations[:, 2],
        "pre_id": pre + 10**9, "post_id": rng.integers(0, neurons, n) + 10**9,
        "nt": np.where(labelled[pre], nts[pre], None)})


def run_snakemake(project: Path, *targets: str) -> float:
    start = time.perf_counter()
    subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(project),
                    "--configfile", str(project / "config.yaml"), "--cores", "2", *targets],
                   check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def peak_memory(project: Path, target: str) -> dict[str, int]:
    """Each job kind's largest peak RSS (MB; a process or its largest child)."""
    logs = {"target": [project / f"logs/targets/{target}.log"],
            "shard": list((project / f"logs/predict/tiny/{target}").glob("[0-9]*.log")),
            "merge": [project / f"logs/predict/tiny/{target}/merge.log"],
            "evaluate": [project / f"logs/evaluate/tiny/{target}.log"]}
    peaks = defaultdict(int)
    for kind, paths in logs.items():
        for path in paths:
            for own, child in PEAK.findall(path.read_text()):
                peaks[kind] = max(peaks[kind], int(own), int(child))
    return dict(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--release", type=int, default=100_000,
                        help="then move 1 %% of this target's synapses and rerun it (0: no)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
        project = Path(tmp)
        virtual_fafb(project / "fafb.zarr")
        config = dict(CONFIG, targets={})
        for n in args.sizes:
            synapse_table(n, seed=n).to_parquet(project / f"t{n}.parquet", index=False)
            config["targets"][f"t{n}"] = {"type": "table", "table": f"t{n}.parquet",
                                          "raw_container": "fafb.zarr",
                                          "raw_dataset": "raw"}
        (project / "config.yaml").write_text(yaml.safe_dump(config))
        train_s = run_snakemake(project, "results/models/tiny/model.pt")
        print(f"tiny model trained on the demo in {train_s:.0f} s; virtual FAFB volume "
              f"{FAFB_SHAPE} voxels; density {FAFB_DENSITY:g} synapses per voxel")
        rows = []
        for n in args.sizes:
            wanted = [f"results/evaluation/tiny/t{n}/metrics.json"]
            if n <= CONFIG["prediction"]["csv_max_synapses"]:
                wanted.append(f"results/predictions/tiny/t{n}/predictions.csv")
            seconds = run_snakemake(project, *wanted)
            peaks = peak_memory(project, f"t{n}")
            rows.append({"synapses": n, "s_per_1000": 1000 * seconds / n, **peaks})
            print(f"{n:>10} synapses: {seconds:7.1f} s, {1000 * seconds / n:6.3f} s per 1,000; "
                  "peak MB " + ", ".join(f"{k} {v}" for k, v in peaks.items()), flush=True)
        table = pd.DataFrame(rows).set_index("synapses")
        first, last = table.iloc[0], table.iloc[-1]
        print("largest / smallest target:")
        for column in table.columns:
            print(f"  {column:>10}: {last[column] / first[column]:.2f}x")
        if args.release:
            new_release(project, args.release)


def predicted_now(project: Path, target: str) -> int:
    """Locations the shards of `target` predicted in their last run (their logs say)."""
    return sum(int(re.findall(r"(\d+) locations to predict", p.read_text())[-1])
               for p in (project / f"logs/predict/tiny/{target}").glob("[0-9]*.log"))


def new_release(project: Path, n: int) -> None:
    """1 % of the target's synapses moved by a section: what does the rerun predict?"""
    path = project / f"t{n}.parquet"
    table = pd.read_parquet(path)
    moved = np.random.default_rng(0).choice(len(table), len(table) // 100, replace=False)
    table.loc[moved, "z"] += 40
    table.to_parquet(path, index=False)
    seconds = run_snakemake(project, f"results/evaluation/tiny/t{n}/metrics.json")
    again = predicted_now(project, f"t{n}")
    print(f"new release of the {n}-synapse target with {len(moved)} synapses moved "
          f"({100 * len(moved) / n:.0f} %): {again} predicted again "
          f"({100 * again / n:.2f} % of the target; target at most 5 %), {seconds:.0f} s")


if __name__ == "__main__":
    main()
