from pathlib import Path

from ntclass.settings import View
from ntclass.view.annotation_jobs import read_plan
from ntclass.view.layers import ViewOutputs, write_view
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
p = sm.params
# a local raw is an input: read where Snakemake put it (under a module's prefix)
raw = [sm.input.raw, p.raw[1]] if "raw" in sm.input.keys() else p.raw
run_job(
    sm.log[0],
    lambda: write_view(
        sm.input.predictions, sm.input.neurons, ViewOutputs.of(sm.output),
        classes=p.classes, settings=View.from_config(p.view, "view"), raw=raw,
        voxel_size=p.voxel_size, name=p.name, model=p.model, target=p.target,
        metrics=sm.input.metrics,
        # each reduced shard's folder is .../shards/<index>/<shard>
        layer=(read_plan(sm.input.plan),
               [(int(Path(s).parent.name), s) for s in sm.input.shards])),
)
