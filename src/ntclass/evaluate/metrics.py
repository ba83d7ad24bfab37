"""Metrics at synapse and neuron level, calibration, the signed circuit, the report."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from ntclass.errors import NtclassError
from ntclass.evaluate import outofcore
from ntclass.evaluate.abstention import (
    abstention_threshold,
    applied_min_confidence,
    read_abstention,
)
from ntclass.evaluate.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from ntclass.evaluate.circuit import FLY_SIGNS, write_signed_edges
from ntclass.evaluate.groups import COLUMNS as GROUP_COLUMNS
from ntclass.evaluate.groups import group_calls, group_metrics, neuron_groups
from ntclass.evaluate.inputs import write_input_composition
from ntclass.evaluate.tally import (
    BATCH_ROWS,
    classification_metrics,
    probabilities_of,
    tally_labelled,
    true_indices,
)
from ntclass.ids import ID_DTYPE
from ntclass.io import NamedOutputs
from ntclass.provenance import provenance_lines, table_provenance
from ntclass.settings import Evaluation
from ntclass.sql import quoted

log = logging.getLogger(__name__)
NEURON_RULES = ("majority", "mean", "sum")


def neuron_calls(predictions: pd.DataFrame | str, classes: Sequence[str],
                 rule: str = "majority", min_synapses: int = 1, min_confidence: float = 0.0,
                 temperature: float | None = None) -> pd.DataFrame:
    """One NT call per pre-synaptic neuron (`pre_id`), from a prediction frame or the
    path of a prediction table (aggregated out of core, see `outofcore`).

    majority: most frequent per-synapse prediction, confidence = its share of votes;
    mean: argmax of the mean probabilities, confidence = that mean;
    sum: argmax of summed probabilities, confidence = max / total (equal to mean's here).
    Neurons below `min_synapses` or `min_confidence` are called 'unclear'.
    """
    with outofcore.scratch() as work:
        con = outofcore.connect(predictions, Path(work))
        view = outofcore.scaled_view(con, classes, temperature)
        return calls_in(con, view, classes, rule, min_synapses, min_confidence)


def calls_in(con, view: str, classes: Sequence[str], rule: str, min_synapses: int,
             min_confidence: float) -> pd.DataFrame:
    """The neuron calls of the predictions in view `view` of `con`: aggregated per neuron
    out of core, then called by `rule`."""
    if rule not in NEURON_RULES:
        raise NtclassError(f"neuron rule '{rule}' is unknown; expected one of {NEURON_RULES}")
    return calls_from_aggregates(outofcore.neuron_aggregates(con, view, classes), classes,
                                 rule, min_synapses, min_confidence)


def calls_from_aggregates(agg: pd.DataFrame, classes: Sequence[str], rule: str,
                          min_synapses: int, min_confidence: float) -> pd.DataFrame:
    classes = list(classes)
    columns = ["pre_id", "n_synapses", "predicted_nt", "confidence",
               *[f"mean_{c}" for c in classes], "nt"]
    if agg.empty:
        return pd.DataFrame(columns=columns)
    n = agg["n_synapses"].to_numpy(dtype=np.int64)
    if rule == "majority":
        votes = agg[[f"votes_{c}" for c in classes]].to_numpy(dtype=np.int64)
        best = votes.argmax(axis=1)
        confidence = votes.max(axis=1) / n
    else:
        means = agg[[f"mean_{c}" for c in classes]].to_numpy(dtype=float)
        best = means.argmax(axis=1)
        confidence = means.max(axis=1)  # sum rule: max/total == max of the mean
    out = pd.DataFrame({"pre_id": agg["pre_id"].astype(ID_DTYPE), "n_synapses": n})
    called = np.asarray(classes, dtype=object)[best]
    unclear = (n < min_synapses) | (confidence < min_confidence)
    out["predicted_nt"] = np.where(unclear, "unclear", called)
    out["confidence"] = confidence
    for c in classes:
        out[f"mean_{c}"] = agg[f"mean_{c}"].to_numpy(dtype=float)
    out["nt"] = agg["nt"].astype("string")
    return out[columns].reset_index(drop=True)


def evaluate(predictions: pd.DataFrame, classes: Sequence[str], rule: str = "majority",
             min_synapses: int = 1, min_confidence: float = 0.0) -> tuple[dict, pd.DataFrame]:
    """Metrics over the labelled synapses and neurons of a prediction table."""
    with outofcore.scratch() as work:
        con = outofcore.connect(predictions, Path(work))
        neurons = calls_in(con, "preds", classes, rule, min_synapses, min_confidence)
        tally, _ = tally_labelled(outofcore.labelled_batches(con, classes, BATCH_ROWS),
                                  classes)
        con.close()
    return metrics_of(tally.metrics(), neurons, classes, rule), neurons


def metrics_of(synapse: dict, neurons: pd.DataFrame, classes: Sequence[str],
               rule: str) -> dict:
    """The synapse-level metrics (`SynapseTally.metrics`) with the neuron level's of the
    neuron calls."""
    known = neurons[neurons["nt"].notna() & (neurons["predicted_nt"] != "unclear")]
    neuron = classification_metrics(known["nt"], known["predicted_nt"], classes)
    neuron["rule"] = rule
    neuron["unclear"] = int((neurons["predicted_nt"] == "unclear").sum())
    neuron["neurons"] = len(neurons)
    # coverage: the share of neurons given a call; the rest are 'unclear'
    neuron["coverage"] = (len(neurons) - neuron["unclear"]) / len(neurons) if len(
        neurons) else None
    return {"classes": list(classes), "chance": 1.0 / len(classes),
            "synapse": synapse, "neuron": neuron}


def _table(matrix: list[list[int]], classes: Sequence[str]) -> str:
    width = max(8, *(len(c) for c in classes)) + 1
    lines = [" " * width + "".join(f"{c[:width - 1]:>{width}}" for c in classes)]
    for c, row in zip(classes, matrix):
        lines.append(f"{c:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def report_text(metrics: dict, title: str) -> str:
    """A plain-text report of `metrics` as produced by `evaluate`."""
    classes = metrics["classes"]
    syn, neu = metrics["synapse"], metrics["neuron"]
    lines = [title, "=" * len(title), "",
             f"classes: {', '.join(classes)} (chance {metrics['chance']:.3f})", "",
             f"Synapse level ({syn['n']} labelled synapses)",
             f"  accuracy           {_fmt(syn['accuracy'])}",
             f"  balanced accuracy  {_fmt(syn['balanced_accuracy'])}", "",
             f"  {'class':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for c, m in syn["per_class"].items():
        lines.append(f"  {c:<16}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}"
                     f"{m['support']:>10d}")
    if syn["n"]:
        lines += ["", "  confusion matrix (rows: true, columns: predicted)",
                  _table(syn["confusion_matrix"]["counts"], classes)]
    lines += ["", f"  expected calibration error  {_fmt(syn.get('ece'))}"]
    if "temperature" in metrics:
        lines.append(f"  (after temperature scaling, T = {metrics['temperature']:.3f}; "
                     f"before: {_fmt(syn.get('ece_uncalibrated'))})")
    lines += ["", f"Neuron level ({neu['n']} neurons with a known NT, rule {neu['rule']}, "
                  f"{neu['unclear']} unclear)",
              f"  accuracy           {_fmt(neu['accuracy'])}"]
    if neu.get("coverage") is not None:
        lines.append(f"  coverage           {_fmt(neu['coverage'])} "
                     f"({neu['neurons'] - neu['unclear']} of {neu['neurons']} neurons called)")
    lines += _abstention_lines(metrics.get("abstention"))
    if neu["n"]:
        lines += ["", "  confusion matrix (rows: true, columns: predicted)",
                  _table(neu["confusion_matrix"]["counts"], classes)]
    empty = metrics.get("empty_cubes") or {"n": 0}
    if empty["n"]:
        lines += ["", f"{empty['n']} synapses' cubes held no data (at least 99 % of their "
                      "voxels the volume's fill value, as where chunks are missing): "
                      + ("left out of everything above" if empty["left_out"] else
                         "kept (evaluation.empty_cubes: keep)")]
    for column, found in (metrics.get("group") or {}).items():
        lines += ["", f"Groups by {column}: {found['groups']} groups, {found['known']} with a "
                  f"known NT, consensus accuracy {_fmt(found['accuracy'])} (groups.csv)"]
    lines += _input_lines(metrics.get("inputs"))
    if metrics.get("provenance"):
        lines += ["", *provenance_lines(metrics["provenance"])]
    return "\n".join(lines) + "\n"


def _abstention_lines(abstention: dict | None) -> list[str]:
    if not abstention:
        return []
    if abstention["threshold"] is None:
        return [f"  abstention: no confidence threshold reaches precision "
                f"{abstention['precision']} on '{abstention['fitted_on']}' "
                f"({abstention['fitted_neurons']} labelled neurons): every neuron is called "
                "unclear"]
    return [f"  abstention: unclear below confidence {abstention['threshold']:.4f}, the "
            f"lowest at which the calls reach precision {abstention['precision']} on "
            f"'{abstention['fitted_on']}' (there: precision "
            f"{_fmt(abstention['achieved_precision'])}, coverage "
            f"{_fmt(abstention['fitted_coverage'])} of {abstention['fitted_neurons']} "
            "labelled neurons)",
            f"  here, at that threshold: coverage {_fmt(abstention['coverage'])}, "
            f"precision {_fmt(abstention['precision_here'])}"]


def _input_lines(inputs: dict | None) -> list[str]:
    if not inputs or not inputs["neurons"]:
        return []
    lines = ["", f"Inputs (inputs.csv): {inputs['neurons']} post-synaptic neurons, "
                 f"{inputs['synapses']} input synapses, composition by predicted NT"]
    if inputs["labelled"]:
        lines += [f"  labelled inputs predicted as labelled  {_fmt(inputs['agreement'])} "
                  f"({inputs['labelled']} synapses; mean per neuron "
                  f"{_fmt(inputs['mean_agreement'])})",
                  f"  composition error      {_fmt(inputs['mean_composition_error'])} (mean "
                  "total variation between predicted and labelled NT shares, over "
                  f"{inputs['neurons_labelled']} neurons with labelled inputs)"]
    return lines


def abstention_summary(record: dict, neuron: dict) -> dict:
    """What the fitted threshold is and what it leaves on this target: the coverage (share
    of neurons called) and the precision of the calls (their neuron-level accuracy)."""
    return {"precision": record["precision"], "fitted_on": record["fitted_on"],
            "threshold": record["threshold"],
            "achieved_precision": record["achieved_precision"],
            "fitted_coverage": record["coverage"], "fitted_neurons": record["neurons"],
            "coverage": neuron["coverage"], "precision_here": neuron["accuracy"]}


def evaluation_provenance(predictions_path: str, settings: Evaluation,
                          scaling: dict | None, abstention: dict | None,
                          config_digest: str | None) -> dict:
    """The prediction table's provenance (the model, its checkpoint digest, the prediction
    settings; unknown for another tool's table) with the evaluation's: the neuron rule and
    thresholds, the calibration and the config digest."""
    found = table_provenance(predictions_path) or {"model": None, "checkpoint_sha256": None}
    return {**found, "evaluation": {
        "neuron_rule": settings.neuron_rule, "min_synapses": settings.min_synapses,
        "min_confidence": settings.min_confidence,
        "abstention": None if abstention is None else {
            k: abstention[k] for k in ("precision", "fitted_on", "threshold")},
        "temperature": scaling["temperature"] if scaling else None,
        "temperature_fitted_on": scaling.get("fitted_on") if scaling else None,
        "config_sha256": config_digest}}


def fit_abstention_file(predictions_path: str, classes: Sequence[str], *, precision: float,
                        neuron_rule: str, min_synapses: int, min_confidence: float,
                        leave_out_empty: bool, fitted_on: str, out_path: str,
                        temperature_path: str | None = None) -> dict:
    """Fit a model's abstention threshold on the neuron calls of one labelled target (its
    validation part), temperature-scaled where a temperature is given; write it with the
    precision and coverage it reaches there."""
    from ntclass.io import write_json

    temperature = (json.loads(Path(temperature_path).read_text())["temperature"]
                   if temperature_path else None)
    with outofcore.scratch() as work:
        con = outofcore.connect(predictions_path, Path(work), leave_out_empty=leave_out_empty)
        view = outofcore.scaled_view(con, classes, temperature)
        calls = calls_in(con, view, classes, neuron_rule, min_synapses, 0.0)
        con.close()
    known = calls[calls["nt"].notna() & (calls["n_synapses"] >= min_synapses)]
    if not len(known):
        raise NtclassError(f"target '{fitted_on}' given as evaluation.abstention.fit_on has "
                           "no labelled neuron to fit a threshold on")
    correct = (known["predicted_nt"].astype(str) == known["nt"].astype(str)).to_numpy()
    record = {"precision": precision, "fitted_on": fitted_on, "neuron_rule": neuron_rule,
              "min_synapses": min_synapses, "min_confidence": min_confidence,
              "temperature": temperature,
              **abstention_threshold(known["confidence"].to_numpy(dtype=float), correct,
                                     precision, floor=min_confidence)}
    if record["threshold"] is None:
        log.warning("no confidence threshold reaches precision %s on '%s': every neuron "
                    "will be called unclear", precision, fitted_on)
    write_json(record, out_path)
    return record


def fit_temperature_file(predictions_path: str, classes: Sequence[str], fitted_on: str,
                         out_path: str) -> dict:
    """Fit a model's temperature on the labelled synapses of one prediction table (its
    validation part); write the temperature with the NLL and ECE before and after."""
    from ntclass.io import write_json

    with outofcore.scratch() as work:
        # cubes without data say nothing about calibration
        con = outofcore.connect(predictions_path, Path(work), leave_out_empty=True)
        # a fit needs them all at once: the validation part's labelled synapses
        labelled = outofcore.labelled_batches(con, classes, BATCH_ROWS).read_all()
        con.close()
    probabilities = probabilities_of(labelled, classes)
    labels = true_indices(labelled["nt"].combine_chunks(), classes)
    if not len(labels):
        raise NtclassError(f"target '{fitted_on}' given as evaluation.temperature_scaling."
                           "fit_on has no labelled synapse to fit a temperature on")
    temperature = fit_temperature(probabilities, labels)
    after = apply_temperature(probabilities, temperature)
    record = {"temperature": temperature, "fitted_on": fitted_on, "synapses": len(labels)}
    for name, p in (("before", probabilities), ("after", after)):
        record[f"nll_{name}"] = negative_log_likelihood(p, labels)
        record[f"ece_{name}"] = expected_calibration_error(p, labels)
    write_json(record, out_path)
    return record


PREDICTION_COLUMNS = ("synapse_id", "pre_id", "nt", "predicted_nt", "confidence")


def check_prediction_table(path: str, classes: Sequence[str]) -> None:
    """Refuse a prediction table without the columns evaluation reads."""
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise NtclassError(f"prediction table '{path}' does not exist")
    if str(path).endswith(".csv"):
        columns = list(pd.read_csv(path, nrows=0).columns)
    elif str(path).endswith(".parquet"):
        columns = pq.read_schema(path).names
    else:
        raise NtclassError(f"prediction table '{path}' is neither .csv nor .parquet")
    for column in (*PREDICTION_COLUMNS, *classes):
        if column not in columns:
            raise NtclassError(f"prediction table '{path}' has no column '{column}'; "
                               f"expected {', '.join(PREDICTION_COLUMNS)} and one "
                               "probability column per class")
    with outofcore.scratch() as work:
        con = outofcore.connect(path, Path(work))
        try:
            _check_probabilities(con, path, classes)
            for column, allowed in (("nt", list(classes)),
                                    ("predicted_nt", [*classes, "unclear"])):
                _check_names(con, path, column, allowed)
        finally:
            con.close()


# float32 probabilities of 7 classes sum to 1 within a few 1e-7; percentages, logits and
# unnormalised scores miss it by far more
SUM_TOLERANCE = 1e-3


def _check_probabilities(con, path: str, classes: Sequence[str]) -> None:
    """Every row's class columns are probabilities: in [0, 1], summing to 1."""
    columns = [quoted(c) for c in classes]
    total = " + ".join(f"{c}::DOUBLE" for c in columns)
    outside = " OR ".join(f"{c}::DOUBLE < 0 OR {c}::DOUBLE > 1 OR {c} IS NULL"
                          for c in columns)
    try:
        row = con.execute(f"""SELECT synapse_id, {total} FROM everything
                              WHERE abs({total} - 1) > {SUM_TOLERANCE} OR {outside}
                              LIMIT 1""").fetchall()
        row = row[0] if row else None
    except Exception as e:  # a column that is not numeric
        raise NtclassError(f"prediction table '{path}': the class columns "
                           f"{', '.join(classes)} must hold probabilities (numbers), but "
                           f"reading them failed ({str(e).splitlines()[0]})") from None
    if row is not None:
        synapse, total = row
        hint = (" (percentages? divide by 100)" if total is not None and
                abs(total - 100) < 0.1 else " (logits or scores? apply a softmax)")
        raise NtclassError(
            f"prediction table '{path}': the class probabilities of synapse {synapse} sum "
            f"to {total if total is None else round(total, 6)}, or one lies outside [0, 1]; "
            f"expected probabilities that sum to 1 per row{hint}")


