from ntclass.predict.results import merge_target
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
run_job(
    sm.log[0],
    lambda: merge_target(sm.input.shards, sm.input.synapses, sm.output.parquet),
)
