from ntclass.train.run import TrainConfig, train
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
run_job(
    sm.log[0],
    lambda: train(sm.input.manifest, TrainConfig(**sm.params.training), sm.output.model,
                  sm.output.last, sm.output.losses, sm.output.validation,
                  sm.params.checkpoints),
    threads=sm.threads,
)