def _check_names(con, path: str, column: str, allowed: Sequence[str]) -> None:
    """A class-name column holds only the given names (or nothing)."""
    found = [v for (v,) in con.execute(
        f"SELECT DISTINCT {column}::VARCHAR FROM everything WHERE {column} IS NOT NULL "
        f"ORDER BY 1").fetchall() if v not in allowed]
    if found:
        value = found[0]
        near = [c for c in allowed if c.lower() == value.strip().lower()]
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise NtclassError(
            f"prediction table '{path}': column '{column}' holds '{value}', which is not one "
            f"of the classes {', '.join(allowed)}{hint}; map it to a class name, or give "
            "the classes with --classes")


@dataclass(frozen=True)
class EvaluationOutputs(NamedOutputs):
    """The files of one evaluation, named as the rule's outputs."""

    metrics: str
    report: str
    neurons: str
    edges: str
    groups: str
    confusion: str
    calibration: str
    inputs: str

    @classmethod
    def in_folder(cls, folder: str | os.PathLike) -> EvaluationOutputs:
        return cls(**{f.name: str(Path(folder) / name) for f, name in zip(fields(cls), (
            "metrics.json", "report.txt", "neurons.csv", "edges.csv", "groups.csv",
            "confusion.png", "calibration.png", "inputs.csv"))})


