"""Reading an annotation layer back as neuroglancer does, for the view's tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_with_neuroglancer(folder: Path, ids, segments: dict[str, list[int]]) -> dict:
    """The layer as neuroglancer's own reader decodes it: each annotation by id (point,
    properties, related segments), each relationship's annotations, each level's cells."""
    from neuroglancer.read_precomputed_annotations import AnnotationReader

    reader = AnnotationReader(f"file://{folder}")
    out = {"by_id": {}, "related": {}, "spatial": []}
    for key in ids:
        a = reader.by_id[int(key)]
        out["by_id"][int(key)] = (tuple(np.asarray(a.point).tolist()), tuple(a.props),
                                  tuple(tuple(int(s) for s in rel) for rel in a.segments))
    for rel, keys in segments.items():
        out["related"][rel] = {int(k): sorted(int(a.id) for a in reader.relationships[rel][k])
                               for k in keys}
    for level, spec in zip(reader.spatial, reader.metadata["spatial"]):
        futures = {cell: level.get(cell) for cell in np.ndindex(*spec["grid_shape"])}
        cells = {cell: [int(a.id) for a in found] for cell, found in
                 ((cell, future.result()) for cell, future in futures.items()) if found}
        out["spatial"].append((spec["limit"], spec["grid_shape"], cells))
    return out
