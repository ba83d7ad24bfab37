from ntclass.settings import Split
from ntclass.sources.kinds import source_of
from ntclass.split.assign import split_source
from ntclass.workflow import run_job

p, out = snakemake.params, snakemake.output  # noqa: F821 (provided by Snakemake)
run_job(
    snakemake.log[0],  # noqa: F821
    lambda: split_source(source_of(p.source), p.classes, p.voxel_size,
                         Split.from_config(p.split, "split"), out.manifest, out.summary),
)
