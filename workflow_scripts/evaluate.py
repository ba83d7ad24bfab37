from ntclass.evaluate import evaluate_predictions
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
p, out = sm.params, sm.output
run_job(
    sm.log[0],
    lambda: evaluate_predictions(sm.input.predictions, p.classes, p.evaluation, p.title,
                                 out.metrics, out.report, out.neurons, out.edges,
                                 out.confusion, out.calibration,
                                 getattr(sm.input, "temperature", None)),
)
