from ntclass.predict import predict_target_shard
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
p = sm.params
run_job(
    sm.log[0],
    lambda: predict_target_shard(sm.input.model, sm.input.synapses, p.shard, p.classes,
                                 p.voxel_size, p.intensity_range, p.prediction, p.work_dir,
                                 p.cache_dir, sm.output.shard),
    threads=sm.threads,
)
