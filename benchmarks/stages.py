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

With `--synthetic-predictions` the prediction shards are not predicted: each is written
straight from its target shard with random probabilities, in predict_shard's format
(`ntclass.predict.shard.with_calls`'s columns and dtypes, one Parquet file per shard), and
Snakemake then runs the later stages with `--rerun-triggers mtime` (the written shards are
newer than their inputs, so they count as up to date). Prediction's row then reads
"synthetic"; every later stage is measured as it runs.

`--project DIR` reuses (or creates) a project there: the raw and the trained model are
written only when absent.

  .venv/bin/python benchmarks/stages.py --sizes 100000 1000000
  .venv/bin/python benchmarks/stages.py --synthetic-predictions --sizes 1000000 10000000
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
from ntclass.predict.shard import META_COLUMNS, with_calls
from ntclass.predict.targets import shard_file

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("target_synapses", "predict_shard", "merge_predictions", "evaluate",
          "flywire_tables", "annotation_plan", "annotation_map", "annotation_reduce",
          "neuroglancer")
PEAK_BOUND_MB = 1200


def labelled_target(n: int, shape: tuple[int, int, int], seed: int) -> pd.DataFrame:
    """`n` labelled synapses uniform in the slab."""
    return labelled_synapses(n, seed, np.zeros(3), np.array(shape) * np.array(VOXEL))


def outputs(n: int) -> list[str]:
    where = f"tiny/t{n}"
    return [f"results/evaluation/{where}/metrics.json",
            f"results/evaluation/{where}/flywire_neurons.csv",
            f"results/view/{where}/state.json"]


def synthetic_shards(project: Path, n: int, classes: list[str], seed: int) -> int:
    """Each prediction shard of t<n> written from its target shard with random
    probabilities, as predict_shard writes it (its columns, dtypes and file names)."""
    rng = np.random.default_rng(seed)
    out = project / f"results/predictions/tiny/t{n}/shards"
    out.mkdir(parents=True, exist_ok=True)
    shard = 0
    while (src := project / f"results/targets/t{n}" / shard_file(shard)).exists():
        rows = pd.read_parquet(src, columns=META_COLUMNS)
        probs = rng.dirichlet(np.ones(len(classes)), len(rows)).astype(np.float32)
        rows = rows.assign(**{c: probs[:, i] for i, c in enumerate(classes)},
                           padded=False, empty=False)
        with_calls(rows, classes).to_parquet(out / f"{shard}.parquet", index=False)
        shard += 1
    return shard


def measure(project: Path, n: int, synthetic: list[str] | None) -> dict[str, dict]:
    """Run every stage of target t<n>; each stage's cost from its benchmark files. With
    `synthetic` (the classes), the prediction shards are written instead of predicted."""
    if synthetic:
        elapsed = run_snakemake(project, f"results/targets/t{n}")
        start = time.perf_counter()
        shards = synthetic_shards(project, n, synthetic, seed=n)
        print(f"\nt{n}: {shards} prediction shards SYNTHETIC (random probabilities, "
              f"written in {time.perf_counter() - start:.0f} s; not predicted)")
        elapsed += run_snakemake(project, *outputs(n), "--rerun-triggers", "mtime")
    else:
        elapsed = run_snakemake(project, *outputs(n))
    costs = {s.rule: s for s in stage_costs(project / "results/benchmarks", f"t{n}")}
    print(f"\n{n:,} synapses: {elapsed:.0f} s through Snakemake"
          + (" (prediction synthetic)" if synthetic else ""))
    print(f"  {'stage':<19}{'jobs':>5}{'job-s':>9}{'longest s':>10}{'synapses/s':>12}"
          f"{'per job/s':>11}{'peak MB':>9}")
    row = {}
    for stage in STAGES:
        cost = costs.get(stage)
        if synthetic and stage == "predict_shard":
            print(f"  {stage:<19}{'synthetic':>9}")
            continue
        if cost is None:
            print(f"  {stage:<19}{'n/a':>9}")
            continue
        rate = n / cost.wall_s
        peak = cost.peak_rss_mb
        print(f"  {stage:<19}{cost.jobs:>5}{cost.wall_s:>9.1f}{cost.longest_s:>10.1f}"
              f"{rate:>12,.0f}{n / cost.longest_s:>11,.0f}"
              f"{'n/a' if math.isnan(peak) else f'{peak:.0f}':>9}", flush=True)
        row[stage] = {"s_per_synapse": cost.wall_s / n, "peak_mb": peak}
    return row


def compare(sizes: list[int], rows: dict[int, dict]) -> None:
    small, large = sizes[-2], sizes[-1]
    print(f"\n{large:,} against {small:,} synapses (bounds: time per synapse within 1.3x; "
          f"peak within 1.2x or under {PEAK_BOUND_MB} MB):")
    for stage in STAGES:
        if stage not in rows[small] or stage not in rows[large]:
            continue
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
    parser.add_argument("--project", type=Path,
                        help="reuse (or create) the project here; raw, targets and model "
                             "are written only when absent (default: a temporary one)")
    parser.add_argument("--synthetic-predictions", action="store_true",
                        help="write the prediction shards with random probabilities "
                             "instead of predicting them; measure the later stages")
    args = parser.parse_args()
    if args.project is not None:
        args.project.mkdir(parents=True, exist_ok=True)
        run(args, args.project.resolve())
    else:
        with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
            run(args, Path(tmp))


def run(args: argparse.Namespace, project: Path) -> None:
    shape = tuple(args.slab)
    raw = project / "raw.json"
    if raw.exists():
        container, dataset = yaml.safe_load(raw.read_text())
        print(f"raw: reused {container}/{dataset}")
    else:
        start = time.perf_counter()
        container, dataset, ratio = write_volume(args.layout, project, shape, (64, 64, 64))
        raw.write_text(yaml.safe_dump([container, dataset]))
        print(f"raw: {args.layout} slab {shape} voxels, {ratio:.2f}x compressed, written in "
              f"{time.perf_counter() - start:.0f} s")
    config = {**CONFIG, "targets": {},
              "evaluation": {"flywire_tables": True}, "view": {"enabled": True}}
    for n in args.sizes:
        table = project / f"t{n}.parquet"
        if not table.exists():
            labelled_target(n, shape, seed=n).to_parquet(table, index=False)
        config["targets"][f"t{n}"] = {"type": "table", "table": f"t{n}.parquet",
                                      "raw_container": container, "raw_dataset": dataset}
        print(f"t{n}: {n / np.prod(shape) / FAFB_DENSITY:,.0f}x FAFB's synapse density")
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    if not (project / "results/models/tiny/model.pt").exists():
        train_s = run_snakemake(project, "results/models/tiny/model.pt")
        print(f"tiny model trained on the demo in {train_s:.0f} s")
    classes = list(config["classes"]) if args.synthetic_predictions else None
    rows = {n: measure(project, n, classes) for n in args.sizes}
    if len(args.sizes) > 1:
        compare(args.sizes, rows)


if __name__ == "__main__":
    sys.exit(main())
