"""The neuroglancer layers of one model and target, as the workflow writes them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ntclass.io import NamedOutputs, atomic_path
from ntclass.settings import View
from ntclass.sql import duckdb_connection, query_one
from ntclass.view.annotation_jobs import assemble_annotations, write_annotations
from ntclass.view.segments import write_segment_properties
from ntclass.view.state import (
    raw_axis_names,
    raw_source,
    state,
    state_page,
    state_url,
    view_path,
)
from ntclass.volumes import open_raw


@dataclass(frozen=True)
class ViewOutputs(NamedOutputs):
    """The files of one model and target's view, named as the rule's outputs."""

    annotations: str
    segments: str
    state: str
    url: str
    page: str


def write_view(predictions: str, neurons: str, outputs: ViewOutputs, *,
               classes: Sequence[str], settings: View, raw: Sequence[str] | None,
               voxel_size: Sequence[int] | None, name: str, model: str, target: str,
               metrics: str | None = None,
               layer: tuple[dict, Sequence[tuple[int, str]]] | None = None) -> dict:
    """Annotations, segment properties and the state (JSON and URL); returns the state.
    The provenance in `metrics` (metrics.json) goes into the annotations' info. `layer`:
    the plan and the reduced shards (index, folder) of an annotation layer written by
    jobs, assembled here; None writes the whole layer here."""
    work = Path(outputs.annotations).parent / ".annotations-work"
    # what made the layer, for whoever gets only the layer
    provenance = json.loads(Path(metrics).read_text()).get("provenance") if metrics else None
    extra_info = {"ntclass_provenance": provenance} if provenance else None
    if layer is None:
        write_annotations(predictions, Path(outputs.annotations), classes, work,
                          limit=settings.limit, extra_info=extra_info)
    else:
        assemble_annotations(*layer, Path(outputs.annotations), extra_info=extra_info)
    write_segment_properties(pd.read_csv(neurons, dtype={"predicted_nt": "string"}),
                             Path(outputs.segments))
    source, axes = None, ()
    if raw:
        volume = open_raw(raw[0], raw[1], voxel_size)
        source = raw_source(raw[0], raw[1], volume.kind, settings.served_at)
        axes = raw_axis_names(raw[0], raw[1], source.partition("://")[0])
        voxel_size = volume.voxel_size
    con = duckdb_connection(work.parent)
    centre = query_one(con, f"SELECT median(z), median(y), median(x) FROM '{predictions}'")
    con.close()
    served = settings.served_at.rstrip("/")
    value = state(classes=classes, raw=source, raw_axes=axes, voxel_size=voxel_size or (1, 1, 1),
                  annotations_url=f"{served}/{view_path(outputs.annotations)}",
                  segments_url=f"{served}/{view_path(outputs.segments)}",
                  centre_nm=centre, palette=settings.palette,
                  segmentation=settings.segmentation, name=name)
    with atomic_path(outputs.state) as tmp:
        tmp.write_text(json.dumps(value, indent=1))
    url = state_url(settings.viewer, value)
    with atomic_path(outputs.url) as tmp:
        tmp.write_text(url + "\n")
    with atomic_path(outputs.page) as tmp:
        tmp.write_text(state_page(url, name, model, target, settings.served_at))
    return value
