# Helpers only: paths, wildcard constraints, target lists.
import os
import re
import sys

from ntclass.config import SCHEMA_PATH, imported_models, model_training
from ntclass.errors import NtclassError
from ntclass.evaluate.flywire import flywire_codes
from ntclass.predict.targets import read_target_meta
from ntclass.settings import (
    Evaluation,
    Partition,
    Prediction,
    Training,
    result_settings,
    work_keys,
    work_settings,
)
from ntclass.sources.kinds import SplitPart
from ntclass.view.annotation_jobs import FIRST_SPATIAL, index_shards, read_plan
from ntclass.workflow import canonical, configured_sources, demo_outputs

# ntclass as a Snakemake module (`module ntclass: ... prefix: "nt"` or `replace_prefix:`):
# Snakemake moves the paths of inputs and outputs, and may put them in a remote storage.
# Nothing here knows where they end up: paths of ntclass's own files reach the jobs from
# their inputs and outputs (params functions over output, rules.<name>.output, the
# script's snakemake.input), never from a path built here.
DEMO_MADE = {os.path.normpath(path) for path in demo_outputs(config)}


def as_given(files):
    """Paths the config names as inputs. The lab's data stay where the lab put them
    (local(): relative to its working directory, which Snakemake would otherwise prefix);
    the demo's data are ntclass's own outputs, left to Snakemake to move with rule
    demo_data's."""
    return {
        role: path if os.path.normpath(path) in DEMO_MADE else local(path)
        for role, path in files.items()
    }


MODELS = list(config["models"])
IMPORTED = imported_models(config)  # from checkpoints
TRAINED = [m for m in MODELS if m not in IMPORTED]
TARGETS = list(config["targets"])
ENV = "../envs/workstation.yaml"  # used with --sdm conda
# A bad config stops here with one sentence, before any job.
try:
    # the labelled source (None when only predicting) and the targets, as objects
    SOURCE, TARGET = configured_sources(config)
    MODEL_TRAINING = {m: model_training(config, m, SCHEMA_PATH) for m in TRAINED}
    if config["evaluation"]["flywire_tables"]:
        flywire_codes(config["classes"])
except NtclassError as error:
    sys.exit(f"ntclass: {error}")


wildcard_constraints:
    model="|".join(re.escape(m) for m in MODELS),
    target="|".join(re.escape(t) for t in TARGETS),
    shard=r"\d+",


# keys of a target that only its MongoDB write-back reads
WRITE_BACK_KEYS = ("write_back", "synister_write_back")


def target_params(wildcards):
    """A target's section as its synapse list depends on it."""
    target = config["targets"][wildcards.target]
    return canonical({k: v for k, v in target.items() if k not in WRITE_BACK_KEYS})


def partition_params():
    """How a target is cut into shards and sorted (its RESULT settings: the WORK ones
    reach the job as resources)."""
    return result_settings(Partition, config["prediction"])


def prediction_params():
    """The prediction settings a probability depends on (the rest only cut the work)."""
    return result_settings(Prediction, config["prediction"])


def evaluation_params():
    """The evaluation settings of rule evaluate (a temperature and an abstention threshold
    arrive as files; the abstention settings count only when it is on)."""
    return canonical(result_settings(Evaluation, config["evaluation"]))


def abstention_params():
    """The evaluation settings an abstention threshold depends on."""
    return canonical(
        {
            k: config["evaluation"][k]
            for k in (
                "neuron_rule",
                "min_synapses",
                "min_confidence",
                "empty_cubes",
                "abstention",
            )
        }
    )


def abstention_enabled():
    return config["evaluation"]["abstention"]["precision"] is not None


def abstention_inputs(wildcards):
    """The predictions of the part an abstention threshold is fitted on, and the model's
    temperature when temperature scaling is on."""
    fit_on = config["evaluation"]["abstention"]["fit_on"]
    inputs = {
        "predictions": f"results/predictions/{wildcards.model}/{fit_on}/predictions.parquet"
    }
    if config["evaluation"]["temperature_scaling"]["enabled"]:
        inputs["temperature"] = f"results/models/{wildcards.model}/temperature.json"
    return inputs


