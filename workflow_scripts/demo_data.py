from ntclass.demo import DemoSpec, write_demo
from ntclass.workflow import run_job

p = snakemake.params  # noqa: F821 (provided by Snakemake)
spec = DemoSpec(
    classes=tuple(p.classes),
    shape=tuple(p.demo["shape"]),
    neurons_per_class=p.demo["neurons_per_class"],
    synapses_per_neuron=tuple(p.demo["synapses_per_neuron"]),
    hemilineages_per_class=p.demo["hemilineages_per_class"],
    seed=p.demo["seed"],
)
run_job(snakemake.log[0], lambda: write_demo(p.out_dir, spec))  # noqa: F821
