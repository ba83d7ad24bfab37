"""The signed circuit: directed neuron-to-neuron edges signed by the pre-synaptic NT."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ntclass.ids import ID_DTYPE

# Dale's principle in the fly: cholinergic synapses excite, GABAergic and glutamatergic
# ones inhibit; monoamines modulate (sign 0).
FLY_SIGNS = {"acetylcholine": 1, "gaba": -1, "glutamate": -1, "serotonin": 0, "dopamine": 0,
             "octopamine": 0, "tyramine": 0}
EDGE_COLUMNS = ["pre_id", "post_id", "n_synapses", "pre_nt", "sign"]


def signed_edges(predictions: pd.DataFrame, neurons: pd.DataFrame,
                 signs: Mapping[str, int]) -> pd.DataFrame:
    """One row per (pre_id, post_id) pair with its synapse count, the pre-synaptic neuron's
    NT call and the sign of that NT (+1, -1, or 0 for modulatory, unknown or 'unclear')."""
    rows = predictions[predictions["pre_id"].notna() & predictions["post_id"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=EDGE_COLUMNS)
    edges = (rows.groupby(["pre_id", "post_id"], sort=True).size()
             .rename("n_synapses").reset_index())
    calls = neurons.set_index("pre_id")["predicted_nt"]
    edges["pre_nt"] = edges["pre_id"].map(calls).astype("string")
    edges["sign"] = edges["pre_nt"].map(lambda nt: int(signs.get(nt, 0)) if isinstance(
        nt, str) else 0).astype(int)
    edges["pre_id"] = edges["pre_id"].astype(ID_DTYPE)
    edges["post_id"] = edges["post_id"].astype(ID_DTYPE)
    return edges[EDGE_COLUMNS]
