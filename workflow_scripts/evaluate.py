from ntclass.evaluate.metrics import EvaluationOutputs, evaluate_predictions
from ntclass.provenance import config_sha256
from ntclass.settings import Evaluation
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
p = sm.params
run_job(
    sm.log[0],
    lambda: evaluate_predictions(
        sm.input.predictions, classes=p.classes,
        settings=Evaluation.from_config(p.evaluation, "evaluation"), title=p.title,
        outputs=EvaluationOutputs.of(sm.output),
        temperature_path=getattr(sm.input, "temperature", None),
        target_dir=getattr(sm.input, "synapses", None),
        abstention_path=getattr(sm.input, "abstention", None),
        config_digest=config_sha256(sm.config)),
)
