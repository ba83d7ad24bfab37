import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ntclass.evaluate.calibration import reliability
from ntclass.evaluate.metrics import evaluate, neuron_calls

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


def test_row_normalised_confusion_is_recall_per_true_class():
    metrics, _ = evaluate(HAND_MADE, CLASSES)
    rows = metrics["synapse"]["confusion_matrix"]["row_normalised"]
    assert rows[1] == pytest.approx([1 / 3, 2 / 3, 0])
    assert [rows[i][i] for i in range(3)] == pytest.approx(
        [metrics["synapse"]["per_class"][c]["recall"] for c in CLASSES])


def test_expected_calibration_error():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.3, 1.0, 200_000)
    calibrated = rng.uniform(0, 1, confidence.size) < confidence  # right with p = confidence
    assert reliability(confidence, calibrated)["ece"] < 0.01
    overconfident = rng.uniform(0, 1, confidence.size) < confidence - 0.2
    assert reliability(confidence, overconfident)["ece"] == pytest.approx(0.2, abs=0.01)
    # two hand-computed bins: 0.95 confident, half right -> |0.5 - 0.95| on half the data
    bins = reliability(np.array([0.95, 0.95, 0.15, 0.15]), np.array([1, 0, 0, 0]))
    assert bins["ece"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.15)
    assert [b["n"] for b in bins["bins"]] == [0, 2, 0, 0, 0, 0, 0, 0, 0, 2]