def source_inputs(wildcards=None):
    """The synapse source's files, named, for rules that read the source."""
    return as_given(SOURCE.files()) if SOURCE is not None else {}


def split_inputs(wildcards=None):
    """A given split's file, when the split is neither computed nor stored in MongoDB."""
    split = config["split"]
    return (
        as_given({"assignment": split["assignment"]}) if "assignment" in split else {}
    )


def one_of(names):
    """A wildcard constraint matching exactly these names (nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def raw_inputs(wildcards=None):
    """The raw volume alone (prediction reads raw, the manifest lists the synapses)."""
    return {k: v for k, v in source_inputs().items() if k in ("raw", "cremi")}


def target_inputs(wildcards):
    """What a target's synapse list is made from: the manifest, or its own source."""
    target = TARGET[wildcards.target]
    if isinstance(target, SplitPart):
        return {"manifest": "results/split/manifest.csv"}
    return as_given(target.files())


def target_raw(wildcards):
    """The raw a target's cubes are read from."""
    target = TARGET[wildcards.target]
    files = raw_inputs() if isinstance(target, SplitPart) else as_given(target.files())
    return {k: v for k, v in files.items() if k in ("raw", "cremi")}


def target_intensity_range(wildcards):
    """The intensity range of a target's raw: a split part's is the source's."""
    split = isinstance(TARGET[wildcards.target], SplitPart)
    section = config["source"] if split else config["targets"][wildcards.target]
    return section.get("intensity_range")


def training_params(wildcards):
    """Everything a model depends on (its RESULT settings): a change retrains only it."""
    model = config["models"][wildcards.model]
    return canonical(
        {
            "architecture": model["architecture"],
            "model_params": model.get("params", {}),
            "classes": config["classes"],
            "voxel_size": config.get("voxel_size"),
            "intensity_range": config["source"].get("intensity_range"),
            **result_settings(Training, MODEL_TRAINING[wildcards.model]),
        }
    )


def training_resources():
    """A training's WORK settings, per model, as resources (Snakemake's rerun triggers
    leave them out)."""

    def of_model(key):
        return lambda wildcards: MODEL_TRAINING[wildcards.model][key]

    return {key: of_model(key) for key in work_keys(Training)}


def init_checkpoint(wildcards):
    """The checkpoint a fine-tuned model starts from: an input, so that a new one retrains."""
    init = MODEL_TRAINING[wildcards.model].get("init_from")
    return as_given({"init_from": init["checkpoint"]}) if init else {}


def fetched(output):
    """A checkpoint's output, here: in a remote storage its open() (Snakemake's documented
    way) has Snakemake fetch it and call the asking function again."""
    if not os.path.exists(output):
        with output.open():
            pass
    return output


def target_meta(target):
    """Counts of a partitioned target (known once its checkpoint job has run)."""
    synapses = checkpoints.target_synapses.get(target=target).output.synapses
    return read_target_meta(fetched(synapses))


def shard_paths(wildcards):
    return expand(
        "results/predictions/{model}/{target}/shards/{shard}.parquet",
        model=wildcards.model,
        target=wildcards.target,
        shard=range(target_meta(wildcards.target)["shards"]),
    )


def csv_targets(wildcards=None):
    """The prediction CSVs to write: every target's, or those of targets up to
    prediction.csv_max_synapses synapses (csv: auto)."""
    wanted = config["prediction"]["csv"]
    if wanted is False:
        return []
    limit = config["prediction"]["csv_max_synapses"]
    return [
        f"results/predictions/{m}/{t}/predictions.csv"
        for m in MODELS
        for t in TARGETS
        if wanted is True or target_meta(t)["synapses"] <= limit
    ]


def evaluation_inputs(wildcards):
    """A model's predictions, and its fitted temperature when temperature scaling is on."""
    inputs = {
        "predictions": f"results/predictions/{wildcards.model}/{wildcards.target}/predictions.parquet"
    }
    if config["evaluation"]["temperature_scaling"]["enabled"]:
        inputs["temperature"] = f"results/models/{wildcards.model}/temperature.json"
    if abstention_enabled():
        inputs["abstention"] = f"results/models/{wildcards.model}/abstention.json"
    if config["evaluation"]["group_by"]:
        inputs["synapses"] = f"results/targets/{wildcards.target}"
    if config["evaluation"].get("neuron_table"):
        inputs["neuron_table"] = local(config["evaluation"]["neuron_table"])
    return inputs


