from pathlib import Path

from ntclass.view.annotation_jobs import plan_annotations, write_plan
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
p = sm.params
work = Path(sm.output.plan).parent / ".plan-work"
run_job(
    sm.log[0],
    lambda: write_plan(
        plan_annotations(sm.input.predictions, p.classes, work, p.limit,
                         rows_per_part=p.rows_per_part, sharded_above=p.sharded_above,
                         minishard_keys=p.minishard_keys, shard_bytes=p.shard_bytes),
        sm.output.plan),
)
