from pathlib import Path

from ntclass.view.annotation_jobs import map_annotations, read_plan
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
run_job(
    sm.log[0],
    lambda: map_annotations(read_plan(sm.input.plan), int(sm.wildcards.part),
                            Path(sm.output.part), predictions=sm.input.predictions),
)