SUPERSEDED_EVALUATION = (
    "metrics",
    "report",
    "neurons",
    "inputs",
    "edges",
    "confusion",
    "calibration",
)


def superseded_outputs(wildcards):
    """The outputs made from a model's predictions of a target (see rule predict_shard),
    where Snakemake puts them (under a default storage: the job's local copies)."""
    made = [
        rules.merge_predictions.output.parquet,
        rules.prediction_csv.output.csv,
        rules.mongo_write_back.output.receipt,
    ] + [rules.evaluate.output[name] for name in SUPERSEDED_EVALUATION]
    # plain paths: expand() refuses the storage flag a default storage puts on them
    return expand(
        [str(path) for path in made], model=wildcards.model, target=wildcards.target
    )


def prediction_folder(output):
    """The folder of a model's predictions of a target, from a shard's output path."""
    return os.path.dirname(os.path.dirname(output.shard))


def evaluation_targets():
    return expand(
        "results/evaluation/{model}/{target}/metrics.json", model=MODELS, target=TARGETS
    )


def write_back_targets():
    """Receipts of the MongoDB targets whose predictions go back into the database."""
    chosen = [
        t
        for t, target in config["targets"].items()
        if target.get("write_back")
        or target.get("synister_write_back", {}).get("enabled")
    ]
    return expand(
        "results/predictions/{model}/{target}/mongo_write_back.json",
        model=MODELS,
        target=chosen,
    )


def view_raw(wildcards):
    """The one raw volume of a target as [container, dataset] (None: CREMI crops)."""
    target = TARGET[wildcards.target]
    described = SOURCE if isinstance(target, SplitPart) else target
    raw_container = getattr(described, "raw_container", None)
    return [raw_container, described.raw_dataset] if raw_container else None


def view_raw_input(wildcards):
    """A target's raw when it is a local file: an input, so that the view's script finds
    it where Snakemake put it (the demo's under a module's prefix)."""
    return {k: v for k, v in target_raw(wildcards).items() if k == "raw"}


def flywire_targets():
    """FlyWire-style tables of every model and target, when asked for."""
    if not config["evaluation"]["flywire_tables"]:
        return []
    return expand(
        "results/evaluation/{model}/{target}/flywire_neurons.csv",
        model=MODELS,
        target=TARGETS,
    )


def view_targets():
    """The states of every model and target, when the views are enabled."""
    if not config["view"]["enabled"]:
        return []
    return expand(
        "results/view/{model}/{target}/state.json", model=MODELS, target=TARGETS
    )


# The annotation layer's jobs (rules/view.smk): a plan, map and reduce jobs.
JOBS = "results/view/{model}/{target}/annotation_jobs"


def annotation_plan(wildcards):
    """The plan of a model and target's annotation layer (known once its checkpoint ran)."""
    plan = checkpoints.annotation_plan.get(
        model=wildcards.model, target=wildcards.target
    ).output.plan
    return read_plan(fetched(plan))


def annotation_parts(wildcards):
    return expand(
        f"{JOBS}/parts/{{part}}.parquet",
        model=wildcards.model,
        target=wildcards.target,
        part=range(len(annotation_plan(wildcards)["parts"])),
    )


def annotation_overflow_in(wildcards):
    """What the cells of the level above overflow into this spatial level's shards."""
    index = int(wildcards.index)
    if index <= FIRST_SPATIAL:
        return []
    jobs = index_shards(annotation_plan(wildcards))
    return [
        f"{JOBS}/overflow/{index - 1}/{shard}.parquet".format(
            model=wildcards.model, target=wildcards.target
        )
        for i, shard in jobs
        if i == index - 1
    ]


def annotation_shards(wildcards):
    return [
        f"{JOBS}/shards/{index}/{shard}".format(
            model=wildcards.model, target=wildcards.target
        )
        for index, shard in index_shards(annotation_plan(wildcards))
    ]
