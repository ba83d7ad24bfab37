"""What made a result: the model and its checkpoint digest, the config digest, the neuron
rule, its thresholds and the calibration. The same record goes into the report and
metrics.json, the Parquet tables' schema metadata (key `ntclass`) and the annotation
layer's `info`, so that whoever has only one of them can tell what made it."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PARQUET_KEY = b"ntclass"


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, in hex, read in pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 24), b""):
            h.update(piece)
    return h.hexdigest()


def config_sha256(config: Mapping[str, Any]) -> str:
    """The sha256 of a config as canonical JSON (keys sorted): the same for the same values,
    whatever their order in the file."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def prediction_provenance(*, model: str, model_path: str | os.PathLike,
                          classes: Sequence[str], settings: Mapping[str, Any],
                          config_digest: str | None) -> dict:
    """What a prediction table's probabilities come from."""
    from ntclass import __version__

    return {"ntclass": __version__, "model": model,
            "checkpoint_sha256": file_sha256(model_path), "classes": list(classes),
            "prediction": {**dict(settings), "config_sha256": config_digest}}


def with_provenance(schema: pa.Schema, provenance: Mapping[str, Any] | None) -> pa.Schema:
    """`schema` with `provenance` as JSON under the metadata key `ntclass` (the other keys,
    such as pandas', kept)."""
    if not provenance:
        return schema
    return schema.with_metadata({**(schema.metadata or {}),
                                 PARQUET_KEY: json.dumps(provenance, sort_keys=True)})


def table_provenance(path: str | os.PathLike) -> dict | None:
    """The provenance a Parquet table carries (None: a table of another tool, or a CSV)."""
    if not str(path).endswith(".parquet") or not Path(path).is_file():
        return None
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata[PARQUET_KEY]) if PARQUET_KEY in metadata else None


def provenance_lines(provenance: Mapping[str, Any]) -> list[str]:
    """The provenance as report lines."""
    prediction = provenance.get("prediction") or {}
    evaluation = provenance.get("evaluation") or {}
    model = provenance.get("model") or "unknown (a table of another tool)"
    lines = ["Provenance",
             f"  model              {model}",
             f"  checkpoint sha256  {provenance.get('checkpoint_sha256') or 'unknown'}",
             f"  ntclass            {provenance.get('ntclass') or 'unknown'}"]
    if prediction:
        settings = ", ".join(f"{k} {v}" for k, v in prediction.items() if k != "config_sha256")
        lines += [f"  prediction         {settings}",
                  f"  config sha256      {prediction.get('config_sha256') or 'unknown'} "
                  "(of the prediction)"]
    if evaluation:
        temperature = evaluation.get("temperature")
        lines += [f"  neuron rule        {evaluation['neuron_rule']}, min_synapses "
                  f"{evaluation['min_synapses']}, min_confidence "
                  f"{evaluation['min_confidence']}",
                  "  calibration        " + (
                      f"temperature {temperature:.4f} fitted on "
                      f"'{evaluation.get('temperature_fitted_on')}'" if temperature is not None
                      else "none (the model's own probabilities)")]
        abstention = evaluation.get("abstention")
        if abstention:
            threshold = abstention["threshold"]
            lines.append(f"  abstention         precision {abstention['precision']} on "
                         f"'{abstention['fitted_on']}': " + (
                             f"unclear below confidence {threshold:.4f}"
                             if threshold is not None else
                             "every neuron unclear (no threshold reached the precision)"))
        lines.append(f"  config sha256      {evaluation.get('config_sha256') or 'unknown'} "
                     "(of the evaluation)")
    return lines
