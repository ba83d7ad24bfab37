from ntclass.predict.targets import write_target
from ntclass.settings import Partition
from ntclass.sources.kinds import target_of
from ntclass.workflow import files_from_inputs, run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
p = sm.params
manifest = getattr(sm.input, "manifest", None)  # split targets only
# how the work is cut arrives as resources (outside Snakemake's rerun triggers)
reading = {"read_batch_rows": sm.resources.read_batch_rows}
run_job(
    sm.log[0],
    lambda: write_target(manifest,
                         target_of(files_from_inputs(p.target, sm.input),
                                   f"targets.{p.target_name}"),
                         p.classes, p.voxel_size,
                         Partition.from_config({**p.partition, **reading}, "prediction"),
                         sm.output.synapses),
)
