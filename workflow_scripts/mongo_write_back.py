from ntclass.sources.kinds import source_of
from ntclass.sources.mongo import WriteBack, write_back
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
p = sm.params
run_job(
    sm.log[0],
    lambda: write_back(sm.input.predictions,
                       source_of(p.target, f"targets.{p.target_name}").connection(),
                       WriteBack.from_section(p.target), p.target_name, p.model, p.classes,
                       sm.output.receipt),
)
