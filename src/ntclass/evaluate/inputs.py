"""The transmitter composition of each neuron's inputs ("% input synapses by NT"), out of
core: per post-synaptic neuron, its input synapses counted by predicted NT, their shares
and the mean probability of each NT; where the inputs' NTs are known, how well the
predicted composition agrees with the labelled one. DuckDB aggregates the predictions
(view `preds` of `outofcore.connect`, or its temperature-scaled view) and writes the table
straight to its CSV: memory grows with neither synapses nor neurons."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from ntclass.evaluate.outofcore import columns, quoted
from ntclass.io import atomic_path


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def input_columns(classes: Sequence[str]) -> list[str]:
    """The columns of inputs.csv."""
    return (["post_id", "n_synapses", "main_nt", "n_labelled", "agreement",
             "composition_error"] + [f"n_{c}" for c in classes]
            + [f"fraction_{c}" for c in classes] + [f"mean_{c}" for c in classes])


def _composition_query(view: str, classes: Sequence[str]) -> str:
    """One row per post-synaptic neuron (see `input_columns`): main_nt is the NT most of
    its inputs are predicted as (ties: the first class); agreement, the share of its
    labelled inputs predicted as labelled; composition_error, the total variation distance
    between the predicted and the labelled NT shares of its labelled inputs (0: the same
    composition; 1: nothing in common)."""
    counts = ", ".join(f"count(*) FILTER (predicted_nt = {_literal(c)}) AS {quoted('n_' + c)}"
                       for c in classes)
    labelled = ", ".join(
        f"count(*) FILTER (nt IS NOT NULL AND predicted_nt = {_literal(c)}) AS "
        f"{quoted('lp_' + c)}, count(*) FILTER (nt = {_literal(c)}) AS {quoted('lt_' + c)}"
        for c in classes)
    means = ", ".join(f"avg({quoted(c)}) AS {quoted('mean_' + c)}" for c in classes)
    names = "[" + ", ".join(_literal(c) for c in classes) + "]"
    listed = "[" + ", ".join(quoted("n_" + c) for c in classes) + "]"
    fractions = ", ".join(f"{quoted('n_' + c)} / n_synapses AS {quoted('fraction_' + c)}"
                          for c in classes)
    distance = " + ".join(f"abs({quoted('lp_' + c)} - {quoted('lt_' + c)})" for c in classes)
    return f"""
        WITH agg AS (
            SELECT post_id, count(*) AS n_synapses, count(nt) AS n_labelled,
                   count(*) FILTER (nt IS NOT NULL AND predicted_nt = nt) AS n_agree,
                   {counts}, {labelled}, {means}
            FROM {view} WHERE post_id IS NOT NULL GROUP BY post_id)
        SELECT post_id, n_synapses,
               {names}[list_position({listed}, list_max({listed}))] AS main_nt,
               n_labelled,
               CASE WHEN n_labelled > 0 THEN n_agree / n_labelled END AS agreement,
               CASE WHEN n_labelled > 0 THEN ({distance}) / (2.0 * n_labelled) END
                   AS composition_error,
               {', '.join(quoted('n_' + c) for c in classes)}, {fractions},
               {', '.join(quoted('mean_' + c) for c in classes)}
        FROM agg ORDER BY post_id"""


def write_input_composition(con: duckdb.DuckDBPyConnection, view: str,
                            classes: Sequence[str], out_csv: str) -> dict:
    """inputs.csv of the predictions in `view`; returns its summary for metrics.json: the
    post-synaptic neurons, the input synapses, and where labels exist the share of labelled
    inputs predicted right (over all of them, and the mean over neurons) and the mean
    composition error. A table without post-synaptic partners has the header alone."""
    if "post_id" not in columns(con, view):
        with atomic_path(out_csv) as tmp:
            tmp.write_text(",".join(input_columns(classes)) + "\n")
        return {"neurons": 0, "synapses": 0, "labelled": 0, "agreement": None,
                "mean_agreement": None, "mean_composition_error": None,
                "neurons_labelled": 0}
    con.execute(f"CREATE TEMP TABLE inputs AS {_composition_query(view, classes)}")
    with atomic_path(out_csv) as tmp:
        con.execute(f"COPY inputs TO '{tmp}' (FORMAT csv, HEADER true)")
    neurons, synapses, mean_agreement, error, known = con.execute("""
        SELECT count(*), coalesce(sum(n_synapses), 0), avg(agreement),
               avg(composition_error), count(agreement) FROM inputs""").fetchone()
    con.execute("DROP TABLE inputs")
    labelled, agree = con.execute(f"""
        SELECT count(nt), count(*) FILTER (nt IS NOT NULL AND predicted_nt = nt)
        FROM {view} WHERE post_id IS NOT NULL""").fetchone()
    return {"neurons": int(neurons), "synapses": int(synapses), "labelled": int(labelled),
            "agreement": agree / labelled if labelled else None,
            "mean_agreement": None if mean_agreement is None else float(mean_agreement),
            "mean_composition_error": None if error is None else float(error),
            "neurons_labelled": int(known)}
