from ntclass.evaluate.metrics import fit_abstention_file
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
p = sm.params
e = p.evaluation
run_job(
    sm.log[0],
    lambda: fit_abstention_file(
        sm.input.predictions, p.classes, precision=e["abstention"]["precision"],
        neuron_rule=e["neuron_rule"], min_synapses=e["min_synapses"],
        min_confidence=e["min_confidence"], leave_out_empty=e["empty_cubes"] == "leave_out",
        fitted_on=e["abstention"]["fit_on"], out_path=sm.output.abstention,
        temperature_path=getattr(sm.input, "temperature", None)),
)
