"""Classification metrics from counts, and the synapse-level counts of a prediction table
taken a batch at a time: evaluation holds a confusion matrix and reliability bins, never
the labelled synapses themselves, so its memory does not grow with the target."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ntclass.errors import NtclassError
from ntclass.evaluate.calibration import apply_temperature, bin_sums, reliability_of

BATCH_ROWS = 1 << 17  # labelled synapses per batch: evaluation's memory for them


def confusion_metrics(counts: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support and the
    confusion matrix (scikit-learn's definitions, zero where undefined) of `counts`:
    rows the true classes, columns the predicted ones, and one last column for
    predictions outside the classes (such as 'unclear'), which count as wrong."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if n == 0:
        return {"n": 0, "accuracy": None, "balanced_accuracy": None, "per_class": {},
                "confusion_matrix": {"classes": list(classes), "counts": []}}
    square = counts[:, :len(classes)]
    right = np.diag(square).astype(float)
    support, predicted = counts.sum(axis=1), square.sum(axis=0)

    def share(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros(len(a)), where=b > 0)

    precision, recall = share(right, predicted), share(right, support)
    f1 = share(2 * right, support + predicted)
    present = support > 0
    normalised = np.divide(square, support[:, None], out=np.zeros(square.shape),
                           where=support[:, None] > 0)
    return {
        "n": n,
        "accuracy": float(right.sum() / n),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else None,
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]),
                          "f1": float(f1[i]), "support": int(support[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": {"classes": list(classes), "counts": square.tolist(),
                             "row_normalised": np.round(normalised, 6).tolist()},
    }


def class_indices(names: Iterable, classes: Sequence[str]) -> np.ndarray:
    """The index of each name in `classes`, len(classes) for any other (or none)."""
    found = pc.index_in(pa.array(names, pa.string()), value_set=pa.array(list(classes)))
    return found.fill_null(len(classes)).to_numpy(zero_copy_only=False).astype(np.int64)


def confusion_counts(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """The C x (C + 1) counts of `confusion_metrics` from class indices."""
    cells = np.bincount(truth * (n_classes + 1) + predicted,
                        minlength=n_classes * (n_classes + 1))
    return cells.reshape(n_classes, n_classes + 1)


def true_indices(names: Iterable, classes: Sequence[str]) -> np.ndarray:
    """`class_indices` of true classes, which must all be among the classes."""
    names = pa.array(names, pa.string())
    found = class_indices(names, classes)
    outside = np.flatnonzero(found == len(classes))
    if len(outside):
        raise NtclassError(f"true class {names[int(outside[0])].as_py()!r} is not one of "
                           f"the classes {list(classes)}")
    return found


def classification_metrics(truth: Sequence[str], predicted: Sequence[str],
                           classes: Sequence[str]) -> dict:
    """`confusion_metrics` of two sequences of class names (truth within the classes)."""
    return confusion_metrics(confusion_counts(true_indices(list(truth), classes),
                                              class_indices(list(predicted), classes),
                                              len(classes)), classes)


@dataclass
class SynapseTally:
    """The counts behind the synapse-level metrics, added a batch at a time: the
    confusion matrix and the reliability bins of each synapse's largest probability."""

    classes: Sequence[str]
    confusion: np.ndarray = field(init=False)
    bins: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        k = len(self.classes)
        self.confusion = np.zeros((k, k + 1), np.int64)
        self.bins = bin_sums(np.zeros(0), np.zeros(0))

    def add(self, truth: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray
            ) -> None:
        """Synapses by true and predicted class index (len(classes): another call) and
        their class probabilities (n x C)."""
        self.confusion += confusion_counts(truth, predicted, len(self.classes))
        self.bins += bin_sums(probabilities.max(axis=1, initial=0.0), truth == predicted)

    def metrics(self) -> dict:
        """`confusion_metrics` with the reliability bins and the expected calibration
        error."""
        out = confusion_metrics(self.confusion, self.classes)
        out["calibration"] = reliability_of(self.bins)
        out["ece"] = out["calibration"]["ece"]
        return out


def probabilities_of(batch: pa.RecordBatch | pa.Table, classes: Sequence[str]) -> np.ndarray:
    """The class probabilities of a batch of predictions (n x C, float64)."""
    return np.stack([np.asarray(batch.column(c), dtype=float) for c in classes], axis=1)


def tally_labelled(batches: Iterable[pa.RecordBatch], classes: Sequence[str],
                   temperature: float | None = None) -> tuple[SynapseTally, SynapseTally]:
    """The tally of the labelled synapses in `batches` (columns nt, predicted_nt and one
    per class), their probabilities temperature-scaled where a temperature is given,
    and the tally of their unscaled probabilities' own argmax (the ECE before scaling)."""
    scaled, raw = SynapseTally(classes), SynapseTally(classes)
    for batch in batches:
        truth = true_indices(batch.column("nt"), classes)
        probabilities = probabilities_of(batch, classes)
        raw.add(truth, probabilities.argmax(axis=1), probabilities)
        if temperature is not None:
            probabilities = apply_temperature(probabilities, temperature)
        scaled.add(truth, class_indices(batch.column("predicted_nt"), classes), probabilities)
    return scaled, raw