def evaluate_predictions(predictions_path: str, *, classes: Sequence[str],
                         settings: Evaluation, title: str, outputs: EvaluationOutputs,
                         temperature_path: str | None = None,
                         target_dir: str | None = None, abstention_path: str | None = None,
                         config_digest: str | None = None) -> dict:
    """Evaluate one prediction table (Parquet): metrics.json, report.txt, the neuron
    calls, the input composition of the post-synaptic neurons, the signed edge list and
    the figures. With a fitted temperature, every probability used (neuron calls,
    confidences, calibration) is temperature-scaled first; with a fitted abstention
    threshold, neurons below it are unclear. The labelled synapses are counted a batch at
    a time and the rest aggregated out of core: memory grows with the neurons only."""
    from ntclass.evaluate.plots import confusion_figure, reliability_figure
    from ntclass.io import write_csv, write_json, write_text

    scaling = json.loads(Path(temperature_path).read_text()) if temperature_path else None
    temperature = scaling["temperature"] if scaling else None
    rule = settings.neuron_rule
    abstention = (read_abstention(abstention_path, rule, temperature) if abstention_path
                  else None)
    min_confidence = applied_min_confidence(settings.min_confidence, abstention)
    with outofcore.scratch() as work:
        con = outofcore.connect(predictions_path, Path(work),
                                leave_out_empty=settings.empty_cubes == "leave_out")
        n_empty = outofcore.empty_cubes(con)
        tally, unscaled = tally_labelled(
            outofcore.labelled_batches(con, classes, BATCH_ROWS), classes, temperature)
        view = outofcore.scaled_view(con, classes, temperature)
        neurons = calls_in(con, view, classes, rule, settings.min_synapses, min_confidence)
        write_signed_edges(con, neurons, settings.signs or FLY_SIGNS, outputs.edges)
        inputs = write_input_composition(con, view, classes, outputs.inputs)
        con.close()
        groups = (group_calls(neurons, neuron_groups(settings.group_by, target_dir,
                                                     settings.neuron_table, Path(work)),
                              settings.group_by)
                  if settings.group_by else pd.DataFrame(columns=GROUP_COLUMNS))
    metrics = metrics_of(tally.metrics(), neurons, classes, rule)
    if temperature is not None:
        metrics["temperature"] = temperature
        metrics["synapse"]["ece_uncalibrated"] = unscaled.metrics()["ece"]
    metrics["empty_cubes"] = {"n": n_empty, "left_out": settings.empty_cubes == "leave_out"}
    metrics["inputs"] = inputs
    if abstention is not None:
        metrics["abstention"] = abstention_summary(abstention, metrics["neuron"])
    metrics["provenance"] = evaluation_provenance(
        predictions_path, settings, scaling, metrics.get("abstention"), config_digest)
    if settings.group_by:
        metrics["group"] = group_metrics(groups)
    if n_empty:
        log.warning("%d synapses' cubes held no data (the volume's fill value); %s", n_empty,
                    "left out" if settings.empty_cubes == "leave_out" else "kept")
    write_csv(neurons, outputs.neurons)
    write_csv(groups, outputs.groups)
    syn = metrics["synapse"]
    confusion_figure(syn["confusion_matrix"]["counts"] or np.zeros((len(classes),) * 2),
                     classes, "synapses", outputs.confusion)
    reliability_figure(syn["calibration"], title, outputs.calibration)
    write_text(report_text(metrics, title), outputs.report)
    write_json(metrics, outputs.metrics)
    return metrics


