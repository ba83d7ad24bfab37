"""Neuron calls and the signed edge list of any number of synapses, out of core.

DuckDB aggregates the prediction table (a Parquet file, or a frame in memory) per neuron
and per neuron pair; memory grows with the number of neurons, never with the number of
synapses, and the edge list goes straight from DuckDB to its CSV.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from ntclass.io import NULLABLE_INTEGERS, read_synapse_csv
from ntclass.sql import duckdb_connection, quoted


def connect(predictions: str | os.PathLike | pd.DataFrame, work: Path,
            leave_out_empty: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the predictions as view `preds` (a Parquet file, read
    out of core; or a CSV the workflow wrote, or a frame, held in memory), without the
    synapses whose cubes held no data when `leave_out_empty`; all of them are `everything`."""
    con = duckdb_connection(work)
    if not isinstance(predictions, pd.DataFrame) and str(predictions).endswith(".csv"):
        predictions = read_synapse_csv(predictions)
    if isinstance(predictions, pd.DataFrame):
        con.register("everything", pa.Table.from_pandas(predictions, preserve_index=False))
    else:
        con.execute(f"CREATE VIEW everything AS SELECT * FROM read_parquet('{predictions}')")
    kept = "WHERE NOT coalesce(empty, false)" if leave_out_empty and _has_empty(con) else ""
    con.execute(f"CREATE VIEW preds AS SELECT * FROM everything {kept}")
    return con


def columns(con: duckdb.DuckDBPyConnection, view: str) -> list[str]:
    """The column names of a view."""
    return [row[0] for row in con.execute(f"DESCRIBE {view}").fetchall()]


def _has_empty(con: duckdb.DuckDBPyConnection) -> bool:
    """Tables of other tools have no `empty` column: none of their synapses is flagged."""
    return "empty" in columns(con, "everything")


def empty_cubes(con: duckdb.DuckDBPyConnection) -> int:
    """How many synapses' cubes held no data (see cubes.EMPTY_SHARE)."""
    if not _has_empty(con):
        return 0
    return con.execute("SELECT count(*) FROM everything WHERE empty").fetchall()[0][0]


def scaled_view(con: duckdb.DuckDBPyConnection, classes: Sequence[str],
                temperature: float | None) -> str:
    """The name of a view of `preds` whose probabilities are temperature-scaled (the
    softmax of log-probabilities / T, as `calibration.apply_temperature`)."""
    if temperature is None:
        return "preds"
    logits = {c: f"ln(greatest({quoted(c)}::DOUBLE, 1e-12)) / {float(temperature)!r}"
              for c in classes}
    top = f"greatest({', '.join(logits.values())})"
    exps = {c: f"exp({v} - {top})" for c, v in logits.items()}
    total = " + ".join(exps.values())
    columns = ", ".join(f"({e}) / ({total}) AS {quoted(c)}" for c, e in exps.items())
    con.execute(f"CREATE VIEW scaled AS SELECT * REPLACE ({columns}) FROM preds")
    return "scaled"


def neuron_aggregates(con: duckdb.DuckDBPyConnection, view: str, classes: Sequence[str]
                      ) -> pd.DataFrame:
    """Per pre-synaptic neuron: synapse count, mean probabilities, votes per class and
    its most frequent known NT (ties: the first by name)."""
    means = ", ".join(f"avg({quoted(c)}) AS {quoted('mean_' + c)}" for c in classes)
    votes = ", ".join(f"count(*) FILTER (predicted_nt = '{c}') AS {quoted('votes_' + c)}"
                      for c in classes)
    query = f"""
        WITH agg AS (SELECT pre_id, count(*) AS n_synapses, {means}, {votes}
                     FROM {view} WHERE pre_id IS NOT NULL GROUP BY pre_id),
        truth AS (SELECT pre_id, nt FROM (
                    SELECT pre_id, nt, row_number() OVER (
                        PARTITION BY pre_id ORDER BY count(*) DESC, nt) AS r
                    FROM {view} WHERE pre_id IS NOT NULL AND nt IS NOT NULL
                    GROUP BY pre_id, nt) WHERE r = 1)
        SELECT agg.*, truth.nt FROM agg LEFT JOIN truth USING (pre_id) ORDER BY pre_id"""
    return con.sql(query).to_arrow_table().to_pandas(
        types_mapper=NULLABLE_INTEGERS.get)


def labelled_batches(con: duckdb.DuckDBPyConnection, classes: Sequence[str], rows: int,
                     view: str = "preds") -> pa.RecordBatchReader:
    """The synapses with a known NT, `rows` at a time: nt, predicted_nt and the class
    probabilities (what synapse-level metrics need)."""
    probabilities = ", ".join(quoted(c) for c in classes)
    return con.execute(f"SELECT nt::VARCHAR AS nt, predicted_nt::VARCHAR AS predicted_nt, "
                       f"{probabilities} FROM {view} WHERE nt IS NOT NULL"
                       ).to_arrow_reader(rows)


def scratch() -> tempfile.TemporaryDirectory:
    """Where DuckDB may spill."""
    return tempfile.TemporaryDirectory(prefix="ntclass-duckdb-")
