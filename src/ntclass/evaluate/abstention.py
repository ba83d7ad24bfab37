"""Abstention: a neuron is called 'unclear' where its confidence is below a threshold fitted
on a labelled split part (usually validation), the lowest at which the calls there reach a
configured precision. The threshold raises `min_confidence`; it is not a second rule."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ntclass.errors import NtclassError

# DuckDB's parallel sums may differ in the last bits between runs: a neuron whose
# confidence is the threshold itself must not drop out when it is computed again
TIE = 1e-9


def abstention_threshold(confidence: np.ndarray, correct: np.ndarray, precision: float,
                         floor: float = 0.0) -> dict:
    """The lowest confidence threshold (at least `floor`) at which the neurons called (those
    at or above it) are right in at least `precision` of cases: the most coverage at that
    precision. threshold None: no threshold reaches it (nothing would be called)."""
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    total = len(confidence)
    keep = confidence >= floor
    order = np.argsort(-confidence[keep], kind="stable")
    values, right = confidence[keep][order], correct[keep][order]
    called = np.arange(1, len(values) + 1)
    # a threshold calls every neuron of its value or above: the last of each run of ties
    ends = np.flatnonzero(np.r_[values[1:] != values[:-1], True]) if len(values) else []
    shares = np.cumsum(right)[ends] / called[ends] if len(values) else np.zeros(0)
    reached = np.flatnonzero(shares >= precision)
    if not len(reached):
        return {"threshold": None, "neurons": total, "called": 0, "coverage": 0.0,
                "achieved_precision": None}
    best = ends[reached[-1]]
    return {"threshold": float(values[best]) - TIE, "neurons": total,
            "called": int(called[best]), "coverage": int(called[best]) / total,
            "achieved_precision": float(shares[reached[-1]])}


def read_abstention(path: str, neuron_rule: str, temperature: float | None) -> dict:
    """A fitted abstention record, refused where it was fitted under another neuron rule or
    temperature than the evaluation applies it under."""
    record = json.loads(Path(path).read_text())
    if record["neuron_rule"] != neuron_rule:
        raise NtclassError(f"abstention threshold '{path}' was fitted for neuron rule "
                           f"'{record['neuron_rule']}', but the evaluation uses "
                           f"'{neuron_rule}'; fit it again")
    fitted = record.get("temperature")
    if (fitted is None) != (temperature is None) or (
            fitted is not None and not math.isclose(fitted, temperature, rel_tol=1e-9)):
        raise NtclassError(f"abstention threshold '{path}' was fitted at temperature "
                           f"{fitted}, but the evaluation applies {temperature}; fit it again")
    return record


def applied_min_confidence(min_confidence: float, record: Mapping | None) -> float:
    """The confidence below which a neuron is unclear: min_confidence, raised by a fitted
    threshold (infinite where the precision was reached by none)."""
    if record is None:
        return min_confidence
    if record["threshold"] is None:
        return math.inf
    return max(min_confidence, record["threshold"])