def comparison_table(metrics: Sequence[dict], runs: Sequence[dict],
                     classes: Sequence[str]) -> pd.DataFrame:
    """One row per model and target: accuracy, balanced accuracy, neuron-level accuracy,
    ECE and the F1 of each class."""
    rows = []
    for m, run in zip(metrics, runs):
        syn, neu = m["synapse"], m["neuron"]
        row = {"model": run["model"], "target": run["target"], "synapses": syn["n"],
               "accuracy": syn["accuracy"], "balanced_accuracy": syn["balanced_accuracy"],
               "neurons": neu["n"], "neuron_accuracy": neu["accuracy"],
               "coverage": neu.get("coverage"), "ece": syn.get("ece"),
               "temperature": m.get("temperature")}
        for c in classes:
            row[f"f1_{c}"] = syn["per_class"].get(c, {}).get("f1")
        rows.append(row)
    return pd.DataFrame(rows)


def compare_runs(metrics_paths: Sequence[str], runs: Sequence[dict], classes: Sequence[str],
                 csv_out: str, html_out: str) -> pd.DataFrame:
    """The comparison table as CSV and as an HTML page (for the Snakemake report)."""
    from ntclass.io import write_csv, write_text

    metrics = [json.loads(Path(p).read_text()) for p in metrics_paths]
    table = comparison_table(metrics, runs, classes)
    write_csv(table, csv_out)
    html = table.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="n/a",
                         border=0, classes="comparison")
    write_text("<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
               "<title>ntclass: model comparison</title></head><body>\n"
               "<h1>ntclass: model comparison</h1>\n" + html + "\n</body></html>\n", html_out)
    return table
