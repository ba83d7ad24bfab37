"""Each setting is declared once (settings.py): the schema, the rerun trigger (params or
resources) and the prediction cache's key all follow from the declaration."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import jsonschema
import pytest
import yaml

from ntclass import schemagen, settings
from ntclass.predict.shard import PredictConfig
from ntclass.schema import SCHEMA_PATH, filling_defaults, with_defaults
from ntclass.settings import (
    WORK,
    Evaluation,
    Partition,
    Prediction,
    Split,
    TrainConfig,
    Training,
    result_settings,
    setting,
    work_keys,
    work_settings,
)
from ntclass.split.assign import SplitOptions


def test_the_committed_schema_is_the_generated_one():
    """config.schema.yaml is what `python -m ntclass.schemagen --write` writes."""
    with open(SCHEMA_PATH) as f:
        assert f.read() == schemagen.generated_text(), (
            "run: python -m ntclass.schemagen --write")
    assert schemagen.main(["--check"]) == 0


@dataclass(frozen=True)
class PredictionWithNewKeys(Prediction):
    """What adding two keys to the prediction section takes: their declarations, here."""

    prefetch_blocks: int = setting(2, "blocks read ahead of the model", effect=WORK,
                                   minimum=1)
    test_time_flips: bool = setting(False, "average the predictions of mirrored cubes")


@pytest.fixture
def with_new_keys(monkeypatch):
    monkeypatch.setattr(settings, "Prediction", PredictionWithNewKeys)
    return schemagen.generated_schema()


def fill(schema: dict, config: dict) -> dict:
    filled = copy.deepcopy(config)
    errors = list(filling_defaults(jsonschema.Draft202012Validator)(schema).iter_errors(
        filled))
    assert not errors, errors[0].message
    return filled


def test_a_new_key_reaches_the_schema_with_its_type_default_meaning_and_bounds(with_new_keys):
    keys = with_new_keys["properties"]["prediction"]["properties"]
    assert keys["prefetch_blocks"] == {"type": "integer", "minimum": 1, "default": 2,
                                       "description": "blocks read ahead of the model"}
    assert keys["test_time_flips"]["type"] == "boolean"
    config = {"classes": ["a", "b"], "models": {"m": {"architecture": "vgg3d"}}}
    assert fill(with_new_keys, config)["prediction"]["prefetch_blocks"] == 2
    bad = {**config, "prediction": {"prefetch_blocks": 0}}
    assert list(jsonschema.Draft202012Validator(with_new_keys).iter_errors(bad))


def test_a_new_key_goes_to_params_or_resources_by_its_effect(with_new_keys):
    section = fill(with_new_keys, {"classes": ["a", "b"],
                                   "models": {"m": {"architecture": "vgg3d"}}})["prediction"]
    params = result_settings(PredictionWithNewKeys, section)
    resources = work_settings(PredictionWithNewKeys, section)
    assert params == {"device": "auto", "mixed_precision": True, "test_time_flips": False}
    assert resources == {"rows_per_block": 1024, "batch_size": 64, "workers": 1,
                         "jpeg_decoder": "auto", "prefetch_blocks": 2}
    built = PredictionWithNewKeys.from_job(params, resources, "prediction")
    assert built.prefetch_blocks == 2
    # the prediction cache's key holds the RESULT keys, never the WORK ones
    key = PredictConfig(("a", "b"), None, None, built).result_key()
    assert key["test_time_flips"] is False and "prefetch_blocks" not in key
    assert "rows_per_block" not in key


def test_the_rerun_trigger_follows_the_declared_effects():
    section = {"shards": 3, "synapses_per_shard": 10, "block_size": [1, 2, 3],
               "read_batch_rows": 5}
    # synapses_per_shard counts only when the number of shards follows from it
    assert result_settings(Partition, section) == {"shards": 3, "synapses_per_shard": None,
                                                   "block_size": [1, 2, 3]}
    assert result_settings(Partition, {**section, "shards": "auto"})["synapses_per_shard"] == 10
    assert work_settings(Partition, section) == {"read_batch_rows": 5}
    evaluation = yaml.safe_load(schemagen.generated_text())  # the defaults of evaluation
    filled = fill(evaluation, {"classes": ["a", "b"], "models": {"m": {"architecture": "v"}}})
    params = result_settings(Evaluation, filled["evaluation"])
    assert params["abstention"] is None  # off: its fit_on counts for nothing
    assert set(params) == {"neuron_rule", "min_synapses", "min_confidence", "group_by",
                           "neuron_table", "empty_cubes", "abstention", "signs"}


def test_defaults_in_code_are_the_declared_ones():
    assert SplitOptions().node_limit == Split.default("node_limit") == 20000
    assert SplitOptions().mip_gap == Split.default("mip_gap")
    assert Prediction().jpeg_decoder == Prediction.default("jpeg_decoder") == "auto"


def test_a_training_work_setting_neither_retrains_nor_starts_another_run(tmp_path):
    """save_every, log_every and cache_raw_mb reach the job as resources and stay out of
    the run folder's digest; a RESULT setting changes both params and digest."""
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("synapse_id\n1\n")
    model = {"architecture": "vgg3d", "model_params": {}, "classes": ("a", "b"),
             "voxel_size": None, "intensity_range": None}
    base = TrainConfig.from_config({**model, "iterations": 10})
    assert work_keys(Training) == ["save_every", "log_every", "cache_raw_mb"]
    section = with_defaults({"iterations": 10}, Training.schema, "training")
    params = result_settings(Training, section)
    assert not set(params) & set(work_keys(Training))
    work = {"save_every": 3, "log_every": 1, "cache_raw_mb": 0}
    built = TrainConfig.from_job({**model, **params}, work, "training")
    assert (built.save_every, built.cache_raw_mb) == (3, 0)
    assert built.digest(manifest) == base.digest(manifest)
    faster = TrainConfig.from_config({**model, "iterations": 10, "learning_rate": 0.01})
    assert faster.digest(manifest) != base.digest(manifest)
