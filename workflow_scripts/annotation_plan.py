from pathlib import Path

from ntclass.view.annotation_jobs import plan_annotations, write_plan
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
work = Path(sm.output.plan).parent / ".plan-work"
run_job(
    sm.log[0],
    lambda: write_plan(
        plan_annotations(sm.input.predictions, sm.params.classes, work, sm.params.limit),
        sm.output.plan),
)
