from ntclass.evaluate.plots import training_figure
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
run_job(
    sm.log[0],
    lambda: training_figure(sm.input.losses, sm.input.validation, sm.params.title,
                            sm.output.png),
)