def test_synapse_metrics_counted_in_batches_match_scikit_learn_on_the_whole_table(tmp_path):
    """Evaluation counts the labelled synapses a batch at a time (its memory bound): any
    batch size gives scikit-learn's metrics of the whole table and the same reliability
    bins, with 'unclear' predictions counted as wrong."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    from ntclass.evaluate.outofcore import connect, labelled_batches
    from ntclass.evaluate.tally import tally_labelled

    rng = np.random.default_rng(5)
    n = 5_000
    probs = rng.dirichlet(np.ones(len(CLASSES)) * 0.7, n)
    table = predictions([(i % 97, CLASSES[t], p) for i, (t, p) in enumerate(
        zip(rng.choice([0, 0, 1, 2], n), probs))])
    table.loc[rng.choice(n, 50, replace=False), "predicted_nt"] = "unclear"
    table.loc[rng.choice(n, 300, replace=False), "nt"] = pd.NA
    labelled = table[table["nt"].notna()]
    truth, predicted = labelled["nt"].astype(str), labelled["predicted_nt"]
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=CLASSES, zero_division=0)
    correct = (truth == predicted).to_numpy()
    whole = reliability(labelled[CLASSES].to_numpy().max(axis=1), correct)
    results = []
    for rows in (n, 333, 7):
        con = connect(table, tmp_path / str(rows))
        tally, _ = tally_labelled(labelled_batches(con, CLASSES, rows), CLASSES)
        con.close()
        results.append(tally.metrics())
    for m in results:
        assert m["n"] == len(labelled)
        assert m["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-15)
        assert m["balanced_accuracy"] == pytest.approx(
            balanced_accuracy_score(truth, predicted), abs=1e-15)
        for i, c in enumerate(CLASSES):
            assert m["per_class"][c] == pytest.approx(
                {"precision": precision[i], "recall": recall[i], "f1": f1[i],
                 "support": support[i]}, abs=1e-15)
        assert m["confusion_matrix"]["counts"] == confusion_matrix(
            truth, predicted, labels=CLASSES).tolist()
        assert [b["n"] for b in m["calibration"]["bins"]] == [
            b["n"] for b in whole["bins"]]
        assert m["ece"] == pytest.approx(whole["ece"], abs=1e-12)


def test_signed_edges_follow_the_presynaptic_neurons_call(tmp_path):
    from ntclass.evaluate.circuit import FLY_SIGNS, write_signed_edges
    from ntclass.evaluate.outofcore import connect
    table = predictions([
        (1, "acetylcholine", [0.9, 0.05, 0.05]), (1, "acetylcholine", [0.8, 0.1, 0.1]),
        (2, "gaba", [0.1, 0.8, 0.1]), (3, "serotonin", [0.1, 0.1, 0.8]),
        (4, None, [0.4, 0.3, 0.3]),
    ])
    classes = ["acetylcholine", "gaba", "serotonin"]
    table = table.rename(columns=dict(zip(CLASSES, classes)))
    table["predicted_nt"] = np.array(classes)[table[classes].to_numpy().argmax(axis=1)]
    table["post_id"] = pd.array([2, 2, 3, 1, 1], dtype="Int64")
    neurons = neuron_calls(table, classes, "mean", min_confidence=0.5)
    con = connect(table, tmp_path)
    write_signed_edges(con, neurons, FLY_SIGNS, str(tmp_path / "edges.csv"))
    edges = pd.read_csv(tmp_path / "edges.csv").set_index(["pre_id", "post_id"])
    assert edges.loc[(1, 2), "n_synapses"] == 2 and edges.loc[(1, 2), "sign"] == 1
    assert edges.loc[(2, 3), "pre_nt"] == "gaba" and edges.loc[(2, 3), "sign"] == -1
    assert edges.loc[(3, 1), "sign"] == 0  # serotonin: modulatory
    # neuron 4's only synapse is 0.4 confident: 'unclear', so its edge has no sign
    assert edges.loc[(4, 1), "pre_nt"] == "unclear" and edges.loc[(4, 1), "sign"] == 0
    assert len(edges) == 4


def test_comparison_table_has_one_row_per_run():
    from ntclass.evaluate.metrics import comparison_table
    metrics, _ = evaluate(HAND_MADE, CLASSES)
    table = comparison_table([metrics, metrics], [{"model": "a", "target": "test"},
                                                  {"model": "b", "target": "test"}], CLASSES)
    assert list(table["model"]) == ["a", "b"]
    assert table["accuracy"].iloc[0] == pytest.approx(5 / 6)
    assert table["neuron_accuracy"].iloc[1] == 1.0 and table["coverage"].iloc[1] == 1.0
    assert table["f1_glu"].iloc[0] == pytest.approx(1.0)
    assert table["ece"].notna().all()


def overconfident_predictions(n=4000, sharpen=3.0, seed=0):
    """Labels drawn from softmax(z); the 'model' reports softmax(sharpen * z)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(n, 3))
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in truth])
    shown = np.exp(sharpen * logits)
    return shown / shown.sum(axis=1, keepdims=True), labels, truth


