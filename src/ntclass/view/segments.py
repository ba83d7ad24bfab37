"""Neuron calls as neuroglancer segment properties: each called neuron's label, one tag per
transmitter and numbers, so that a segmentation layer can search and filter by them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ntclass.io import atomic_path


def write_segment_properties(neurons: pd.DataFrame, out: Path) -> dict:
    """`neurons` (neurons.csv: pre_id, predicted_nt, confidence, n_synapses) as a
    `neuroglancer_segment_properties` folder holding its `info`; returns it."""
    called = neurons[neurons["predicted_nt"].notna()].sort_values("pre_id")
    tags = sorted(called["predicted_nt"].astype(str).unique())
    index = {t: i for i, t in enumerate(tags)}
    info = {"@type": "neuroglancer_segment_properties", "inline": {
        "ids": [str(int(i)) for i in called["pre_id"]],
        "properties": [
            {"id": "label", "type": "label",
             "values": [f"{nt} {c:.2f}" for nt, c in zip(called["predicted_nt"],
                                                          called["confidence"])]},
            {"id": "tags", "type": "tags", "tags": tags,
             "values": [[index[str(nt)]] for nt in called["predicted_nt"]]},
            {"id": "confidence", "type": "number", "data_type": "float32",
             "values": [round(float(c), 6) for c in called["confidence"]]},
            {"id": "synapses", "type": "number", "data_type": "uint32",
             "values": [int(n) for n in called["n_synapses"]]},
        ]}}
    with atomic_path(out, is_dir=True) as tmp:
        (tmp / "info").write_text(json.dumps(info))
    return info
