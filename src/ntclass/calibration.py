"""Calibration: reliability bins, expected calibration error, temperature."""

from __future__ import annotations

import numpy as np


def reliability(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> dict:
    """Equal-width confidence bins: mean confidence, accuracy and count per bin, and the
    expected calibration error (count-weighted mean |accuracy - confidence|)."""
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    edges = np.linspace(0, 1, n_bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    bins = []
    ece = 0.0
    for b in range(n_bins):
        mask = index == b
        n = int(mask.sum())
        if n:
            conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
            ece += n / len(confidence) * abs(acc - conf)
        else:
            conf = acc = None
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": n,
                     "confidence": conf, "accuracy": acc})
    return {"ece": float(ece) if len(confidence) else None, "bins": bins}
