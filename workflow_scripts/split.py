from ntclass.settings import Split
from ntclass.sources.kinds import source_of
from ntclass.split.assign import split_source
from ntclass.workflow import files_from_inputs, run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
p, out = sm.params, sm.output
run_job(
    sm.log[0],
    lambda: split_source(source_of(files_from_inputs(p.source, sm.input)), p.classes,
                         p.voxel_size, Split.from_config(p.split, "split"), out.manifest,
                         out.summary),
)
