"""The signed circuit: directed neuron-to-neuron edges signed by the pre-synaptic NT,
aggregated out of core from the prediction table (view `preds` of `outofcore.connect`)."""

from __future__ import annotations

from collections.abc import Mapping

import duckdb
import pandas as pd
import pyarrow as pa

from ntclass.evaluate import outofcore
from ntclass.io import atomic_path

# Dale's principle in the fly: cholinergic synapses excite, GABAergic and glutamatergic
# ones inhibit; monoamines modulate (sign 0).
FLY_SIGNS = {"acetylcholine": 1, "gaba": -1, "glutamate": -1, "serotonin": 0, "dopamine": 0,
             "octopamine": 0, "tyramine": 0}
EDGE_COLUMNS = ["pre_id", "post_id", "n_synapses", "pre_nt", "sign"]


def write_signed_edges(con: duckdb.DuckDBPyConnection, neurons: pd.DataFrame,
                       signs: Mapping[str, int], out_csv: str) -> None:
    """One row per (pre_id, post_id) pair with its synapse count, the pre-synaptic
    neuron's call and that NT's sign (0: modulatory, unknown or 'unclear'). A table
    without post-synaptic partners (another tool's) has no edges: the header alone."""
    if "post_id" not in outofcore.columns(con, "preds"):
        with atomic_path(out_csv) as tmp:
            pd.DataFrame(columns=EDGE_COLUMNS).to_csv(tmp, index=False)
        return
    con.register("calls", pa.Table.from_pandas(neurons[["pre_id", "predicted_nt"]],
                                               preserve_index=False))
    con.register("signs", pa.table({"nt": list(signs), "sign": [int(v) for v in
                                                               signs.values()]}))
    with atomic_path(out_csv) as tmp:
        con.execute(f"""
            COPY (SELECT e.pre_id, e.post_id, e.n_synapses, c.predicted_nt AS pre_nt,
                         coalesce(s.sign, 0) AS sign
                  FROM (SELECT pre_id, post_id, count(*) AS n_synapses FROM preds
                        WHERE pre_id IS NOT NULL AND post_id IS NOT NULL
                        GROUP BY pre_id, post_id) e
                  LEFT JOIN calls c USING (pre_id) LEFT JOIN signs s
                  ON s.nt = c.predicted_nt ORDER BY e.pre_id, e.post_id)
            TO '{tmp}' (FORMAT csv, HEADER true)""")