def test_temperature_scaling_undoes_overconfidence():
    from ntclass.evaluate.calibration import apply_temperature, fit_temperature
    probabilities, labels, truth = overconfident_predictions()
    temperature = fit_temperature(probabilities, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    scaled = apply_temperature(probabilities, temperature)
    assert (scaled.argmax(axis=1) == probabilities.argmax(axis=1)).all()
    correct = probabilities.argmax(axis=1) == labels
    before = reliability(probabilities.max(axis=1), correct)["ece"]
    after = reliability(scaled.max(axis=1), correct)["ece"]
    assert after < 0.03 < 0.1 < before
    # already calibrated probabilities keep a temperature near 1
    assert fit_temperature(truth, labels) == pytest.approx(1.0, rel=0.1)


def temperature_table(probabilities, labels):
    df = pd.DataFrame(probabilities, columns=CLASSES)
    df["nt"] = pd.array(np.array(CLASSES)[labels], dtype="string")
    df["pre_id"] = pd.array(np.arange(len(df)) // 10, dtype="Int64")
    df["post_id"] = pd.array(np.arange(len(df)) // 10 + 1000, dtype="Int64")
    df["synapse_id"] = np.arange(len(df))
    df["predicted_nt"] = np.array(CLASSES)[probabilities.argmax(axis=1)]
    df["confidence"] = probabilities.max(axis=1)
    return df


def test_fitted_temperature_is_applied_in_evaluation(tmp_path):
    import json

    from ntclass.evaluate.metrics import (
        EvaluationOutputs,
        evaluate_predictions,
        fit_temperature_file,
    )
    from ntclass.settings import Evaluation
    probabilities, labels, _ = overconfident_predictions(n=1000)
    temperature_table(probabilities, labels).to_csv(tmp_path / "validation.csv", index=False)
    record = fit_temperature_file(str(tmp_path / "validation.csv"), CLASSES, "validation",
                                  str(tmp_path / "temperature.json"))
    assert json.loads((tmp_path / "temperature.json").read_text()) == record
    assert record["temperature"] > 2 and record["nll_after"] < record["nll_before"]
    assert record["ece_after"] < record["ece_before"]

    test_probabilities, test_labels, _ = overconfident_predictions(n=1000, seed=1)
    temperature_table(test_probabilities, test_labels).to_csv(tmp_path / "test.csv",
                                                              index=False)
    settings = Evaluation(neuron_rule="mean", min_synapses=1, min_confidence=0.0, signs={},
                          empty_cubes="leave_out")
    outs = EvaluationOutputs(*(str(tmp_path / n) for n in (
        "m.json", "r.txt", "n.csv", "e.csv", "g.csv", "c.png", "k.png", "i.csv")))
    raw = evaluate_predictions(str(tmp_path / "test.csv"), classes=CLASSES, settings=settings,
                               title="t", outputs=outs)
    scaled = evaluate_predictions(str(tmp_path / "test.csv"), classes=CLASSES,
                                  settings=settings, title="t", outputs=outs,
                                  temperature_path=str(tmp_path / "temperature.json"))
    assert scaled["temperature"] == record["temperature"]
    assert scaled["synapse"]["accuracy"] == raw["synapse"]["accuracy"]
    assert scaled["synapse"]["ece_uncalibrated"] == raw["synapse"]["ece"]
    assert scaled["synapse"]["ece"] < raw["synapse"]["ece"] / 2
    assert "after temperature scaling, T = " in (tmp_path / "r.txt").read_text()


def test_temperature_needs_labelled_synapses(tmp_path):
    from ntclass.errors import NtclassError
    from ntclass.evaluate.metrics import fit_temperature_file
    probabilities, labels, _ = overconfident_predictions(n=20)
    table = temperature_table(probabilities, labels).assign(nt=pd.NA)
    table.to_csv(tmp_path / "v.csv", index=False)
    with pytest.raises(NtclassError, match="target 'v' given as evaluation.temperature_scaling"):
        fit_temperature_file(str(tmp_path / "v.csv"), CLASSES, "v", str(tmp_path / "t.json"))
    assert not (tmp_path / "t.json").exists()


FOREIGN = {
    "percentages": (lambda t: t.assign(**{c: t[c] * 100 for c in CLASSES}),
                    r"probabilities of synapse 0 sum to 100\.0.*\(percentages\? divide by 100\)"),
    "logits": (lambda t: t.assign(**{c: np.log(t[c]) for c in CLASSES}),
               r"probabilities of synapse 0 sum to -?\d.*\(logits or scores\? apply a softmax\)"),
    "another case": (lambda t: t.assign(nt=t["nt"].str.upper()),
                     r"column 'nt' holds 'ACH', which is not one of the classes ach, gaba, "
                     r"glu \(did you mean 'ach'\?\)"),
    "a class the model never had": (lambda t: t.assign(nt=t["nt"].replace("glu", "ser")),
                                    r"column 'nt' holds 'ser', which is not one of the classes"),
    "a missing class column": (lambda t: t.drop(columns="glu"),
                               r"has no column 'glu'; expected .* one probability column per "
                               r"class"),
}


@pytest.mark.parametrize("case", FOREIGN)
def test_ntclass_evaluate_refuses_a_table_whose_values_mean_something_else(
        tmp_path, capsys, case):
    """A table from another tool: refused with one sentence, no metric written."""
    from ntclass.cli import main

    edit, sentence = FOREIGN[case]
    table = HAND_MADE.assign(confidence=HAND_MADE[CLASSES].max(axis=1))
    main(["evaluate", str(_written(table, tmp_path / "ok.csv")), "--classes",
          ",".join(CLASSES), "--out", str(tmp_path / "ok")])
    assert (tmp_path / "ok" / "metrics.json").exists()  # the unedited table is fine
    path = _written(edit(table), tmp_path / "foreign.csv")
    code = main(["evaluate", str(path), "--classes", ",".join(CLASSES),
                 "--out", str(tmp_path / "out")])
    said = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(said) == 1 and said[0].startswith("ntclass: prediction table")
    assert re.search(sentence, said[0]), said[0]
    assert not (tmp_path / "out" / "metrics.json").exists()


def _written(table: pd.DataFrame, path):
    table.to_csv(path, index=False)
    return path


def test_group_calls_on_the_demos_hemilineages_match_a_hand_computation(tiny_demo, tmp_path):
    """Per hemilineage: one neuron called wrongly (0.6), one unclear (left out), the others
    right (0.9): the consensus is the true NT, agreement (n - 1) / n of the n called."""
    from conftest import CLASSES as DEMO_CLASSES

    from ntclass.evaluate.groups import group_calls, group_metrics, neuron_groups
    from ntclass.predict.targets import write_target
    from ntclass.settings import Partition
    from ntclass.sources.kinds import source_of

    synapses = pd.read_csv(tiny_demo["table"])
    target = {"type": "table", "table": tiny_demo["table"], "raw_container": tiny_demo["volume"],
              "raw_dataset": "volumes/raw/s0"}
    write_target(None, source_of(target), DEMO_CLASSES, None,
                 Partition(shards=1, synapses_per_shard=None, block_size=(640, 1024, 1024),
                           read_batch_rows=10_000), str(tmp_path / "target"))
    groups = neuron_groups(["hemilineage"], str(tmp_path / "target"), None, tmp_path)
    lineage = synapses.groupby("pre_id")["hemilineage"].agg(lambda s: s.mode()[0])
    assert groups.set_index("pre_id")["hemilineage"].to_dict() == lineage.to_dict()

    # made-up calls: each neuron called its true NT at confidence 0.9, but the first
    # neuron of every hemilineage is called "glutamate" at 0.6 (or "gaba" where glutamate
    # is the truth), and the second is "unclear" (left out)
    truth = synapses.groupby("pre_id")["nt"].first()
    rows = []
    for _, members in lineage.groupby(lineage):
        for k, pre_id in enumerate(sorted(members.index)):
            nt = truth[pre_id]
            call, conf = (nt, 0.9)
            if k == 0:
                call, conf = ("gaba" if nt == "glutamate" else "glutamate", 0.6)
            elif k == 1:
                call, conf = ("unclear", 0.3)
            rows.append({"pre_id": pre_id, "predicted_nt": call, "confidence": conf, "nt": nt})
    neurons = pd.DataFrame(rows)
    found = group_calls(neurons, groups, ["hemilineage"]).set_index("group")
    for name, members in lineage.groupby(lineage):
        n = len(members) - 1  # the unclear one is not counted
        nt = truth[sorted(members.index)[2]]
        assert found.loc[name, "neurons"] == n
        # the true NT outvotes the wrong call, or ties it and wins on confidence (0.9 > 0.6)
        assert found.loc[name, "consensus_nt"] == nt
        assert np.isclose(found.loc[name, "agreement"], (n - 1) / n)
        assert np.isclose(found.loc[name, "confidence"], 0.9)
        assert found.loc[name, "correct"] and found.loc[name, "known_nt"] == nt
    assert group_metrics(found.reset_index())["hemilineage"]["groups"] == lineage.nunique()


def test_flywire_tables_carry_the_calls_under_flywire_codes(tmp_path):
    from ntclass.evaluate.flywire import flywire_neurons, write_flywire_synapses

    classes = ["acetylcholine", "gaba", "dopamine"]
    neurons = pd.DataFrame({
        "pre_id": pd.array([720575940000000001, 7, 9], dtype="UInt64"),
        "n_synapses": [4, 1, 2], "predicted_nt": pd.array(["gaba", None, "dopamine"],
                                                            dtype="string"),
        "confidence": [0.75, None, 1.0],
        "mean_acetylcholine": [0.2, 0.5, 0.1], "mean_gaba": [0.7, 0.3, 0.1],
        "mean_dopamine": [0.1, 0.2, 0.8]})
    table = flywire_neurons(neurons, classes)
    assert list(table.columns) == ["root_id", "nt_type", "nt_type_score", "da_avg",
                                   "gaba_avg", "ach_avg"]
    assert table["root_id"].tolist() == [720575940000000001, 7, 9]  # exact, 64-bit
    assert table["nt_type"].tolist()[::2] == ["GABA", "DA"] and pd.isna(table["nt_type"][1])
    assert table["nt_type_score"].tolist()[::2] == [0.7, 0.8]
    assert pd.isna(table["nt_type_score"][1])
    assert table["ach_avg"].tolist() == [0.2, 0.5, 0.1]

    predictions = tmp_path / "predictions.parquet"
    pd.DataFrame({"synapse_id": pd.array([3, 1], dtype="UInt64"), "z": [40.0, 80.0],
                  "y": [4.0, 8.0], "x": [12.0, 16.0],
                  "pre_id": pd.array([720575940000000001, 9], dtype="UInt64"),
                  "post_id": pd.array([5, None], dtype="UInt64"),
                  "acetylcholine": [0.1, 0.2], "gaba": [0.8, 0.1],
                  "dopamine": [0.1, 0.7]}).to_parquet(predictions)
    out = tmp_path / "flywire_synapses.parquet"
    assert write_flywire_synapses(str(predictions), str(out), classes, tmp_path) == 2
    synapses = pd.read_parquet(out)
    assert list(synapses.columns) == ["id", "pre_pt_root_id", "post_pt_root_id", "x", "y",
                                      "z", "gaba", "ach", "da"]
    assert synapses["id"].tolist() == [1, 3]
    assert synapses["pre_pt_root_id"].tolist() == [9, 720575940000000001]
    assert synapses["gaba"].tolist() == pytest.approx([0.1, 0.8])


def test_flywire_tables_refuse_a_class_flywire_has_no_code_for():
    from ntclass.errors import NtclassError
    from ntclass.evaluate.flywire import flywire_codes

    with pytest.raises(NtclassError, match=r"classes \['neither'\] have no FlyWire code"):
        flywire_codes(["gaba", "neither"])


def test_margin_and_entropy_of_hand_made_probabilities():
    from ntclass.predict.shard import margin_and_entropy

    margin, entropy = margin_and_entropy(np.array(
        [[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 0.0], [0.45, 0.1, 0.45]]))
    assert margin == pytest.approx([0.5, 0.0, 1.0, 0.0], abs=1e-6)
    assert entropy == pytest.approx([-(0.7 * np.log(0.7) + 0.2 * np.log(0.2)
                                       + 0.1 * np.log(0.1)), np.log(3), 0.0,
                                     -(0.9 * np.log(0.45) + 0.1 * np.log(0.1))], abs=1e-6)
    assert margin.dtype == entropy.dtype == np.float32
    assert [len(a) for a in margin_and_entropy(np.zeros((0, 3)))] == [0, 0]


def test_prediction_columns_keep_their_order_with_margin_and_entropy_last():
    from ntclass.predict.shard import META_COLUMNS, with_calls

    frame = pd.DataFrame({c: [1] for c in META_COLUMNS}).assign(
        ach=[0.6], gaba=[0.3], glu=[0.1], padded=[False], empty=[False])
    table = with_calls(frame, CLASSES)
    assert list(table.columns) == [*META_COLUMNS, *CLASSES, "predicted_nt", "confidence",
                                   "padded", "empty", "margin", "entropy"]
    assert table["margin"].iloc[0] == pytest.approx(0.3)


def input_table():
    """Post neuron 10: four inputs, three labelled (two predicted right); post neuron 11:
    one unlabelled input; one synapse without a partner."""
    table = predictions([
        (1, "ach", [0.8, 0.1, 0.1]), (1, "ach", [0.3, 0.6, 0.1]), (2, "glu", [0.1, 0.1, 0.8]),
        (2, None, [0.2, 0.2, 0.6]), (3, None, [0.1, 0.7, 0.2]), (3, "gaba", [0.1, 0.8, 0.1]),
    ])
    table["post_id"] = pd.array([10, 10, 10, 10, 11, None], dtype="UInt64")
    return table


def test_input_composition_per_post_synaptic_neuron_by_hand(tmp_path):
    from ntclass.evaluate.inputs import input_columns, write_input_composition
    from ntclass.evaluate.outofcore import connect

    con = connect(input_table(), tmp_path)
    summary = write_input_composition(con, "preds", CLASSES, str(tmp_path / "inputs.csv"))
    inputs = pd.read_csv(tmp_path / "inputs.csv").set_index("post_id")
    assert list(inputs.reset_index().columns) == input_columns(CLASSES)
    ten = inputs.loc[10]
    assert ten["n_synapses"] == 4 and ten["n_labelled"] == 3
    assert [ten[f"n_{c}"] for c in CLASSES] == [1, 1, 2]
    assert [ten[f"fraction_{c}"] for c in CLASSES] == pytest.approx([0.25, 0.25, 0.5])
    assert ten["mean_ach"] == pytest.approx((0.8 + 0.3 + 0.1 + 0.2) / 4)
    assert ten["main_nt"] == "glu"
    # labelled inputs: true ach, ach, glu; predicted ach, gaba, glu
    assert ten["agreement"] == pytest.approx(2 / 3)
    assert ten["composition_error"] == pytest.approx(0.5 * (1 + 1 + 0) / 3)
    eleven = inputs.loc[11]
    assert eleven["main_nt"] == "gaba" and eleven["n_labelled"] == 0
    assert pd.isna(eleven["agreement"]) and pd.isna(eleven["composition_error"])
    assert summary == {"neurons": 2, "synapses": 5, "labelled": 3,
                       "agreement": pytest.approx(2 / 3),
                       "mean_agreement": pytest.approx(2 / 3),
                       "mean_composition_error": pytest.approx(1 / 3),
                       "neurons_labelled": 1}
    con.close()
    # a table without partners: the header alone
    con = connect(input_table().drop(columns="post_id"), tmp_path)
    write_input_composition(con, "preds", CLASSES, str(tmp_path / "none.csv"))
    assert (tmp_path / "none.csv").read_text().strip() == ",".join(input_columns(CLASSES))


def test_abstention_threshold_is_the_lowest_that_reaches_the_precision():
    from ntclass.evaluate.abstention import TIE, abstention_threshold

    confidence = [0.9, 0.8, 0.7, 0.6, 0.5]
    correct = [True, True, False, True, False]
    # precision of the calls at or above each value: 1, 1, 2/3, 3/4, 3/5
    found = abstention_threshold(confidence, correct, 0.75)
    assert found["threshold"] == pytest.approx(0.6 - TIE, abs=0)
    assert (found["called"], found["coverage"], found["achieved_precision"]) == (4, 0.8, 0.75)
    assert abstention_threshold(confidence, correct, 1.0)["called"] == 2
    assert abstention_threshold(confidence, correct, 0.5)["called"] == 5
    # min_confidence is a floor: nothing below it is called
    assert abstention_threshold(confidence, correct, 0.75, floor=0.85)["called"] == 1
    # tied confidences are called together or not at all
    tied = abstention_threshold([0.8, 0.8, 0.5], [True, False, True], 0.9)
    assert tied["threshold"] is None and tied["called"] == 0 and tied["coverage"] == 0.0


def neuron_table(seed):
    """Overconfident predictions, ten synapses per neuron, the neuron's NT the label of most
    of its synapses."""
    probabilities, labels, _ = overconfident_predictions(n=1500, seed=seed)
    table = temperature_table(probabilities, labels)
    table["nt"] = table.groupby("pre_id")["nt"].transform(lambda s: s.mode().iloc[0])
    return table


def test_abstention_fitted_on_validation_reaches_its_precision_and_reports_coverage(
        tmp_path):
    import json

    from ntclass.errors import NtclassError
    from ntclass.evaluate.metrics import (
        EvaluationOutputs,
        evaluate_predictions,
        fit_abstention_file,
    )
    from ntclass.settings import Evaluation

    neuron_table(0).to_csv(tmp_path / "validation.csv", index=False)
    neuron_table(1).to_csv(tmp_path / "test.csv", index=False)
    common = {"neuron_rule": "mean", "min_synapses": 1, "min_confidence": 0.0}
    record = fit_abstention_file(str(tmp_path / "validation.csv"), CLASSES, precision=0.9,
                                 leave_out_empty=True, fitted_on="validation",
                                 out_path=str(tmp_path / "abstention.json"), **common)
    assert json.loads((tmp_path / "abstention.json").read_text()) == record
    assert 0 < record["coverage"] < 1 and record["achieved_precision"] >= 0.9

    settings = Evaluation(**common, signs={}, empty_cubes="leave_out")
    outs = EvaluationOutputs.in_folder(tmp_path / "out")
    for part in ("validation", "test"):
        metrics = evaluate_predictions(str(tmp_path / f"{part}.csv"), classes=CLASSES,
                                       settings=settings, title="t", outputs=outs,
                                       abstention_path=str(tmp_path / "abstention.json"))
        neurons = pd.read_csv(outs.neurons)
        unclear = neurons["predicted_nt"] == "unclear"
        assert (unclear == (neurons["confidence"] < record["threshold"])).all()
        assert metrics["neuron"]["coverage"] == pytest.approx(1 - unclear.mean())
        assert metrics["abstention"]["coverage"] == metrics["neuron"]["coverage"]
        called = neurons[~unclear]
        assert metrics["abstention"]["precision_here"] == pytest.approx(
            (called["predicted_nt"] == called["nt"]).mean())
        # on the part it was fitted on, the calls reach the precision asked for
        if part == "validation":
            assert metrics["neuron"]["accuracy"] >= 0.9
            assert metrics["neuron"]["coverage"] == pytest.approx(record["coverage"])
    report = Path(outs.report).read_text()
    assert f"unclear below confidence {record['threshold']:.4f}" in report
    assert "precision 0.9 on 'validation'" in report and "coverage" in report
    assert metrics["provenance"]["evaluation"]["abstention"]["threshold"] == \
        record["threshold"]
    # a threshold fitted under another neuron rule is refused
    with pytest.raises(NtclassError, match="fitted for neuron rule 'mean', but the "
                                           "evaluation uses 'majority'"):
        evaluate_predictions(str(tmp_path / "test.csv"), classes=CLASSES,
                             settings=Evaluation(**{**common, "neuron_rule": "majority"},
                                                 signs={}, empty_cubes="leave_out"),
                             title="t", outputs=outs,
                             abstention_path=str(tmp_path / "abstention.json"))


def test_provenance_travels_from_the_prediction_table_to_the_report_and_tables(tmp_path):
    import hashlib
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ntclass.evaluate.flywire import write_flywire_synapses
    from ntclass.evaluate.metrics import EvaluationOutputs, evaluate_predictions
    from ntclass.provenance import (
        config_sha256,
        file_sha256,
        prediction_provenance,
        table_provenance,
        with_provenance,
    )
    from ntclass.settings import Evaluation

    (tmp_path / "model.pt").write_bytes(b"weights")
    made = prediction_provenance(model="vgg", model_path=tmp_path / "model.pt",
                                 classes=CLASSES, settings={"device": "cpu"},
                                 config_digest=config_sha256({"b": 1, "a": [2]}))
    assert made["checkpoint_sha256"] == file_sha256(tmp_path / "model.pt") == \
        hashlib.sha256(b"weights").hexdigest()
    assert config_sha256({"b": 1, "a": [2]}) == config_sha256({"a": [2], "b": 1})
    table = pa.Table.from_pandas(input_table().assign(
        confidence=lambda t: t[CLASSES].max(axis=1), z=1.0, y=2.0, x=3.0),
        preserve_index=False)
    path = tmp_path / "predictions.parquet"
    pq.write_table(table.cast(with_provenance(table.schema, made)), path)
    assert table_provenance(path) == made
    assert b"pandas" in pq.read_schema(path).metadata  # the other keys are kept

    scaling = {"temperature": 1.5, "fitted_on": "validation"}
    (tmp_path / "temperature.json").write_text(json.dumps(scaling))
    settings = Evaluation(neuron_rule="majority", min_synapses=2, min_confidence=0.25,
                          signs={}, empty_cubes="leave_out")
    outs = EvaluationOutputs.in_folder(tmp_path / "out")
    metrics = evaluate_predictions(str(path), classes=CLASSES, settings=settings, title="t",
                                   outputs=outs, temperature_path=str(tmp_path /
                                                                      "temperature.json"),
                                   config_digest="c0ffee")
    provenance = metrics["provenance"]
    assert {k: provenance[k] for k in made} == made
    assert provenance["evaluation"] == {
        "neuron_rule": "majority", "min_synapses": 2, "min_confidence": 0.25,
        "abstention": None, "temperature": 1.5, "temperature_fitted_on": "validation",
        "config_sha256": "c0ffee"}
    report = Path(outs.report).read_text()
    for line in ("model              vgg", f"checkpoint sha256  {made['checkpoint_sha256']}",
                 "neuron rule        majority, min_synapses 2, min_confidence 0.25",
                 "temperature 1.5000 fitted on 'validation'", "config sha256      c0ffee",
                 "Inputs (inputs.csv): 2 post-synaptic neurons"):
        assert line in report, line
    assert json.loads(Path(outs.metrics).read_text())["provenance"] == provenance
    # the FlyWire synapse table carries it too
    renamed = tmp_path / "flywire_named.parquet"
    pq.write_table(table.rename_columns([{"ach": "acetylcholine", "glu": "glutamate"}.get(
        n, n) for n in table.column_names]), renamed)
    write_flywire_synapses(str(renamed), str(tmp_path / "fw.parquet"),
                           ["acetylcholine", "gaba", "glutamate"], tmp_path, provenance)
    assert table_provenance(tmp_path / "fw.parquet") == provenance


def test_ntclass_evaluate_refuses_an_abstention_it_cannot_apply(tmp_path, capsys):
    """A config asking for abstention without the fitted threshold: one sentence, nothing
    written (rather than calls that look abstained but are not)."""
    import yaml

    from ntclass.cli import main

    table = HAND_MADE.assign(confidence=HAND_MADE[CLASSES].max(axis=1))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"classes": CLASSES,
                                      "evaluation": {"abstention": {"precision": 0.9}}}))
    code = main(["evaluate", str(_written(table, tmp_path / "p.csv")), "--config",
                 str(config), "--out", str(tmp_path / "out")])
    said = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and said == [
        "ntclass: evaluation.abstention.precision is set, but ntclass evaluate fits no "
        "threshold: give the abstention.json the workflow fitted with --abstention, or "
        "leave precision out"]
    assert not (tmp_path / "out" / "metrics.json").exists()
