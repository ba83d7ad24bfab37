"""Group-level calls: neurons' calls aggregated per cell type, hemilineage or any column.

A neuron's group is the most common value of the column over its synapses (the target's
synapse table) or its row of a neuron table. Per group: the consensus transmitter (the
most common call among its called neurons; ties go to the higher mean confidence, then to
the name), the mean confidence of the neurons that agree, the share that agree and the
neuron count; where the neurons' transmitters are known, the group's (their most common)
and whether the consensus matches it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ntclass.errors import NtclassError
from ntclass.sql import duckdb_connection, quoted

COLUMNS = ["group_by", "group", "consensus_nt", "confidence", "agreement", "neurons",
           "known_nt", "correct"]


def neuron_groups(columns: Sequence[str], target_dir: str | None, neuron_table: str | None,
                  work: Path) -> pd.DataFrame:
    """pre_id and each column of `columns`, per neuron: from the neuron table where it has
    the column, else the most common value over the neuron's synapses."""
    found = pd.DataFrame({"pre_id": pd.Series(dtype="Int64")})
    table = _read_table(neuron_table) if neuron_table else None
    con = duckdb_connection(work)
    synapses = f"read_parquet('{Path(target_dir) / 'shard-*.parquet'}')" if target_dir else None
    have = ({r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {synapses}").fetchall()}
            if synapses else set())
    for column in columns:
        if table is not None and column in table.columns:
            part = table[["pre_id", column]].dropna()
        elif column in have:
            name = quoted(column)
            part = con.sql(f"SELECT pre_id, mode({name}) AS {name} FROM {synapses} "
                           f"WHERE pre_id IS NOT NULL AND {name} IS NOT NULL "
                           "GROUP BY pre_id").df()
        else:
            where = "the target's synapses" + (f" nor of '{neuron_table}'" if neuron_table
                                               else " (name a neuron table: "
                                               "evaluation.neuron_table)")
            raise NtclassError(f"evaluation.group_by names '{column}', which is not a "
                               f"column of {where}")
        part = part.astype({"pre_id": "Int64", column: "string"})
        found = found.merge(part, on="pre_id", how="outer")
    con.close()
    return found


def _read_table(path: str) -> pd.DataFrame:
    if not os.path.isfile(path):
        raise NtclassError(f"file '{path}' given as evaluation.neuron_table does not exist")
    table = (pd.read_parquet(path) if path.lower().endswith((".parquet", ".pq"))
             else pd.read_csv(path))
    if "pre_id" not in table.columns:
        raise NtclassError(f"neuron table '{path}' has no column 'pre_id' (the neuron ids "
                           "of the synapses' pre_id)")
    return table


def group_calls(neurons: pd.DataFrame, groups: pd.DataFrame, by: Sequence[str]
                ) -> pd.DataFrame:
    """One row per group of each column of `by` (see the module's description)."""
    called = neurons[neurons["predicted_nt"].notna() & (neurons["predicted_nt"] != "unclear")]
    called = called.astype({"pre_id": "Int64"}).merge(groups, on="pre_id", how="inner")
    rows = []
    for column in by:
        for value, part in called.dropna(subset=[column]).groupby(column, sort=True):
            stats = part.groupby("predicted_nt")["confidence"].agg(["size", "mean"])
            stats = stats.reset_index().sort_values(["size", "mean", "predicted_nt"],
                                                    ascending=[False, False, True])
            consensus = str(stats.iloc[0]["predicted_nt"])
            agree = part[part["predicted_nt"] == consensus]
            known = part["nt"].dropna() if "nt" in part else pd.Series(dtype=str)
            truth = known.value_counts().sort_index().idxmax() if len(known) else None
            rows.append({"group_by": column, "group": value, "consensus_nt": consensus,
                         "confidence": float(agree["confidence"].mean()),
                         "agreement": len(agree) / len(part), "neurons": len(part),
                         "known_nt": truth,
                         "correct": None if truth is None else consensus == truth})
    return pd.DataFrame(rows, columns=COLUMNS)


def group_metrics(groups: pd.DataFrame) -> dict:
    """Per grouping column: groups, groups with a known transmitter, and the accuracy of
    the consensus on them."""
    out = {}
    for column, part in groups.groupby("group_by", sort=True):
        known = part[part["known_nt"].notna()]
        out[column] = {"groups": len(part), "known": len(known),
                       "accuracy": float(known["correct"].astype(bool).mean())
                       if len(known) else None}
    return out
