"""A neuroglancer state per model and target: the raw, the synapses coloured by
transmitter with a confidence slider, and the lab's segmentation with the neuron calls."""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Sequence

from ntclass.stores import parse_container

# The Synister paper's colours and FlyWire Codex's (Codex shows no tyramine: the paper's).
PALETTES = {
    "synister": {"acetylcholine": "#EB5D25", "glutamate": "#00A67D", "gaba": "#2A68AE",
                 "serotonin": "#D5A848", "dopamine": "#B87969", "octopamine": "#725C98",
                 "tyramine": "#FF1493"},
    "codex": {"acetylcholine": "#95A3CE", "gaba": "#D5A848", "glutamate": "#86A859",
              "octopamine": "#725C98", "serotonin": "#8C6295", "dopamine": "#B87969",
              "tyramine": "#FF1493"},
}
OTHER = "#888888"  # classes outside the palette (e.g. neither)
FORMATS = {"neuroglancer_precomputed": "precomputed", "zarr": "zarr2", "zarr3": "zarr3",
           "n5": "n5"}


def colours(classes: Sequence[str], palette: str) -> dict[str, str]:
    chosen = PALETTES[palette]
    return {c: chosen.get(c, OTHER) for c in classes}


def shader(classes: Sequence[str], palette: str) -> str:
    """The annotation layer's shader: a colour per transmitter (the `nt` enum), points
    under the confidence slider hidden."""
    lines = ["#uicontrol float min_confidence slider(min=0, max=1, default=0)",
             "void main() {", "  if (prop_confidence() < min_confidence) { discard; }",
             "  uint nt = prop_nt();", "  vec3 colour = vec3(0.53);"]
    for i, (name, hexa) in enumerate(colours(classes, palette).items()):
        rgb = ", ".join(f"{int(hexa[k:k + 2], 16) / 255:.3f}" for k in (1, 3, 5))
        lines.append(f"  if (nt == {i}u) {{ colour = vec3({rgb}); }}  // {name}")
    lines += ["  setPointMarkerSize(8.0);", "  setColor(colour);", "}"]
    return "\n".join(lines)


def raw_source(container: str, dataset: str, kind: str, served_at: str) -> str:
    """The raw as a neuroglancer source: a remote one as given, a local one through
    `ntclass view` (which serves the working directory at `served_at`)."""
    address = parse_container(container)
    fmt = FORMATS.get(address.driver or kind, kind)
    if address.remote:
        base = address.location.rstrip("/")
    else:
        base = served_at.rstrip("/") + "/" + os.path.relpath(address.location).replace(
            os.sep, "/")
    inside = "" if fmt == "precomputed" else "/" + dataset.strip("/")
    return f"{fmt}://{base}{inside}"


def state(*, classes: Sequence[str], annotations_url: str, segments_url: str,
          raw: str | None, voxel_size: Sequence[int], centre_nm: Sequence[float],
          palette: str, segmentation: str | None, name: str) -> dict:
    """The neuroglancer state (voxel_size and centre_nm in z, y, x)."""
    vz, vy, vx = voxel_size
    layers = []
    if raw:
        layers.append({"type": "image", "name": "EM", "source": raw})
    synapses = {"type": "annotation", "name": f"synapses {name}",
                "source": f"precomputed://{annotations_url}",
                "shader": shader(classes, palette)}
    neurons = {"type": "segmentation", "name": "neurons",
               "source": ([segmentation] if segmentation else [])
               + [f"precomputed://{segments_url}"]}
    if segmentation:
        synapses["linkedSegmentationLayer"] = {"pre_segment": "neurons",
                                               "post_segment": "neurons"}
        synapses["filterBySegmentation"] = ["pre_segment"]
    layers += [synapses, neurons]
    z, y, x = centre_nm
    return {"dimensions": {"x": [vx * 1e-9, "m"], "y": [vy * 1e-9, "m"],
                           "z": [vz * 1e-9, "m"]},
            "position": [x / vx, y / vy, z / vz], "crossSectionScale": 1,
            "projectionScale": 4096, "layers": layers,
            "selectedLayer": {"layer": synapses["name"], "visible": True},
            "layout": "xy-3d"}


def state_url(viewer: str, value: dict) -> str:
    """A URL that opens `value` in the viewer at `viewer`."""
    return viewer.rstrip("/") + "/#!" + urllib.parse.quote(
        json.dumps(value, separators=(",", ":")), safe="")
