"""Neuroglancer annotations read back by the test's own decoder of the documented binary
layout (google/neuroglancer, src/datasource/precomputed/annotations.md); sharded indices
through TensorStore's `neuroglancer_uint64_sharded` key-value store."""

from __future__ import annotations

import collections
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorstore as ts
from view_helpers import read_with_neuroglancer

from ntclass.view.annotation_jobs import write_annotations

CLASSES = ["acetylcholine", "gaba", "glutamate", "serotonin"]


def prediction_table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(CLASSES)), n).astype(np.float32)
    # a dense cluster, so that cells must split, and a spread of points
    loc = np.concatenate([rng.normal((2000, 8000, 9000), (80, 300, 300), (n // 2, 3)),
                          rng.uniform((0, 0, 0), (4000, 20000, 30000), (n - n // 2, 3))])
    table = pd.DataFrame({"synapse_id": rng.choice(10**12, n, replace=False) + 1,
                          "z": loc[:, 0], "y": loc[:, 1], "x": loc[:, 2],
                          "pre_id": rng.integers(1, 40, n),
                          "post_id": pd.array(rng.integers(100, 400, n), dtype="UInt64")})
    table.loc[::7, "post_id"] = pd.NA  # a synapse without a known partner
    for i, c in enumerate(CLASSES):
        table[c] = probs[:, i]
    table["predicted_nt"] = np.asarray(CLASSES)[probs.argmax(axis=1)]
    table["confidence"] = probs.max(axis=1)
    return table


class Decoder:
    """Reads an annotation collection as the spec describes it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.info = json.loads((folder / "info").read_text())
        props = self.info["properties"]
        # 4-byte properties first, then 1-byte ones, then padding to 4
        self.order = ([p for p in props if p["type"] in ("float32", "uint32", "int32")]
                      + [p for p in props if p["type"] in ("uint8", "int8")])
        size = 12 + sum(4 if p["type"].endswith("32") else 1 for p in self.order)
        self.record = (size + 3) // 4 * 4

    def decode_record(self, raw: bytes) -> dict:
        x, y, z = struct.unpack_from("<3f", raw, 0)
        out, offset = {"x": x, "y": y, "z": z}, 12
        for p in self.order:
            fmt = {"float32": "<f", "uint8": "<B"}[p["type"]]
            out[p["id"]] = struct.unpack_from(fmt, raw, offset)[0]
            offset += struct.calcsize(fmt)
        return out

    def index(self, spec: dict) -> dict[int, bytes]:
        """key -> value of a uint64 index, sharded or one file per key."""
        path = self.folder / spec["key"]
        if "sharding" not in spec:
            return {int(p.name) if p.name.isdigit() else p.name: p.read_bytes()
                    for p in path.iterdir()}
        store = ts.KvStore.open({"driver": "neuroglancer_uint64_sharded",
                                 "metadata": spec["sharding"],
                                 "base": f"file://{path}/"}).result()
        return {int.from_bytes(k, "big"): store.read(k).result().value
                for k in store.list().result()}

    def multiple(self, raw: bytes) -> list[tuple[int, dict]]:
        count = struct.unpack_from("<Q", raw, 0)[0]
        records = [self.decode_record(raw[8 + i * self.record:8 + (i + 1) * self.record])
                   for i in range(count)]
        ids = struct.unpack_from(f"<{count}Q", raw, 8 + count * self.record)
        assert len(raw) == 8 + count * (self.record + 8)
        return list(zip(ids, records))

    def by_id(self) -> dict[int, tuple[dict, list[list[int]]]]:
        out = {}
        for key, raw in self.index(self.info["by_id"]).items():
            record = self.decode_record(raw[:self.record])
            offset, related = self.record, []
            for _ in self.info["relationships"]:
                count = struct.unpack_from("<I", raw, offset)[0]
                related.append(list(struct.unpack_from(f"<{count}Q", raw, offset + 4)))
                offset += 4 + 8 * count
            assert offset == len(raw)
            out[key] = (record, related)
        return out


def cell_of(key, grid_shape) -> list[int]:
    """A spatial index key as a grid cell: the file name `x_y_z`, or (sharded) the
    compressed Morton code, whose bit k belongs to the dimensions that still have bits."""
    if isinstance(key, str):
        return [int(v) for v in key.split("_")]
    bits = [int(np.ceil(np.log2(g))) for g in grid_shape]
    cell, k = [0, 0, 0], 0
    for i in range(max(bits)):
        for d in range(3):
            if i < bits[d]:
                cell[d] |= ((key >> k) & 1) << i
                k += 1
    return cell


@pytest.mark.parametrize("sharded", [False, True])
def test_annotations_read_back_equal_the_prediction_table(tmp_path, monkeypatch, sharded):
    table = prediction_table(3000)
    table.to_parquet(tmp_path / "predictions.parquet")
    out = tmp_path / "annotations"
    provenance = {"model": "m", "checkpoint_sha256": "ab" * 32}
    write_annotations(str(tmp_path / "predictions.parquet"), out, CLASSES, tmp_path / "work",
                      limit=100, sharded=sharded,
                      extra_info={"ntclass_provenance": provenance})
    decoded = Decoder(out)
    info = decoded.info
    assert info["ntclass_provenance"] == provenance  # beside the spec's keys
    assert info["annotation_type"] == "POINT" and list(info["dimensions"]) == ["x", "y", "z"]
    nt = next(p for p in info["properties"] if p["id"] == "nt")
    assert nt["enum_labels"] == CLASSES and nt["enum_values"] == [0, 1, 2, 3]
    truth = table.set_index("synapse_id")

    by_id = decoded.by_id()
    assert sorted(by_id) == sorted(truth.index)
    for key, (record, (pre, post)) in by_id.items():
        row = truth.loc[key]
        assert np.allclose([record["x"], record["y"], record["z"]], [row.x, row.y, row.z],
                           rtol=1e-6)
        assert CLASSES[record["nt"]] == row.predicted_nt
        assert np.isclose(record["confidence"], row.confidence)
        assert all(np.isclose(record[f"p_{c}"], row[c]) for c in CLASSES)
        assert pre == [row.pre_id]
        assert post == ([] if pd.isna(row.post_id) else [row.post_id])

    # the spatial index: every synapse exactly once over the levels, no cell over its limit,
    # each inside its cell, and the bounds hold every point (upper bound exclusive)
    lower, upper = np.array(info["lower_bound"]), np.array(info["upper_bound"])
    seen = []
    for level in info["spatial"]:
        assert np.allclose(np.array(level["grid_shape"]) * level["chunk_size"], upper - lower)
        for key, raw in decoded.index(level).items():
            found = decoded.multiple(raw)
            assert 0 < len(found) <= level["limit"]
            cell = np.array(cell_of(key, level["grid_shape"]))
            begin = lower + cell * level["chunk_size"]
            for synapse, record in found:
                point = np.array([record["x"], record["y"], record["z"]])
                assert np.all(point >= begin) and np.all(point < begin + level["chunk_size"])
                seen.append(synapse)
    assert len(info["spatial"]) > 2  # the cluster needed finer levels
    assert sorted(seen) == sorted(truth.index)

    for rel, column in (("pre_segment", "pre_id"), ("post_segment", "post_id")):
        spec = next(r for r in info["relationships"] if r["id"] == rel)
        index = decoded.index(spec)
        expected = truth[column].dropna()
        assert sorted(index) == sorted(expected.unique())
        for segment, raw in index.items():
            assert sorted(s for s, _ in decoded.multiple(raw)) == sorted(
                expected[expected == segment].index)


def test_the_shader_filters_on_the_layers_nt_and_confidence_properties():
    """The state's shader reads only properties the annotation info declares: the
    confidence slider hides points under it, and the colour follows the nt enum's order."""
    import re

    from ntclass.view.annotations import properties
    from ntclass.view.state import colours, shader

    code = shader(CLASSES, "synister")
    declared = {p["id"]: p for p in properties(CLASSES)}
    read = set(re.findall(r"prop_(\w+)\(\)", code))
    assert read == {"confidence", "nt"} and read <= set(declared)
    assert declared["confidence"]["type"] == "float32"
    assert "#uicontrol float min_confidence slider(min=0, max=1, default=0)" in code
    assert "if (prop_confidence() < min_confidence) { discard; }" in code
    enum = declared["nt"]
    for value, name in zip(enum["enum_values"], enum["enum_labels"]):
        hexa = colours(CLASSES, "synister")[name]
        rgb = ", ".join(f"{int(hexa[k:k + 2], 16) / 255:.3f}" for k in (1, 3, 5))
        assert f"if (nt == {value}u) {{ colour = vec3({rgb}); }}  // {name}" in code


@pytest.fixture
def served_project(tmp_path, monkeypatch):
    """A project folder with one view state and a raw outside it, served by `ntclass
    view`'s file server on a free port."""
    from ntclass.view.serve import FileServer, served_state
    from ntclass.view.state import raw_source, state

    project, outside = tmp_path / "project", tmp_path / "elsewhere" / "em.zarr"
    view = project / "results/view/m/t"
    view.mkdir(parents=True)
    (view / "annotations").mkdir()
    (view / "annotations/info").write_bytes(bytes(range(256)) * 4)
    (outside / "raw").mkdir(parents=True)
    (outside / "raw/.zarray").write_text("{}")
    (tmp_path / "elsewhere/secret.txt").write_text("not served")
    written_for = "http://127.0.0.1:9000"
    monkeypatch.chdir(project)  # the workflow writes states from the project folder
    value = state(classes=CLASSES, raw=raw_source(str(outside), "raw", "zarr", written_for),
                  raw_axes=["d0", "d1", "d2"], voxel_size=(40, 4, 4),
                  annotations_url=f"{written_for}/results/view/m/t/annotations",
                  segments_url=f"{written_for}/results/view/m/t/segment_properties",
                  centre_nm=(0, 0, 0), palette="synister", segmentation=None, name="m t")
    (view / "state.json").write_text(json.dumps(value))
    server = FileServer(project, "127.0.0.1", 0)
    address = f"http://127.0.0.1:{server.port}"
    chosen = served_state(project, "m", "t", address)
    server.allow(chosen.outside_roots)
    yield address, chosen, outside
    server.stop()


def fetch(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), b""


def test_view_server_sends_cors_headers_and_byte_ranges(served_project):
    address, _, _ = served_project
    info = f"{address}/results/view/m/t/annotations/info"
    whole = bytes(range(256)) * 4
    status, headers, body = fetch(info, {"Origin": "https://neuroglancer-demo.appspot.com"})
    assert (status, body) == (200, whole)
    assert headers["Access-Control-Allow-Origin"] == "*"
    for asked, part in [("bytes=10-19", whole[10:20]), ("bytes=1000-", whole[1000:]),
                        ("bytes=-5", whole[-5:]), ("bytes=1020-5000", whole[1020:])]:
        status, headers, body = fetch(info, {"Range": asked})
        assert (status, body) == (206, part), asked
        first = len(whole) - len(part) if asked != "bytes=10-19" else 10
        assert headers["Content-Range"] == (
            f"bytes {first}-{first + len(part) - 1}/{len(whole)}"), asked
    assert fetch(info, {"Range": "bytes=5000-"})[0] == 416


def test_view_server_moves_the_state_and_serves_nothing_else(served_project):
    address, chosen, outside = served_project
    raw = chosen.state["layers"][0]["source"][0]["url"]
    assert raw == f"zarr2://{address}/@abs{outside}/raw"
    annotations = chosen.state["layers"][1]["source"]
    assert annotations == [{"url": f"precomputed://{address}/results/view/m/t/annotations"}]
    assert fetch(f"{address}/@abs{outside}/raw/.zarray")[:3:2] == (200, b"{}")
    for refused in ["/@abs" + str(outside.parent / "secret.txt"), "/results/view/",
                    "/../elsewhere/secret.txt", "/%2e%2e/elsewhere/secret.txt",
                    "/@abs" + str(outside) + "/../secret.txt"]:
        assert fetch(address + refused)[0] == 404, refused


def test_view_refuses_an_ambiguous_or_missing_view(tmp_path):
    from ntclass.errors import NtclassError
    from ntclass.view.serve import choose_state

    with pytest.raises(NtclassError, match="no view of model any and target any .* run the "
                       "workflow with view.enabled"):
        choose_state(tmp_path, None, None)
    for m, t in [("a", "x"), ("b", "x")]:
        (tmp_path / "results/view" / m / t).mkdir(parents=True)
        (tmp_path / "results/view" / m / t / "state.json").write_text("{}")
    with pytest.raises(NtclassError, match=r"several views .* \(a/x, b/x\): choose one with "
                       "--model and --target"):
        choose_state(tmp_path, None, "x")
    assert choose_state(tmp_path, "b", None) == ("b", "x")


FAFB_NM = np.array([1000e3, 400e3, 280e3])  # x, y, z: about FAFB's neuropil


def clustered_table(n: int, clusters: int = 200, seed: int = 0) -> pd.DataFrame:
    """n synapses in neuropil-like clusters (5-40 um) over FAFB's extent, with about one
    pre-synaptic segment per 300 synapses and one post-synaptic per 100."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.1, 0.9, (clusters, 3)) * FAFB_NM
    spreads = rng.uniform(5e3, 40e3, clusters)
    which = rng.integers(0, clusters, n)
    loc = np.clip(rng.normal(centres[which], spreads[which, None]), 0, FAFB_NM)
    probs = rng.dirichlet(np.ones(len(CLASSES)), n).astype(np.float32)
    table = pd.DataFrame({"synapse_id": np.arange(n, dtype=np.uint64) + 2**60,
                          "x": loc[:, 0], "y": loc[:, 1], "z": loc[:, 2],
                          "pre_id": rng.integers(1, n // 300 + 2, n).astype(np.uint64),
                          "post_id": rng.integers(1, n // 100 + 2, n).astype(np.uint64)})
    for i, c in enumerate(CLASSES):
        table[c] = probs[:, i]
    table["predicted_nt"] = np.asarray(CLASSES)[probs.argmax(axis=1)]
    table["confidence"] = probs.max(axis=1)
    return table


def spatial_cells(decoded: Decoder, level: dict) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """cell -> (ids, points) of one spatial level, by the spec's multiple encoding."""
    out = {}
    for key, raw in decoded.index(level).items():
        count = int(np.frombuffer(raw, "<u8", 1)[0])
        assert len(raw) == 8 + count * (decoded.record + 8)
        records = np.frombuffer(raw, np.uint8, count * decoded.record, 8)
        points = records.reshape(count, decoded.record)[:, :12].copy().view("<f4")
        ids = np.frombuffer(raw, "<u8", count, 8 + count * decoded.record)
        out[tuple(cell_of(key, level["grid_shape"]))] = (ids, points.reshape(count, 3))
    return out


def test_spatial_index_samples_clustered_synapses_by_their_densest_cell(tmp_path):
    from neuroglancer.read_precomputed_annotations import AnnotationReader

    n, limit = 100_000, 1000
    table = clustered_table(n)
    table.to_parquet(tmp_path / "predictions.parquet")
    out = tmp_path / "annotations"
    info = write_annotations(str(tmp_path / "predictions.parquet"), out, CLASSES,
                             tmp_path / "work", limit=limit)
    lower, specs = np.array(info["lower_bound"]), info["spatial"]
    levels = [spatial_cells(Decoder(out), spec) for spec in specs]
    counts = [sum(len(ids) for ids, _ in cells.values()) for cells in levels]

    # every synapse exactly once, each in its cell, no cell over its limit
    seen = np.concatenate([ids for cells in levels for ids, _ in cells.values()])
    assert np.array_equal(np.sort(seen), np.sort(table.synapse_id.to_numpy()))
    for spec, cells in zip(specs, levels):
        assert spec["limit"] == limit
        for cell, (ids, points) in cells.items():
            assert 0 < len(ids) <= limit
            begin = lower + np.array(cell) * spec["chunk_size"]
            assert np.all(points >= begin) and np.all(points < begin + spec["chunk_size"])

    # the spec's sampling: each level takes min(1, limit / its densest cell's count) of
    # what remains, in every cell alike, so that cell is at (or, capped, near) the limit;
    # the levels stop at the first whose cells all fit, far above the 1-nm floor
    points = table[["x", "y", "z"]].to_numpy(np.float32).astype(np.float64)  # as stored
    rows, remaining = pd.Index(table.synapse_id), np.ones(n, bool)
    for index, (spec, cells) in enumerate(zip(specs, levels)):
        cell = np.floor((points[remaining] - lower) / spec["chunk_size"]).astype(np.int64)
        linear = np.ravel_multi_index(cell.T, spec["grid_shape"])
        densest = np.unique(linear, return_counts=True)[1].max()
        share = counts[index] / remaining.sum()
        if index < len(specs) - 1:
            assert densest > limit, index
            assert share == pytest.approx(limit / densest, rel=0.1), index
            assert max(len(ids) for ids, _ in cells.values()) >= 0.9 * limit, index
        else:
            assert densest <= limit and share == 1.0
        emitted = rows.get_indexer(np.concatenate([ids for ids, _ in cells.values()]))
        assert remaining[emitted].all()
        remaining[emitted] = False
    assert counts[-1] <= n / 2, counts
    assert min(specs[-1]["chunk_size"]) > 10_000, specs[-1]  # nm
    assert len(specs) < 20  # the old writer reached 21 levels, down to cells under 1 nm

    # neuroglancer's own reader, asked for a box inside one cell of the finest level (so
    # one cell of every level), returns exactly the synapses inside, each once
    cells = levels[-1]
    fullest = max(cells, key=lambda c: len(cells[c][0]))
    begin = lower + np.array(fullest) * specs[-1]["chunk_size"]
    box = begin + 1, begin + np.array(specs[-1]["chunk_size"]) - 1
    reader = AnnotationReader(f"file://{out}")
    found = [int(a.id) for a in reader.get_within_spatial_bounds(lower_bound=box[0],
                                                                 upper_bound=box[1])]
    inside = np.all((points >= box[0]) & (points <= box[1]), axis=1)
    assert inside.sum() > 0.9 * len(cells[fullest][0])
    assert sorted(found) == sorted(table.synapse_id[inside].tolist())


def test_view_paths_of_a_remote_default_storage_and_outside_the_project(tmp_path,
                                                                        monkeypatch):
    """A job's local copy of a file in a bucket (Snakemake's .snakemake/storage/<provider>/
    <bucket>/<key>) is served as <bucket>/<key>; a view's file outside the working
    directory is refused, never given a path that reaches nothing."""
    from ntclass.errors import NtclassError
    from ntclass.view.state import served_path, view_path

    monkeypatch.chdir(tmp_path)
    copy = ".snakemake/storage/s3/lab-bucket/run1/results/view/m/t/annotations"
    assert view_path(copy) == "lab-bucket/run1/results/view/m/t/annotations"
    assert view_path("nt/results/view/m/t/annotations") == "nt/results/view/m/t/annotations"
    assert served_path(str(tmp_path.parent / "raw.zarr")) is None
    with pytest.raises(NtclassError, match="lies outside the working directory"):
        view_path("/scratch/storage/s3/lab-bucket/results/view/m/t/annotations")


def test_parallel_layer_decodes_with_neuroglancer_as_the_one_job_layer(tmp_path):
    from ntclass.view import annotation_jobs

    table = prediction_table(1600, seed=1)
    table.to_parquet(tmp_path / "predictions.parquet")
    ids = table.synapse_id.to_numpy()
    segments = {"pre_segment": sorted(table.pre_id.unique()),
                "post_segment": sorted(int(s) for s in table.post_id.dropna().unique())}
    layers = {}
    for name, options in {"one": {}, "many": {"rows_per_part": 200, "shard_bytes": 10_000,
                                              "minishard_keys": 16}}.items():
        plan = annotation_jobs.plan_annotations(str(tmp_path / "predictions.parquet"), CLASSES,
                                                tmp_path / "plan", 100, True, **options)
        jobs = annotation_jobs.index_shards(plan)
        if name == "many":
            assert len(plan["parts"]) == 8 and len(jobs) > 2 * len(plan["indices"])
        else:
            assert len(plan["parts"]) == 1 and len(jobs) == len(plan["indices"])
        write_annotations(str(tmp_path / "predictions.parquet"), tmp_path / name, CLASSES,
                          tmp_path / f"work-{name}", limit=100, sharded=True, **options)
        layers[name] = read_with_neuroglancer(tmp_path / name, ids, segments)
    assert len(list((tmp_path / "many" / "by_id").iterdir())) > 1
    assert layers["many"] == layers["one"]

    # every annotation once, with its properties and relationships, as the table says
    layer, truth = layers["one"], table.set_index("synapse_id")
    for key, (point, props, (pre, post)) in layer["by_id"].items():
        row = truth.loc[key]
        assert np.allclose(point, [row.x, row.y, row.z], rtol=1e-6)
        assert np.allclose(props[:-1], [row.confidence, *row[CLASSES]])
        assert CLASSES[props[-1]] == row.predicted_nt
        assert pre == (row.pre_id,) and post == (() if pd.isna(row.post_id) else (row.post_id,))
    for rel, column in (("pre_segment", "pre_id"), ("post_segment", "post_id")):
        for segment, found in layer["related"][rel].items():
            assert found == sorted(truth.index[truth[column] == segment])
    # every level decoded, no cell over its limit, every synapse in exactly one level
    assert len(layer["spatial"]) > 2
    seen = []
    for limit, _, cells in layer["spatial"]:
        assert cells and all(0 < len(found) <= limit for found in cells.values())
        seen += [i for found in cells.values() for i in found]
    assert sorted(seen) == sorted(ids.tolist())


def test_a_whole_brain_layer_is_planned_as_many_independent_jobs(tmp_path, monkeypatch):
    """FAFB's 2.4e8 synapses, planned from the count alone (no data: the plan's scan is
    replaced by FAFB's bounds and a uniform sample): every map job and every reduce job
    of by_id and the relationships is independent of the others, and holds a bounded
    share of the layer."""
    from ntclass.view import annotation_jobs as jobs

    n, pre, post = 240_000_000, 130_000, 2_000_000
    rng = np.random.default_rng(0)
    extent = np.array([1_000_000.0, 500_000.0, 280_000.0])  # x, y, z in nm
    sample = rng.uniform(0, 1, (jobs.SAMPLE, 3)) * extent
    keys = {"synapse_id": rng.integers(1, 1 << 40, jobs.SAMPLE, dtype=np.uint64),
            "pre_id": rng.integers(1, pre + 1, jobs.SAMPLE, dtype=np.uint64),
            "post_id": rng.integers(1, post + 1, jobs.SAMPLE, dtype=np.uint64)}
    scan = jobs.Scan(lower=[0.0] * 3, upper=extent.tolist(), distinct=[pre, post],
                     points=sample, keys=keys,
                     key_bits={c: int(v.max()).bit_length() for c, v in keys.items()})
    monkeypatch.setattr(jobs, "_scan", lambda predictions, work, share: scan)
    monkeypatch.setattr(jobs, "_count", lambda predictions: n)
    plan = jobs.plan_annotations("fafb.parquet", CLASSES, tmp_path, sharded=True)
    parts = len(plan["parts"])
    assert parts == -(-n // jobs.ROWS_PER_PART) >= 32
    assert max(b - a for a, b in plan["parts"]) <= jobs.ROWS_PER_PART
    by_index = collections.Counter(index for index, _ in jobs.index_shards(plan))
    # by_id and each relationship: shards of tens of MB, minishards of about 1,000 keys
    size = jobs.record_size(CLASSES)
    for index, keys in ((0, n), (1, pre), (2, post)):
        spec = plan["indices"][index]["sharding"]
        assert by_index[index] == 1 << spec["shard_bits"]
        per_minishard = keys / (1 << (spec["shard_bits"] + spec["minishard_bits"]))
        assert 250 <= per_minishard <= 1000, (index, per_minishard)
    assert by_index[0] >= 32  # by_id alone: 32 independent reduce jobs or more
    shard_mb = n * (size + 24) / by_index[0] / 1e6
    assert 10 <= shard_mb <= 60, shard_mb
    assert sum(by_index.values()) + parts >= 64
    # keys spread evenly over their range: every index is sharded by the keys' top bits
    # (the largest preshift), so that keys near in value, cells near in space, share shards
    bits = [scan.key_bits[c] for c in jobs.ID_COLUMNS] + [
        jobs.morton_bits(spec["grid_shape"]) for spec in plan["indices"][jobs.FIRST_SPATIAL:]]
    for spec, key_bits in zip(plan["indices"], bits):
        sharding = spec["sharding"]
        if sharding["shard_bits"]:
            assert (sharding["preshift_bits"] + sharding["minishard_bits"]
                    + sharding["shard_bits"]) == key_bits, spec["key"]


def test_shards_follow_the_top_bits_of_the_keys_as_far_as_they_stay_even():
    """local_preshift: keys spread over their range get the top bits (a run of nearby
    keys lands in one or two shards); keys crowded into part of the range get a smaller
    preshift, at which no shard holds over BALANCE times an even share."""
    from ntclass.view.sharded import BALANCE, local_preshift, shard_of, sharding_spec

    rng = np.random.default_rng(1)
    spec = sharding_spec(1 << 20, 1 << 30)
    assert spec["shard_bits"] >= 3
    even = rng.integers(0, 1 << 32, 1 << 16, dtype=np.uint64)
    top = local_preshift(even, 32, spec)
    assert top == 32 - spec["minishard_bits"] - spec["shard_bits"]
    nearby = np.sort(even)[:len(even) // 100]  # 1 % of the keys, the lowest
    assert len(np.unique(shard_of(nearby, {**spec, "preshift_bits": top}))) <= 2
    assert len(np.unique(shard_of(nearby, spec))) == 1 << spec["shard_bits"]  # preshift 0
    crowded = np.concatenate([rng.integers(0, 1 << 28, 1 << 16, dtype=np.uint64),
                              rng.integers(0, 1 << 32, 1 << 12, dtype=np.uint64)])
    preshift = local_preshift(crowded, 32, spec)
    assert 0 < preshift < top
    counts = np.bincount(shard_of(crowded, {**spec, "preshift_bits": preshift}))
    assert counts.max() <= BALANCE * len(crowded) / (1 << spec["shard_bits"])


def shard_digests(folder: Path) -> dict[str, bytes]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).digest()
            for p in folder.rglob("*.shard")}


def numbered_in_space(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with its synapse ids renumbered block by block (Morton order of 1 um
    cells), as a block-wise synapse detection numbers what it finds."""
    from ntclass.predict.targets import morton_cells

    order = np.argsort(morton_cells(table[["z", "y", "x"]].to_numpy(), (1000,) * 3),
                       kind="stable")
    ids = np.empty(len(table), np.int64)
    ids[order] = np.arange(1, len(table) + 1)
    return table.assign(synapse_id=ids)


def changed_shards(tmp_path: Path, table: pd.DataFrame) -> dict[str, list[int]]:
    """The layer of `table` written before and after 1 % of its synapses, the nearest to
    its centre, are predicted anew: per index (the spatial levels together), the shard
    files whose bytes changed and all of them."""
    table.to_parquet(tmp_path / "before.parquet")
    options = {"limit": 100, "sharded": True, "minishard_keys": 64, "shard_bytes": 20_000}
    write_annotations(str(tmp_path / "before.parquet"), tmp_path / "before", CLASSES,
                      tmp_path / "w1", **options)
    centre = table[["x", "y", "z"]].median().to_numpy()
    nearest = np.argsort(np.linalg.norm(table[["x", "y", "z"]].to_numpy() - centre, axis=1))
    changed = nearest[:len(table) // 100]
    after = table.copy()
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(len(CLASSES)), len(changed)).astype(np.float32)
    after.loc[after.index[changed], CLASSES] = probs
    after.loc[after.index[changed], "confidence"] = probs.max(axis=1)
    after.loc[after.index[changed], "predicted_nt"] = np.asarray(CLASSES)[probs.argmax(axis=1)]
    after.to_parquet(tmp_path / "after.parquet")
    write_annotations(str(tmp_path / "after.parquet"), tmp_path / "after", CLASSES,
                      tmp_path / "w2", **options)
    before, now = shard_digests(tmp_path / "before"), shard_digests(tmp_path / "after")
    assert before.keys() == now.keys()
    rewritten: dict[str, list[int]] = {}
    for name, digest in before.items():
        index = name.split("/")[0]
        index = "spatial" if index.startswith("spatial") else index
        rewritten.setdefault(index, [0, 0])[1] += 1
        rewritten[index][0] += digest != now[name]
    print({k: f"{a}/{b}" for k, (a, b) in rewritten.items()},
          f"{sum(a for a, _ in rewritten.values())} of {len(before)} shard files changed")
    return rewritten


@pytest.mark.parametrize("ids", ["random", "numbered in space"])
def test_a_rerun_after_one_percent_changed_in_one_place_rewrites_that_places_shards(
        tmp_path, ids):
    """1 % of the synapses re-predicted in one place (as after new raw there), positions
    and ids unchanged: the plan keeps its levels and shardings, and a shard file without
    a changed synapse comes out byte for byte the same. by_id is sharded by high bits of
    the ids as far as its shards stay even, so ids numbered in space (block-wise
    detection) change a third of its shards: 21 of 64 measured, 64 of 64 when sharded by
    the low bits. Random ids change nearly all (58/59), and so do the relationships,
    keyed by segment, which a place does not bound; the spatial levels change about half
    (33-35 of 60 measured): on a layer this small most levels are one shard, and this
    clustered layer's levels are too uneven for their top bits. Issue 28's 10 % of all
    files is met by neither (65/133 and 100/128)."""
    table = prediction_table(20_000, seed=3)
    rewritten = changed_shards(tmp_path, numbered_in_space(table) if ids != "random"
                               else table)
    spatial, files = rewritten["spatial"]
    assert 0 < spatial < 0.75 * files, rewritten
    assert sum(a for a, _ in rewritten.values()) < sum(b for _, b in rewritten.values())
    if ids != "random":
        by_id, files = rewritten["by_id"]
        assert 0 < by_id <= 0.4 * files, rewritten
