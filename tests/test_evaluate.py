import numpy as np
import pandas as pd
import pytest

from ntclass.evaluate import evaluate, neuron_calls

CLASSES = ["ach", "gaba", "glu"]


def predictions(rows):
    """rows: (pre_id, true nt, probabilities)"""
    df = pd.DataFrame({"synapse_id": np.arange(len(rows)),
                       "pre_id": pd.array([r[0] for r in rows], dtype="Int64"),
                       "nt": pd.array([r[1] for r in rows], dtype="string")})
    probs = np.array([r[2] for r in rows], dtype=float)
    for i, c in enumerate(CLASSES):
        df[c] = probs[:, i]
    df["predicted_nt"] = np.array(CLASSES)[probs.argmax(axis=1)]
    return df


# neuron 1: two of three synapses vote gaba, but the mean favours ach
HAND_MADE = predictions([
    (1, "gaba", [0.1, 0.5, 0.4]), (1, "gaba", [0.2, 0.45, 0.35]), (1, "gaba", [0.9, 0.05, 0.05]),
    (2, "glu", [0.1, 0.1, 0.8]), (2, "glu", [0.3, 0.2, 0.5]),
    (3, "ach", [0.6, 0.3, 0.1]),
])


def test_majority_vote_and_mean_rules():
    by_vote = neuron_calls(HAND_MADE, CLASSES, "majority").set_index("pre_id")
    assert by_vote.loc[1, "predicted_nt"] == "gaba"
    assert by_vote.loc[1, "confidence"] == pytest.approx(2 / 3)
    assert by_vote.loc[2, "predicted_nt"] == "glu" and by_vote.loc[2, "n_synapses"] == 2
    by_mean = neuron_calls(HAND_MADE, CLASSES, "mean").set_index("pre_id")
    assert by_mean.loc[1, "predicted_nt"] == "ach"
    assert by_mean.loc[1, "confidence"] == pytest.approx(1.2 / 3)
    assert by_mean.loc[1, "mean_gaba"] == pytest.approx(1.0 / 3)
    assert by_mean.loc[1, "nt"] == "gaba"


def test_unclear_below_minimum_synapses_or_confidence():
    calls = neuron_calls(HAND_MADE, CLASSES, "majority", min_synapses=2).set_index("pre_id")
    assert calls.loc[3, "predicted_nt"] == "unclear"
    calls = neuron_calls(HAND_MADE, CLASSES, "majority", min_confidence=0.9).set_index("pre_id")
    assert calls.loc[1, "predicted_nt"] == "unclear" and calls.loc[2, "predicted_nt"] == "glu"


def test_metrics_of_a_known_table():
    metrics, neurons = evaluate(HAND_MADE, CLASSES)
    syn = metrics["synapse"]
    assert syn["n"] == 6
    assert syn["accuracy"] == pytest.approx(5 / 6)
    assert syn["confusion_matrix"]["counts"] == [[1, 0, 0], [1, 2, 0], [0, 0, 2]]
    assert syn["per_class"]["ach"]["precision"] == pytest.approx(0.5)
    assert syn["per_class"]["gaba"]["recall"] == pytest.approx(2 / 3)
    assert syn["balanced_accuracy"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert metrics["neuron"]["accuracy"] == 1.0 and metrics["neuron"]["n"] == 3
    assert metrics["chance"] == pytest.approx(1 / 3)


def test_unlabelled_predictions_give_no_accuracy():
    table = HAND_MADE.assign(nt=pd.array([pd.NA] * len(HAND_MADE), dtype="string"))
    metrics, neurons = evaluate(table, CLASSES)
    assert metrics["synapse"]["n"] == 0 and metrics["synapse"]["accuracy"] is None
    assert len(neurons) == 3
