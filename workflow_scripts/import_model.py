from ntclass.models.checkpoints import import_model
from ntclass.settings import ImportedModel
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
p = sm.params
run_job(
    sm.log[0],
    lambda: import_model(sm.input.checkpoint,
                         ImportedModel.from_config(p.entry, f"models.{p.name}"), p.classes,
                         p.voxel_size, sm.output.model),
)
