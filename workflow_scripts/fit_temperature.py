from ntclass.evaluate.metrics import fit_temperature_file
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
run_job(
    sm.log[0],
    lambda: fit_temperature_file(sm.input.predictions, sm.params.classes, sm.params.fit_on,
                                 sm.output.temperature),
)
