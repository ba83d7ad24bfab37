from ntclass.predict.shard import predict_target_shard
from ntclass.settings import Prediction
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
p = sm.params
# how the work is cut arrives as resources (outside Snakemake's rerun triggers)
work = {key: sm.resources[key]
        for key in ("rows_per_block", "batch_size", "workers", "jpeg_decoder")}
run_job(
    sm.log[0],
    lambda: predict_target_shard(
        model=sm.input.model, target_dir=sm.input.synapses, shard=p.shard, classes=p.classes,
        voxel_size=p.voxel_size, intensity_range=p.intensity_range,
        settings=Prediction.from_config({**p.prediction, **work}, "prediction"),
        work_base=p.work_dir, cache_base=p.cache_dir, out=sm.output.shard,
        supersedes=p.supersedes),
    threads=sm.threads,
)
