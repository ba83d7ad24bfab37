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
    `ntclass view` (which serves the working directory at `served_at`, and a local raw
    outside it under `/@abs/<absolute path>`)."""
    address = parse_container(container)
    fmt = FORMATS.get(address.driver or kind, kind)
    if address.remote:
        base = address.location.rstrip("/")
    else:
        relative = os.path.relpath(address.location)
        # `ntclass view` serves the project folder, and a raw outside it under /@abs
        inside_project = relative.split(os.sep)[0] != os.pardir
        path = relative if inside_project else "@abs" + os.path.abspath(address.location)
        base = served_at.rstrip("/") + "/" + path.replace(os.sep, "/")
    inside = "" if fmt == "precomputed" else "/" + dataset.strip("/")
    return f"{fmt}://{base}{inside}"


def raw_axis_names(container: str, dataset: str, fmt: str) -> list[str]:
    """The names neuroglancer gives the raw's axes: those in its metadata, else d0, d1, d2
    (precomputed: x, y, z)."""
    if fmt == "precomputed":
        return ["x", "y", "z"]
    address, inside = parse_container(container), dataset.strip("/")
    key, field = {"zarr2": (".zattrs", "_ARRAY_DIMENSIONS"), "zarr3": ("zarr.json",
                  "dimension_names"), "n5": ("attributes.json", "axes")}[fmt]
    names = (address.read_json(f"{inside}/{key}" if inside else key) or {}).get(field)
    if fmt == "zarr3" and names:
        names = [n or f"d{i}" for i, n in enumerate(names)]
    return list(names) if names else ["d0", "d1", "d2"]


def raw_layer_source(raw: str, axis_names: Sequence[str], voxel_size: Sequence[int]
                     ) -> str | dict:
    """The raw's source with its axes scaled in nm and named x, y, z: zarr and N5 rarely
    carry either in a form neuroglancer reads (it would show axes d0, d1, d2 of one metre
    each). Zarr's axes are z, y, x as ntclass reads them; N5 lists its axes reversed."""
    if raw.startswith("precomputed://"):
        return raw
    vz, vy, vx = voxel_size
    axes = [("z", vz), ("y", vy), ("x", vx)]
    if raw.startswith("n5://"):
        axes.reverse()
    return {"url": raw, "transform": {
        "inputDimensions": {n: [v * 1e-9, "m"] for n, (_, v) in zip(axis_names, axes)},
        "outputDimensions": {a: [v * 1e-9, "m"] for a, v in axes}}}


def state(*, classes: Sequence[str], annotations_url: str, segments_url: str,
          raw: str | None, raw_axes: Sequence[str] = (), voxel_size: Sequence[int],
          centre_nm: Sequence[float], palette: str, segmentation: str | None, name: str) -> dict:
    """The neuroglancer state as JSON, built as a `neuroglancer.ViewerState` (voxel_size and
    centre_nm in z, y, x; raw_axes: the names neuroglancer gives the raw's axes, see
    `raw_axis_names`)."""
    import neuroglancer

    vz, vy, vx = voxel_size
    value = neuroglancer.ViewerState()
    value.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="m",
                                                    scales=[vx * 1e-9, vy * 1e-9, vz * 1e-9])
    z, y, x = centre_nm
    value.position = [x / vx, y / vy, z / vz]
    value.cross_section_scale = 1
    value.projection_scale = 4096
    if raw:
        value.layers.append(name="EM", layer=neuroglancer.ImageLayer(
            source=raw_layer_source(raw, raw_axes, voxel_size)))
    synapses = neuroglancer.AnnotationLayer(source=f"precomputed://{annotations_url}",
                                            shader=shader(classes, palette))
    if segmentation:
        synapses.linked_segmentation_layer = {"pre_segment": "neurons",
                                              "post_segment": "neurons"}
        synapses.filter_by_segmentation = ["pre_segment"]
    value.layers.append(name=f"synapses {name}", layer=synapses)
    value.layers.append(name="neurons", layer=neuroglancer.SegmentationLayer(
        source=([segmentation] if segmentation else []) + [f"precomputed://{segments_url}"]))
    value.selected_layer.layer = f"synapses {name}"
    value.selected_layer.visible = True
    value.layout = "xy-3d"
    return value.to_json()


def source_urls(layer: dict) -> list[str]:
    """The URLs of a state layer's sources (neuroglancer writes a list of {url, ...})."""
    sources = layer["source"]
    sources = sources if isinstance(sources, list) else [sources]
    return [s if isinstance(s, str) else s["url"] for s in sources]


def state_url(viewer: str, value: dict) -> str:
    """A URL that opens `value` in the viewer at `viewer`."""
    return viewer.rstrip("/") + "/#!" + urllib.parse.quote(
        json.dumps(value, separators=(",", ":")), safe="")


def state_page(url: str, name: str, model: str, target: str, served_at: str) -> str:
    """A small HTML page (for the Snakemake report) that links to the state."""
    from html import escape

    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{escape(name)} in neuroglancer</title></head>
<body style="font-family: sans-serif">
<p><a id="state" href="{escape(url)}" target="_blank">Open {escape(name)} in neuroglancer</a>:
the synapses coloured by transmitter over the EM, and the neuron calls.</p>
<p>Sources of local files are read from {escape(served_at)}: start
<code>ntclass view --model {escape(model)} --target {escape(target)}</code> in the project
folder first (it also prints a URL of neuroglancer's own client, which needs no
internet).</p>
</body></html>
"""
