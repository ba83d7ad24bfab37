from ntclass.evaluate.metrics import compare_runs
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
p = sm.params
run_job(
    sm.log[0],
    lambda: compare_runs(sm.input.metrics, p.runs, p.classes, sm.output.csv, sm.output.html),
)
