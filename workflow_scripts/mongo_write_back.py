from ntclass.sources.mongo import write_back
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
p = sm.params
run_job(
    sm.log[0],
    lambda: write_back(sm.input.predictions, p.target, p.target_name, p.model, p.classes,
                       sm.output.receipt),
)
