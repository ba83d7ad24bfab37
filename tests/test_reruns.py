"""Exact reruns: a changed config value plans exactly the jobs whose outputs depend on it.

The shared finished project (two models, two targets, two shards each); each case changes one
value and compares the dry run's jobs with the expected ones. Where the target's checkpoint
job is planned, that job runs in a copy of the project and a second dry run shows the
shard jobs after it.
"""

from __future__ import annotations

import shutil

import pytest
from workflow_helpers import planned_jobs, snakemake, two_model_config, write_config

MODELS, TARGETS, SHARDS = 2, 2, 2
RUNS = MODELS * TARGETS


def downstream_of_predictions(runs: int = RUNS, shards: int = SHARDS) -> dict[str, int]:
    return {"predict_shard": runs * shards, "merge_predictions": runs,
            "prediction_csv": runs, "evaluate": runs, "compare": 1}


EVALUATION_ONLY = {"evaluate": RUNS, "compare": 1}
VIEW_ONLY = {"annotation_plan": RUNS, "neuroglancer": RUNS}
NOTHING: dict[str, int] = {}
# (key path, new value, planned by the dry run, planned once the target checkpoint ran)
CASES = [
    (("prediction", "shards"), 3, {"target_synapses": TARGETS, "merge_predictions": RUNS,
                                   "evaluate": RUNS, "compare": 1},
     downstream_of_predictions(shards=3)),
    (("prediction", "synapses_per_shard"), 5, NOTHING, None),
    (("prediction", "block_size"), [640, 1024, 1024],
     {"target_synapses": TARGETS, "merge_predictions": RUNS, "evaluate": RUNS,
      "compare": 1},
     downstream_of_predictions()),
    (("prediction", "rows_per_block"), 7, NOTHING, None),
    (("prediction", "read_batch_rows"), 11, NOTHING, None),
    (("resources", "predict", "threads"), 2, NOTHING, None),
    (("resources", "predict", "mem_mb"), 1234, NOTHING, None),
    (("prediction", "csv"), False, NOTHING, None),
    (("prediction", "csv_max_synapses"), 0, NOTHING, None),
    (("prediction", "batch_size"), 5, NOTHING, None),
    (("prediction", "workers"), 2, NOTHING, None),
    (("prediction", "jpeg_decoder"), "nvimgcodec", NOTHING, None),  # the same pixels
    (("prediction", "device"), "cpu", downstream_of_predictions(), None),
    (("prediction", "mixed_precision"), False, downstream_of_predictions(), None),
    (("evaluation", "neuron_rule"), "mean", EVALUATION_ONLY, None),
    (("evaluation", "min_synapses"), 2, EVALUATION_ONLY, None),
    (("evaluation", "min_confidence"), 0.5, EVALUATION_ONLY, None),
    (("evaluation", "signs"), {"acetylcholine": 1, "gaba": 1}, EVALUATION_ONLY, None),
    (("evaluation", "empty_cubes"), "keep", EVALUATION_ONLY, None),
    (("evaluation", "temperature_scaling"), {"enabled": True, "fit_on": "validation"},
     {"fit_temperature": MODELS, **EVALUATION_ONLY}, None),
    (("evaluation", "temperature_scaling"), {"enabled": False, "fit_on": "test"}, NOTHING,
     None),
    (("evaluation", "abstention"), {"precision": 0.9}, {"fit_abstention": MODELS,
                                                        **EVALUATION_ONLY}, None),
    (("evaluation", "abstention"), {"precision": None, "fit_on": "test"}, NOTHING, None),
    (("split", "seed"), 1,
     {"split": 1, "train": MODELS, "training_curves": MODELS, "target_synapses": TARGETS,
      "merge_predictions": RUNS, "evaluate": RUNS, "compare": 1},
     {"train": MODELS, "training_curves": MODELS, **downstream_of_predictions()}),
    (("view", "enabled"), True, VIEW_ONLY, None),
    (("training", "save_every"), 7, NOTHING, None),  # the training's WORK settings
    (("training", "log_every"), 3, NOTHING, None),
    # model b's own section (seed 1, as two_model_config gives it) with one more key
    (("models", "b", "training"), {"seed": 1, "cache_raw_mb": 0}, NOTHING, None),
    (("models", "b", "training"), {"seed": 1, "learning_rate": 0.002},
     {"train": 1, "training_curves": 1, **downstream_of_predictions(runs=TARGETS)}, None),
]


@pytest.fixture(scope="module")
def finished(two_model_run):
    assert planned_jobs(two_model_run) == {}
    return two_model_run


def changed_config(path: tuple, value) -> dict:
    config = two_model_config()
    section = config
    for key in path[:-1]:
        section = section.setdefault(key, {})
    section[path[-1]] = value
    return config


@pytest.mark.parametrize(("path", "value", "planned", "after_checkpoint"), CASES,
                         ids=[f"{'.'.join(c[0])}={c[1]}" for c in CASES])
def test_a_changed_value_plans_exactly_what_depends_on_it(finished, tmp_path, path, value,
                                                          planned, after_checkpoint):
    config = write_config(tmp_path, changed_config(path, value))
    jobs = planned_jobs(finished, config=config)
    expected = {**planned, "all": 1} if planned else {}
    assert jobs == expected
    if after_checkpoint is None:
        return
    project = tmp_path / "project"
    shutil.copytree(finished, project, symlinks=True)  # keeps mtimes: copy2
    targets = [f"results/targets/{t}" for t in ("test", "validation")]
    snakemake(project, *targets, config=config)
    assert planned_jobs(project, config=config) == {**after_checkpoint, "all": 1}
