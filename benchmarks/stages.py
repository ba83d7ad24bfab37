"""Every stage of the workflow at whole-brain target sizes, through Snakemake.

Labelled targets of 10^5, 10^6 and 10^7 synapses (`--sizes`) run through the whole workflow
after training: the target step, prediction shards with a tiny model (the model is not what
is measured), the merge, evaluation, the FlyWire tables and the neuroglancer view. Each
job's time and peak memory come from its `benchmark:` file (results/benchmarks/, summed by
`ntclass.costs`, as `ntclass costs` prints them).

Prints per size and stage: jobs, job-seconds, synapses per job-second and the largest job's
peak memory (RSS); then, between the two largest sizes, each stage's time per synapse and
peak ratios against the issue's bounds (time per synapse within 1.3x; peak within 1.2x or
under 1.2 GB).

The raw is a written slab of EM-like voxels (`--layout`, as labs store them; Blosc zarr by
default: the cheapest decode, so that prediction's figure is the workflow's own cost). A
whole brain's volume cannot be written here, so the synapses are denser than FAFB's (the
density is printed); only prediction's chunk reuse depends on that, none of the later
stages.

  .venv/bin/python benchmarks/stages.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from predict_feed import FAFB_DENSITY, LAYOUTS, VOXEL, write_volume
from predict_scale import CONFIG, labelled_synapses, run_snakemake

from ntclass.costs import stage_costs

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("target_synapses", "predict_shard", "merge_predictions", "evaluate",
          "flywire_tables", "neuroglancer")
PEAK_BOUND_MB = 1200


def labelled_target(n: int, shape: tuple[int, int, int], seed: int) -> pd.DataFrame:
    """`n` labelled synapses uniform in the slab."""
    return labelled_synapses(n, seed, np.zeros(3), np.array(shape) * np.array(VOXEL))


def outputs(n: int) -> list[str]:
    where = f"tiny/t{n}"
    return [f"results/evaluation/{where}/metrics.json",
            f"results/evaluation/{where}/flywire_neurons.csv",
            f"results/view/{where}/state.json"]


def measure(project: Path, n: int) -> dict[str, dict]:
    """Run every stage of target t<n>; each stage's cost from its benchmark files."""
    elapsed = run_snakemake(project, *outputs(n))
    costs = {s.rule: s for s in stage_costs(project / "results/benchmarks", f"t{n}")}
    print(f"\n{n:,} synapses: {elapsed:.0f} s through Snakemake")
    print(f"  {'stage':<19}{'jobs':>5}{'job-s':>9}{'synapses/s':>12}{'peak MB':>9}")
    row = {}
    for stage in STAGES:
        cost = costs[stage]
        rate = n / cost.wall_s
        peak = cost.peak_rss_mb
        print(f"  {stage:<19}{cost.jobs:>5}{cost.wall_s:>9.1f}{rate:>12,.0f}"
              f"{'n/a' if math.isnan(peak) else f'{peak:.0f}':>9}", flush=True)
        row[stage] = {"s_per_synapse": cost.wall_s / n, "peak_mb": peak}
    return row


def compare(sizes: list[int], rows: dict[int, dict]) -> None:
    small, large = sizes[-2], sizes[-1]
    print(f"\n{large:,} against {small:,} synapses (bounds: time per synapse within 1.3x; "
          f"peak within 1.2x or under {PEAK_BOUND_MB} MB):")
    for stage in STAGES:
        a, b = rows[small][stage], rows[large][stage]
        time_x = b["s_per_synapse"] / a["s_per_synapse"]
        peak_x = b["peak_mb"] / a["peak_mb"]
        peak_ok = peak_x <= 1.2 or b["peak_mb"] < PEAK_BOUND_MB
        print(f"  {stage:<19} time per synapse {time_x:5.2f}x "
              f"({'within' if time_x <= 1.3 else 'OVER'}), peak {peak_x:5.2f}x, "
              f"{b['peak_mb']:.0f} MB ({'within' if peak_ok else 'OVER'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--layout", choices=LAYOUTS, default="blosc")
    parser.add_argument("--slab", type=int, nargs=3, default=[64, 2048, 2048],
                        help="the written raw's shape in voxels, z y x (40x4x4 nm)")
    args = parser.parse_args()
    shape = tuple(args.slab)
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
        project = Path(tmp)
        start = time.perf_counter()
        container, dataset, ratio = write_volume(args.layout, project, shape, (64, 64, 64))
        print(f"raw: {args.layout} slab {shape} voxels, {ratio:.2f}x compressed, written in "
              f"{time.perf_counter() - start:.0f} s")
        config = {**CONFIG, "targets": {},
                  "evaluation": {"flywire_tables": True}, "view": {"enabled": True}}
        for n in args.sizes:
            labelled_target(n, shape, seed=n).to_parquet(project / f"t{n}.parquet",
                                                         index=False)
            config["targets"][f"t{n}"] = {"type": "table", "table": f"t{n}.parquet",
                                          "raw_container": container, "raw_dataset": dataset}
            print(f"t{n}: {n / np.prod(shape) / FAFB_DENSITY:,.0f}x FAFB's synapse density")
        (project / "config.yaml").write_text(yaml.safe_dump(config))
        train_s = run_snakemake(project, "results/models/tiny/model.pt")
        print(f"tiny model trained on the demo in {train_s:.0f} s")
        rows = {n: measure(project, n) for n in args.sizes}
        if len(args.sizes) > 1:
            compare(args.sizes, rows)


if __name__ == "__main__":
    sys.exit(main())
