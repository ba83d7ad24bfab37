from ntclass.predict.results import write_predictions_csv
from ntclass.workflow import run_job

sm = snakemake  # noqa: F821 (provided by Snakemake)
run_job(sm.log[0], lambda: write_predictions_csv(sm.input.parquet, sm.output.csv))
