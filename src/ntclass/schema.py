"""The config schema (shipped in the package): reading it, filling its defaults into a
section, and the one sentence that names a key and what was expected of it."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Mapping, Sequence

import jsonschema
import yaml

from ntclass.errors import NtclassError

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


def sentence(error: jsonschema.ValidationError) -> str:
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


def filling_defaults(validator_class):
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
    validator = filling_defaults(jsonschema.Draft202012Validator)({**sub,
                                                                    "$defs": schema["$defs"]})
    for error in validator.iter_errors(filled):
        path = [*where.split("."), *error.absolute_path]
        error.path.clear()
        error.path.extend(path)
        raise NtclassError(sentence(error))
    return filled
