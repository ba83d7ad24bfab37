"""Configuration checks that answer in one sentence naming the key and what was expected."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Mapping, Sequence

import jsonschema
import yaml

from ntclass.errors import NtclassError
from ntclass.settings import Evaluation

_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string",
               "boolean": "true or false", "array": "a list", "object": "a mapping",
               "null": "null"}


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _expected(error: jsonschema.ValidationError) -> str:
    v, schema = error.validator, error.schema
    if v == "type":
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return " or ".join(_TYPE_NAMES.get(t, t) for t in types)
    if v == "enum":
        return "one of " + ", ".join(str(e) for e in schema["enum"])
    if v in ("minimum", "exclusiveMinimum"):
        return f"a value {'>=' if v == 'minimum' else '>'} {schema[v]}"
    if v in ("maximum", "exclusiveMaximum"):
        return f"a value {'<=' if v == 'maximum' else '<'} {schema[v]}"
    if v in ("minItems", "maxItems"):
        n = schema.get("minItems"), schema.get("maxItems")
        return f"a list of {n[0]} items" if n[0] == n[1] else f"a list ({v} {schema[v]})"
    if v == "pattern":
        return f"text matching {schema['pattern']}"
    if v == "uniqueItems":
        return "no repeated entries"
    return error.message


def _sentence(error: jsonschema.ValidationError) -> str:
    where = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hint = f"; known keys are {', '.join(allowed)}" if allowed else ""
        prefix = f"'{where}.{extra[0]}'" if error.absolute_path else f"'{extra[0]}'"
        return f"config key {prefix} is unknown{hint}"
    if error.validator == "required":
        missing = [k for k in error.schema["required"] if k not in error.instance][0]
        full = f"{where}.{missing}" if error.absolute_path else missing
        return f"config key '{full}' is missing"
    if error.validator == "propertyNames":
        return f"config key '{where}' has a name not matching {error.schema['propertyNames']}"
    return (f"config key '{where}' is {error.instance!r}, expected {_expected(error)}")


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


def check_config(config: Mapping, schema_path: str | os.PathLike) -> None:
    """Raise NtclassError for the first problem of `config` against the schema."""
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
        raise NtclassError(_sentence(error))
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
    for error in _filling_defaults(jsonschema.Draft202012Validator)(sub).iter_errors(merged):
        path = ["models", model, "training", *error.absolute_path]
        error.path.clear()
        error.path.extend(path)
        raise NtclassError(_sentence(error))
    if merged["neither"]["enabled"] and "neither" not in config["classes"]:
        raise NtclassError(f"training.neither is enabled for model '{model}', but 'neither' "
                           "is not among classes; add it (in any position)")
    return merged


def _filling_defaults(validator_class):
    """A validator that also fills in the schema's defaults (jsonschema's FAQ recipe), so
    that a model's override of a whole section gets that section's defaults too."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


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


# shipped inside the package, so that an installed wheel finds it too
SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "config.schema.yaml")


@functools.cache
def _schema() -> dict:
    """The shipped schema, read once per process (never modified)."""
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def with_defaults(section: Mapping, schema_keys: Sequence[str], where: str) -> dict:
    """A copy of one config section, checked against its part of the schema (reached by
    `schema_keys` from the top) with the schema's defaults filled in; `where` names it."""
    schema = _schema()
    sub = schema
    for key in schema_keys:
        sub = sub[key]
    filled = copy.deepcopy(dict(section))
    validator = _filling_defaults(jsonschema.Draft202012Validator)({**sub,
                                                                    "$defs": schema["$defs"]})
    for error in validator.iter_errors(filled):
        path = [*where.split("."), *error.absolute_path]
        error.path.clear()
        error.path.extend(path)
        raise NtclassError(_sentence(error))
    return filled


def evaluation_settings(section: Mapping) -> Evaluation:
    """The evaluation section of a config with the schema's defaults filled in (temperature
    scaling apart: a fitted temperature is given as a file)."""
    settings = with_defaults(section, ("properties", "evaluation"), "evaluation")
    settings.pop("temperature_scaling")
    settings.pop("flywire_tables")  # an export of rule flywire_tables, not of the evaluation
    return Evaluation.from_config(settings, "evaluation")
