from ntclass.predict.targets import write_target
from ntclass.settings import Partition
from ntclass.sources.kinds import target_of
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
p = sm.params
manifest = getattr(sm.input, "manifest", None)  # split targets only
run_job(
    sm.log[0],
    lambda: write_target(manifest, target_of(p.target, f"targets.{p.target_name}"),
                         p.classes, p.voxel_size,
                         Partition.from_config({**p.partition, **p.reading}, "prediction"),
                         sm.output.synapses),
)
