"""Neuron and synapse tables in the column conventions of FlyWire's transmitter tables
(Eckstein et al. 2024, as FlyWire Codex serves them), for labs that join ntclass's calls
with FlyWire-shaped data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ntclass.errors import NtclassError
from ntclass.io import atomic_path, write_csv
from ntclass.sql import duckdb_connection, quoted

# class name -> FlyWire's code: lower case in the synapse table's columns and `<code>_avg`,
# upper case as a neuron's nt_type. Tyramine is not among FlyWire's six; ntclass adds 'tyr'.
CODES = {"gaba": "gaba", "acetylcholine": "ach", "glutamate": "glut", "octopamine": "oct",
         "serotonin": "ser", "dopamine": "da", "tyramine": "tyr"}
SYNAPSE_ORDER = ("gaba", "ach", "glut", "oct", "ser", "da", "tyr")  # FlyWire's synapse table
NEURON_ORDER = ("da", "ser", "gaba", "glut", "ach", "oct", "tyr")  # Codex's neuron table


def flywire_codes(classes: Sequence[str]) -> dict[str, str]:
    """FlyWire's code of each class; a class FlyWire has no code for is refused."""
    unknown = [c for c in classes if c not in CODES]
    if unknown:
        raise NtclassError(f"evaluation.flywire_tables: classes {unknown} have no FlyWire "
                           f"code (known: {', '.join(CODES)}); turn flywire_tables off or "
                           "name the classes as FlyWire does")
    return {c: CODES[c] for c in classes}


def flywire_neurons(neurons: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """neurons.csv as FlyWire's neuron table: root_id, nt_type (ACH, GABA...; empty where
    unclear), nt_type_score (the neuron's mean probability of its nt_type) and <code>_avg
    (its mean probability of each class)."""
    codes = flywire_codes(classes)
    by_code = {code: c for c, code in codes.items()}
    called = neurons["predicted_nt"].where(neurons["predicted_nt"].isin(list(codes)))
    table = pd.DataFrame({"root_id": neurons["pre_id"],
                          "nt_type": called.map(codes).str.upper()})
    means = neurons[[f"mean_{c}" for c in classes]].to_numpy()
    column = called.map({c: i for i, c in enumerate(classes)})
    known = column.notna().to_numpy()
    score = pd.Series(pd.NA, index=neurons.index, dtype="Float64")
    score[known] = means[known, column[known].astype(int).to_numpy()]
    table["nt_type_score"] = score.round(4)
    for code in (c for c in NEURON_ORDER if c in by_code):
        table[f"{code}_avg"] = neurons[f"mean_{by_code[code]}"].round(4)
    return table


def write_flywire_synapses(predictions: str, out: str, classes: Sequence[str],
                           workdir: Path) -> int:
    """The prediction table as FlyWire's synapse table (Parquet), out of core: id,
    pre_pt_root_id, post_pt_root_id, x, y, z (nm, not FlyWire's voxels) and each class's
    probability under its code. Returns the number of synapses."""
    codes = flywire_codes(classes)
    by_code = {code: c for c, code in codes.items()}
    columns = ["synapse_id AS id", "pre_id AS pre_pt_root_id", "post_id AS post_pt_root_id",
               "x", "y", "z"] + [f"{quoted(by_code[code])} AS {code}"
                                 for code in SYNAPSE_ORDER if code in by_code]
    con = duckdb_connection(workdir)
    try:
        with atomic_path(out) as tmp:  # COPY answers with the number of rows written
            (n,) = con.execute(f"COPY (SELECT {', '.join(columns)} FROM "
                               f"read_parquet('{predictions}') ORDER BY synapse_id) "
                               f"TO '{tmp}' (FORMAT parquet)").fetchone()
    finally:
        con.close()
    return n


def write_flywire_tables(predictions: str, neurons: str, outputs: Mapping[str, str],
                         classes: Sequence[str]) -> None:
    """Both tables of one model and target (outputs: neurons, synapses)."""
    table = pd.read_csv(neurons, dtype={"predicted_nt": "string"})
    write_csv(flywire_neurons(table, classes), outputs["neurons"])
    write_flywire_synapses(predictions, outputs["synapses"], classes,
                           Path(outputs["synapses"]).parent)
