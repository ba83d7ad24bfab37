"""What each stage of a run cost: the per-job files of Snakemake's `benchmark:` directive,
summed per rule."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from ntclass.errors import NtclassError


@dataclass
class StageCost:
    """The jobs of one rule: their count, wall and CPU seconds, and the largest job."""

    rule: str
    jobs: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    longest_s: float = 0.0
    peak_rss_mb: float = math.nan  # the largest job's peak resident memory
    unmeasured: list[str] = field(default_factory=list)  # jobs too short to sample

    def add(self, name: str, row: dict[str, str]) -> None:
        self.jobs += 1
        seconds = float(row["s"])
        self.wall_s += seconds
        self.longest_s = max(self.longest_s, seconds)
        rss, cpu = number(row.get("max_rss")), number(row.get("cpu_time"))
        if math.isnan(rss):
            self.unmeasured.append(name)
        else:
            self.peak_rss_mb = rss if math.isnan(self.peak_rss_mb) else max(self.peak_rss_mb, rss)
        if not math.isnan(cpu):
            self.cpu_s += cpu


def number(text: str | None) -> float:
    """A benchmark field as a number; Snakemake writes NA (or -) for what it did not sample."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def stage_costs(benchmark_dir: str | Path, wildcard: str | None = None) -> list[StageCost]:
    """Every rule's jobs under `benchmark_dir` (`<rule>/<wildcards>.tsv`), by rule name;
    with `wildcard`, only the jobs with that wildcard value (a model, a target). A file with
    several rows (Snakemake's `repeat`) counts each run."""
    root = Path(benchmark_dir)
    files = sorted(p for p in root.glob("*/**/*.tsv") if wildcard is None
                   or wildcard in (*p.relative_to(root).parent.parts[1:], p.stem))
    if not files:
        raise NtclassError(f"no benchmark files under '{benchmark_dir}'; run the workflow "
                           "first (each rule writes results/benchmarks/<rule>/...tsv)")
    stages: dict[str, StageCost] = {}
    for path in files:
        rule = path.relative_to(root).parts[0]
        stage = stages.setdefault(rule, StageCost(rule))
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows or "s" not in rows[0]:
            raise NtclassError(f"'{path}' is not a Snakemake benchmark file (a header with "
                               "column s, then one row per run)")
        for row in rows:
            stage.add(str(path.relative_to(root)), row)
    return list(stages.values())


def print_costs(stages: list[StageCost]) -> None:
    print(f"{'stage':<20}{'jobs':>6}{'wall s':>10}{'cpu s':>10}{'longest s':>11}"
          f"{'peak MB':>9}")
    for s in stages:
        peak = "n/a" if math.isnan(s.peak_rss_mb) else f"{s.peak_rss_mb:.0f}"
        print(f"{s.rule:<20}{s.jobs:>6}{s.wall_s:>10.1f}{s.cpu_s:>10.1f}{s.longest_s:>11.1f}"
              f"{peak:>9}")
    short = sum(len(s.unmeasured) for s in stages)
    if short:
        print(f"({short} jobs ended before Snakemake sampled their memory: peak MB is over "
              "the others)")
