# ntclass: neurotransmitter classification of synapses in EM volumes.
# Snakemake owns the DAG, file targets and hardware; the ntclass library owns the science.
import sys

from snakemake.utils import min_version, validate

from ntclass.config import (
    SCHEMA_PATH,
    check_config,
    check_models_and_sources,
    check_unique_keys,
    expand_paths,
)
from ntclass.errors import NtclassError
from ntclass.workflow import check_source_paths, check_temperature_scaling

min_version("9.0")


# The demo config unless the command line names config files: those replace it rather than
# merge into it, so a user's models never mix with the demo's.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# A bad config or input stops here with one sentence; Snakemake's validate() fills defaults.
try:
    check_unique_keys(workflow.configfiles)
    check_config(config, SCHEMA_PATH)
    validate(config, SCHEMA_PATH)
    expand_paths(config)
    check_models_and_sources(config)
    check_source_paths(config)
    check_temperature_scaling(config)
except NtclassError as error:
    sys.exit(f"ntclass: {error}")


include: "rules/common.smk"


report: "report/workflow.rst"


include: "rules/data.smk"
include: "rules/split.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/evaluate.smk"
include: "rules/view.smk"


rule all:
    default_target: True
    input:
        evaluation_targets(),
        view_targets(),
        flywire_targets(),
        "results/evaluation/comparison.csv",
        expand("results/models/{model}/training_curves.png", model=TRAINED),
        write_back_targets(),
        csv_targets,
