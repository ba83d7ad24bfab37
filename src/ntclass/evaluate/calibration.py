"""Calibration: reliability bins, expected calibration error, temperature scaling."""

from __future__ import annotations

import numpy as np


def bin_sums(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Per equal-width confidence bin: the count, the summed confidence and the number
    right (3 x n_bins); sums of batches add up to the sums of their union."""
    confidence = np.asarray(confidence, dtype=float)
    edges = np.linspace(0, 1, n_bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    return np.stack([np.bincount(index, minlength=n_bins).astype(float),
                     np.bincount(index, confidence, minlength=n_bins),
                     np.bincount(index, np.asarray(correct, dtype=float), minlength=n_bins)])


def reliability_of(sums: np.ndarray) -> dict:
    """Mean confidence, accuracy and count per bin of `bin_sums`, and the expected
    calibration error (count-weighted mean |accuracy - confidence|)."""
    counts, confidence, correct = np.asarray(sums, dtype=float)
    n_bins, total = len(counts), counts.sum()
    edges = np.linspace(0, 1, n_bins + 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        n = int(counts[b])
        if n:
            conf, acc = float(confidence[b] / n), float(correct[b] / n)
            ece += n / total * abs(acc - conf)
        else:
            conf = acc = None
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": n,
                     "confidence": conf, "accuracy": acc})
    return {"ece": float(ece) if total else None, "bins": bins}


def reliability(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> dict:
    """`reliability_of` the bins of these confidences and outcomes."""
    return reliability_of(bin_sums(confidence, correct, n_bins))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray) -> float | None:
    """ECE of class probabilities (N, C) against class indices: confidence is the largest
    probability, correct where its class is the label."""
    probabilities = np.asarray(probabilities, dtype=float)
    if not len(probabilities):
        return None
    return reliability(probabilities.max(axis=1), probabilities.argmax(axis=1) == labels)["ece"]


def _log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probabilities, dtype=float), 1e-12, None))


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of the logits divided by `temperature`: log-probabilities are the logits up
    to a constant per row, so the model's probabilities suffice. The argmax is unchanged."""
    scaled = _log_probabilities(probabilities) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    e = np.exp(scaled)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    p = np.asarray(probabilities, dtype=float)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of `labels` (class indices)
    (Guo et al. 2017), searched over log T in [ln 0.05, ln 20]."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, dtype=int)
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(
            apply_temperature(probabilities, np.exp(log_t)), labels),
        bounds=(np.log(0.05), np.log(20.0)), method="bounded",
        options={"xatol": 1e-5})
    return float(np.exp(result.x))
