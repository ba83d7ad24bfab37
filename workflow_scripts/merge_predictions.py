from ntclass.predict.results import merge_target
from ntclass.provenance import config_sha256, prediction_provenance
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
p = sm.params
run_job(
    sm.log[0],
    lambda: merge_target(
        sm.input.shards, sm.input.synapses, sm.output.parquet,
        prediction_provenance(model=p.model, model_path=sm.input.model, classes=p.classes,
                              settings=p.prediction, config_digest=config_sha256(sm.config))),
)
