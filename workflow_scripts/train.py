from ntclass.train.run import TrainConfig, TrainOutputs, train
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
run_job(
    sm.log[0],
    lambda: train(
        sm.input.manifest,
        # the WORK settings (checkpoint and log intervals, the raw cache) come as resources
        TrainConfig.from_job(sm.params.training, sm.resources, "training"),
        TrainOutputs.of(sm.output),
        sm.params.checkpoints,
    ),
    threads=sm.threads,
)
