from pathlib import Path

from ntclass.view.annotation_jobs import read_plan, reduce_annotations
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
run_job(
    sm.log[0],
    lambda: reduce_annotations(read_plan(sm.input.plan), sm.params.index, sm.params.shard,
                               list(sm.input.parts), list(sm.input.overflow),
                               Path(sm.output.shard), Path(sm.output.overflow)),
)
