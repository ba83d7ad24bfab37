"""Synapse predictions as neuroglancer precomputed annotations (points).

The format is google/neuroglancer's `src/datasource/precomputed/annotations.md`:
- `info`: the coordinate space (x, y, z in nm), the bounds (the upper one exclusive), the
  properties and the relationships;
- `by_id/`: each annotation by its id (the synapse id), with its related segments;
- `pre_segment/`, `post_segment/`: the annotations of each pre- and post-synaptic segment,
  so that selecting a neuron in a linked segmentation layer shows its synapses;
- `spatial<L>/`: a multi-level spatial index, coarse to fine, no cell over `limit`.

Every record is float32 x, y, z; float32 properties (confidence, then each class's
probability); the uint8 `nt` enum; zero padding to 4 bytes. The layer is written by
independent jobs (`ntclass.view.annotation_jobs`: a plan, a map job per row range, a reduce
job per index and shard); `annotation_jobs.write_annotations` runs them all in one process.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ntclass.settings import View

LIMIT: int = View.default("limit")  # annotations per spatial cell


def property_id(name: str) -> str:
    """A class's probability property: neuroglancer ids match [a-z][a-zA-Z0-9_]*."""
    return "p_" + re.sub(r"[^a-z0-9_]", "_", name.lower())


def record_dtype(classes: Sequence[str]) -> np.dtype:
    """One annotation's geometry and properties, in the spec's order: 4-byte values, then
    1-byte ones, then padding to a multiple of 4."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("confidence", "<f4")]
    fields += [(property_id(c), "<f4") for c in classes] + [("nt", "u1")]
    size = 4 * len(fields[:-1]) + 1
    return np.dtype({"names": [f for f, _ in fields], "formats": [t for _, t in fields],
                     "offsets": list(range(0, size - 1, 4)) + [size - 1],
                     "itemsize": (size + 3) // 4 * 4})


def properties(classes: Sequence[str]) -> list[dict]:
    return ([{"id": "confidence", "type": "float32",
              "description": "probability of the predicted transmitter"}]
            + [{"id": property_id(c), "type": "float32", "description": f"probability of {c}"}
               for c in classes]
            + [{"id": "nt", "type": "uint8", "description": "predicted transmitter",
                "enum_values": list(range(len(classes))), "enum_labels": list(classes)}])


def layer_info(lower: Sequence[float], upper: Sequence[float], classes: Sequence[str],
               by_id: dict, relationships: list[dict], spatial: list[dict]) -> dict:
    """The layer's `info`: what neuroglancer reads first."""
    return {"@type": "neuroglancer_annotations_v1",
            "dimensions": {axis: [1e-9, "m"] for axis in "xyz"},
            "lower_bound": list(lower), "upper_bound": list(upper),
            "annotation_type": "POINT", "properties": properties(classes),
            "relationships": relationships, "by_id": by_id, "spatial": spatial}
