"""Figures of an evaluation: confusion matrices and the reliability diagram (PNG)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ntclass.io import atomic_path  # noqa: E402


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def _heatmap(ax, matrix: np.ndarray, classes: Sequence[str], title: str, fmt: str) -> None:
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(float(matrix.max()), 1e-9))
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = matrix.max() if matrix.size else 0
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=8,
                color="white" if top and v > 0.6 * top else "black")


def confusion_figure(counts: Sequence[Sequence[int]], classes: Sequence[str], title: str,
                     path: str | os.PathLike) -> None:
    """Counts and row-normalised (recall per true class), side by side."""
    counts = np.asarray(counts, dtype=float).reshape(len(classes), len(classes))
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig, axes = plt.subplots(1, 2, figsize=(2 + 1.4 * len(classes), 0.8 + 0.7 * len(classes)))
    _heatmap(axes[0], counts.astype(int), classes, f"{title}: counts", "d")
    _heatmap(axes[1], normalised, classes, f"{title}: row-normalised", ".2f")
    fig.tight_layout()
    _save(fig, path)


def reliability_figure(calibration: dict, title: str, path: str | os.PathLike) -> None:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    bins = [b for b in calibration["bins"] if b["n"]]
    if bins:
        ax.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["accuracy"] for b in bins],
               width=[b["high"] - b["low"] for b in bins], edgecolor="black", alpha=0.7,
               label="accuracy per bin")
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-",
                color="darkred", label="mean confidence")
    ece = calibration["ece"]
    ax.set_title(f"{title}\nECE {ece:.3f}" if ece is not None else title)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def training_figure(losses_csv: str, validation_csv: str, title: str,
                    path: str | os.PathLike) -> None:
    """Training loss (raw and running mean) and validation loss and accuracy."""
    import pandas as pd

    losses = pd.read_csv(losses_csv)
    validation = pd.read_csv(validation_csv)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(losses["iteration"], losses["loss"], color="tab:blue", alpha=0.25, lw=0.8)
    window = max(1, len(losses) // 50)
    left.plot(losses["iteration"], losses["loss"].rolling(window, min_periods=1).mean(),
              color="tab:blue", label="training (running mean)")
    if len(validation):
        left.plot(validation["iteration"], validation["loss"], "o-", color="tab:orange",
                  label="validation")
        right.plot(validation["iteration"], validation["accuracy"], "o-", color="tab:green")
    left.set_xlabel("iteration")
    left.set_ylabel("loss")
    left.legend(fontsize=8)
    right.set_xlabel("iteration")
    right.set_ylabel("validation accuracy")
    right.set_ylim(0, 1)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
