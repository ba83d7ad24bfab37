from ntclass.evaluate.flywire import write_flywire_tables
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
run_job(
    sm.log[0],
    lambda: write_flywire_tables(sm.input.predictions, sm.input.neurons,
                                 {"neurons": sm.output.neurons,
                                  "synapses": sm.output.synapses},
                                 classes=sm.params.classes, metrics=sm.input.metrics),
)
