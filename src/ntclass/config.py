"""Configuration checks that answer in one sentence naming the key and what was expected."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence

import jsonschema
import yaml

from ntclass.errors import NtclassError
from ntclass.schema import SCHEMA_PATH, filling_defaults, sentence, with_defaults
from ntclass.settings import Evaluation, EvaluationRules, declared

__all__ = ["SCHEMA_PATH"]  # the workflow reads the schema's path from here

class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (plain YAML keeps the
    last one silently: a model defined twice would lose its first definition)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise NtclassError(
                    f"key '{key}' is given twice in config file '{self.name}' (lines "
                    f"{seen[key] + 1} and {key_node.start_mark.line + 1}); give each key once")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# the keys whose values are paths on this machine (or URLs, which are left as given)
SOURCE_PATH_KEYS = ("table", "raw_container", "directory")


def expand_paths(config: dict) -> None:
    """Expand `~` and environment variables in the configured paths, as a shell would, in
    place (so that every rule and script sees the same path)."""

    def expanded(value):
        if not isinstance(value, str) or "://" in value:
            return value
        return os.path.expanduser(os.path.expandvars(value))

    def expand(section: dict | None, keys: Sequence[str]) -> None:
        for key in keys:
            if isinstance(section, dict) and key in section:
                section[key] = expanded(section[key])

    sections = [config.get("source")] + list((config.get("targets") or {}).values())
    for section in sections:
        expand(section, SOURCE_PATH_KEYS)
    expand(config.get("split"), ["assignment"])
    expand(config.get("evaluation"), ["neuron_table"])
    trainings = [config.get("training")]
    for model in (config.get("models") or {}).values():
        expand(model, ["checkpoint"])
        trainings.append(model.get("training") if isinstance(model, dict) else None)
    for training in trainings:
        if isinstance(training, dict):
            expand(training.get("init_from"), ["checkpoint"])


def check_unique_keys(paths) -> None:
    """Refuse a config file in which some mapping repeats a key."""
    for path in paths:
        with open(path) as f:
            loader = _UniqueKeyLoader(f)
            loader.name = str(path)
            try:
                loader.get_single_data()
            finally:
                loader.dispose()


# keys of a shard job's needs, now under resources.predict like every step's
MOVED_TO_RESOURCES = ("threads", "mem_mb")


def check_config(config: Mapping, schema_path: str | os.PathLike) -> None:
    """Raise NtclassError for the first problem of `config` against the schema."""
    for key in MOVED_TO_RESOURCES:
        if key in (config.get("prediction") or {}):
            raise NtclassError(f"config key 'prediction.{key}' has moved to "
                               f"resources.predict.{key}, beside the other steps' resources")
    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.iter_errors(copy.deepcopy(dict(config))))
    if errors:
        # the deepest error names the most specific key; ties: the first reported
        error = max(errors, key=lambda e: len(e.absolute_path))
        for e in errors:
            if e.context:
                error = max(e.context, key=lambda c: len(c.absolute_path))
                break
        raise NtclassError(sentence(error))
    if "time_limit" in config.get("split", {}):
        raise NtclassError("config key 'split.time_limit' is replaced by split.node_limit: a "
                           "wall-clock limit gave different splits on different machines")


def model_training(config: Mapping, model: str, schema_path: str | os.PathLike) -> dict:
    """The training parameters of one model: the training section with its overrides."""
    overrides = config["models"][model].get("training", {})
    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    allowed = schema["properties"]["training"]["properties"]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise NtclassError(f"config key 'models.{model}.training.{unknown[0]}' is unknown; "
                           f"known keys are {', '.join(sorted(allowed))}")
    merged = {**copy.deepcopy(dict(config["training"])), **copy.deepcopy(dict(overrides))}
    sub = {**schema["properties"]["training"], "$defs": schema["$defs"]}
    for error in filling_defaults(jsonschema.Draft202012Validator)(sub).iter_errors(merged):
        path = ["models", model, "training", *error.absolute_path]
        error.path.clear()
        error.path.extend(path)
        raise NtclassError(sentence(error))
    if merged["neither"]["enabled"] and "neither" not in config["classes"]:
        raise NtclassError(f"training.neither is enabled for model '{model}', but 'neither' "
                           "is not among classes; add it (in any position)")
    return merged


def imported_models(config: Mapping) -> list[str]:
    """The models that come from a checkpoint rather than from training."""
    return [m for m, entry in config["models"].items() if "checkpoint" in entry]


def check_models_and_sources(config: Mapping) -> None:
    """A model is trained or comes from a checkpoint; a config without a labelled source
    (a predict-only run) has only checkpoint models and targets of their own sources."""
    for name, entry in config["models"].items():
        if "checkpoint" in entry and entry.get("training"):
            raise NtclassError(f"config key 'models.{name}.training' is given, but model "
                               f"'{name}' comes from a checkpoint and is not trained; to "
                               "fine-tune it, train a model with training.init_from")
        if "checkpoint" not in entry:
            for key in ("checkpoint_classes", "input_shape", "voxel_size", "crop"):
                if key in entry:
                    raise NtclassError(f"config key 'models.{name}.{key}' describes a "
                                       "checkpoint, but the model has no 'checkpoint'")
    if "source" in config:
        split = config.get("split", {})
        if "mongo_split" in split and config["source"]["type"] != "mongodb":
            raise NtclassError("split.mongo_split names a split stored in MongoDB, but "
                               f"source.type is '{config['source']['type']}'")
        return
    trained = [m for m in config["models"] if m not in imported_models(config)]
    if trained:
        raise NtclassError(f"config key 'source' is missing: model '{trained[0]}' is to be "
                           "trained, which needs a labelled source (or give it a checkpoint)")
    for name, target in config.get("targets", {}).items():
        if target["type"] == "split":
            raise NtclassError(f"target '{name}' is a part of the split, but there is no "
                               "source to split; give targets of their own (type table, "
                               "cremi or mongodb)")


def evaluation_settings(section: Mapping) -> Evaluation:
    """The evaluation section of a config with the schema's defaults filled in (temperature
    scaling apart: a fitted temperature is given as a file)."""
    settings = with_defaults(section, ("properties", "evaluation"), "evaluation")
    for rules_only in declared(EvaluationRules):
        settings.pop(rules_only.name)
    return Evaluation.from_config(settings, "evaluation")
