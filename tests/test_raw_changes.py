"""Predictions after the raw changed in place: the prediction cache is keyed on what the
raw of each cube is now (predict/rawstamps), so a rerun predicts again exactly the
synapses whose cubes touch what changed, and gives what a clean run gives."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tensorstore as ts
import torch
import zarr
from conftest import CLASSES
from remote_servers import BUCKET, S3_KEYS, http_server, n5, precomputed, s3_server

from ntclass.errors import NtclassError
from ntclass.models import build_model
from ntclass.models.modelfile import model_record
from ntclass.predict.rawstamps import (
    VolumeStamps,
    compressed_morton_code,
    murmurhash3_x86_128_low64,
    storage_layout,
)
from ntclass.predict.results import merge_target
from ntclass.predict.shard import PredictConfig, predict_shard
from ntclass.predict.targets import shard_file, write_target
from ntclass.settings import Partition, Prediction
from ntclass.sources.kinds import source_of
from ntclass.volumes import open_raw, open_tensorstore, write_zarr_volume

VOXEL = (40, 4, 4)
SHAPE = (8, 48, 48)
CHUNK = (8, 64, 64)
EXTENT = (24, 256, 256)  # voxels: 3 x 4 x 4 chunks
PARAMS = {"fmaps": 4, "fc_size": 16, "dropout": 0.0, "global_pool": True,
          "downsample_factors": [[1, 2, 2], [1, 2, 2], [2, 2, 2]]}
N = 40


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    torch.manual_seed(0)
    net = build_model("vgg3d", list(SHAPE), len(CLASSES), **PARAMS).eval()
    # an untrained net answers nearly the same to any input: without biases and with a
    # steep output layer it tells the old raw's texture from the new one's
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
        [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1].weight *= 100
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(model_record(net, architecture="vgg3d", model_params=PARAMS,
                            classes=list(CLASSES), input_shape=list(SHAPE),
                            voxel_size=list(VOXEL), intensity={"uint8": [0.0, 255.0]},
                            iteration=1, crop="ntclass"), path)
    return str(path)


def em(seed: int) -> np.ndarray:
    """A texture of square blobs: the old raw (seed 1) coarse, the new one (2) fine, so
    that the model's answers to them differ."""
    rng = np.random.default_rng(seed)
    grain = 8 if seed == 1 else 1
    coarse = rng.integers(0, 256, size=(EXTENT[0], EXTENT[1] // grain, EXTENT[2] // grain))
    return np.repeat(np.repeat(coarse, grain, axis=1), grain, axis=2).astype(np.uint8)


def locations() -> np.ndarray:
    """N synapses (nm) whose cubes lie inside the volume, at voxel centres."""
    rng = np.random.default_rng(1)
    lo, hi = np.array(SHAPE) // 2, np.array(EXTENT) - np.array(SHAPE) // 2
    voxels = rng.integers(lo, hi, size=(N, 3))
    return (voxels + 0.5) * VOXEL


def shard(folder: Path, container: str, dataset: str, n: int = N) -> Path:
    """The first `n` synapses on `container` as a one-shard target; its shard file."""
    loc = locations()[:n]
    table = pd.DataFrame({"synapse_id": np.arange(n) + 1, "z": loc[:, 0], "y": loc[:, 1],
                          "x": loc[:, 2], "pre_id": 1, "post_id": 2})
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "synapses.csv", index=False)
    target = source_of({"type": "table", "table": str(folder / "synapses.csv"),
                        "raw_container": container, "raw_dataset": dataset}, "targets.t")
    write_target(None, target, CLASSES, None,
                 Partition(shards=1, synapses_per_shard=None, block_size=(320, 256, 256),
                           read_batch_rows=1000), str(folder / "target"))
    return folder / "target" / shard_file(0)


CFG = PredictConfig(classes=tuple(CLASSES), voxel_size=VOXEL, intensity_range=None,
                    settings=Prediction(device="cpu", mixed_precision=False,
                                        rows_per_block=8, batch_size=8, workers=1))


def predict(model: str, shard_path: Path, run: Path) -> tuple[pd.DataFrame, dict]:
    """The shard predicted with the work and cache folders of `run`: the table by
    synapse id, and the counts."""
    out = run / "out.parquet"
    counts = predict_shard(model, shard_path, CFG, run / "work", run / "cache", str(out))
    return pd.read_parquet(out).sort_values("synapse_id").reset_index(drop=True), counts


def assert_same_predictions(rerun: pd.DataFrame, clean: pd.DataFrame) -> None:
    """The same calls and padding flags; probabilities equal up to batching's rounding."""
    assert rerun[["synapse_id", "predicted_nt", "empty", "padded"]].equals(
        clean[["synapse_id", "predicted_nt", "empty", "padded"]])
    np.testing.assert_allclose(rerun[list(CLASSES)], clean[list(CLASSES)], atol=1e-6)


def assert_differ(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert np.abs(a[list(CLASSES)].to_numpy() - b[list(CLASSES)].to_numpy()).max() > 1e-3


def touching(region_lo, region_hi) -> set[int]:
    """The synapse ids whose cubes touch the voxel box region_lo..region_hi."""
    begins = np.floor(locations() / VOXEL).astype(int) - np.array(SHAPE) // 2
    hit = ((begins < region_hi) & (begins + SHAPE > region_lo)).all(axis=1)
    return set((np.flatnonzero(hit) + 1).tolist())


# ------------------------------------------------------------------------ local raw

def test_raw_replaced_in_place_is_predicted_again_as_a_clean_run_predicts_it(model, tmp_path):
    container = str(tmp_path / "v.zarr")
    write_zarr_volume(container, "raw", em(1), VOXEL, chunks=CHUNK)
    path = shard(tmp_path / "t", container, "raw")
    old, counts = predict(model, path, tmp_path / "run")
    assert counts["predicted"] == N

    write_zarr_volume(container, "raw", em(2), VOXEL, chunks=CHUNK)  # a re-export
    new, counts = predict(model, path, tmp_path / "run")
    assert counts == {"synapses": N, "predicted": N, "raw_changed": N}
    clean, _ = predict(model, path, tmp_path / "clean")
    assert_same_predictions(new, clean)
    assert_differ(new, old)

    _, counts = predict(model, path, tmp_path / "run")  # unchanged: nothing again
    assert counts["predicted"] == 0


def test_one_chunk_rewritten_predicts_again_only_the_synapses_whose_cubes_touch_it(
        model, tmp_path):
    container = str(tmp_path / "v.zarr")
    write_zarr_volume(container, "raw", em(1), VOXEL, chunks=CHUNK)
    path = shard(tmp_path / "t", container, "raw")
    old, _ = predict(model, path, tmp_path / "run")

    lo, hi = np.array([8, 64, 128]), np.array([16, 128, 192])  # chunk (1, 1, 2)
    array = zarr.open(container, mode="r+")["raw"]
    array[8:16, 64:128, 128:192] = em(2)[8:16, 64:128, 128:192]
    expected = touching(lo, hi)
    assert 0 < len(expected) < N

    new, counts = predict(model, path, tmp_path / "run")
    assert counts == {"synapses": N, "predicted": len(expected),
                      "raw_changed": len(expected)}
    clean, _ = predict(model, path, tmp_path / "clean")
    assert_same_predictions(new, clean)
    changed = new["synapse_id"].isin(expected).to_numpy()
    assert_differ(new[changed], old[changed])
    pd.testing.assert_frame_equal(new[~changed], old[~changed])  # from the cache


def test_an_empty_volume_completed_is_predicted_again_and_no_longer_refused(
        model, tmp_path):
    container = str(tmp_path / "v.zarr")
    array = zarr.open(container, mode="a").create_dataset(  # no chunk written yet
        "raw", shape=EXTENT, chunks=CHUNK, dtype=np.uint8)
    array.attrs.update({"voxel_size": list(VOXEL), "offset": [0, 0, 0]})
    path = shard(tmp_path / "t", container, "raw")
    empty, _ = predict(model, path, tmp_path / "run")
    assert empty["empty"].all()
    with pytest.raises(NtclassError, match="hold no data"):
        merge_target([str(tmp_path / "run" / "out.parquet")], str(path.parent),
                     str(tmp_path / "merged.parquet"))

    array[...] = em(1)  # the download completed
    done, counts = predict(model, path, tmp_path / "run")
    assert counts["predicted"] == N
    assert not done["empty"].any()
    merge_target([str(tmp_path / "run" / "out.parquet")], str(path.parent),
                 str(tmp_path / "merged.parquet"))
    clean, _ = predict(model, path, tmp_path / "clean")
    assert_same_predictions(done, clean)


def test_an_hdf5_file_replaced_is_predicted_again(model, tmp_path):
    path = tmp_path / "v.h5"

    def export(data):  # written next to it, then moved onto it
        with h5py.File(tmp_path / "new.h5", "w") as f:
            f.create_dataset("raw", data=data).attrs["resolution"] = list(VOXEL)
        os.replace(tmp_path / "new.h5", path)

    export(em(1))
    shard_path = shard(tmp_path / "t", str(path), "raw")
    old, _ = predict(model, shard_path, tmp_path / "run")
    export(em(2))
    new, counts = predict(model, shard_path, tmp_path / "run")
    assert counts["predicted"] == counts["raw_changed"] == N
    clean, _ = predict(model, shard_path, tmp_path / "clean")
    assert_same_predictions(new, clean)
    assert_differ(new, old)


# ----------------------------------------------------------------------- remote raw

@pytest.fixture
def served(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    server = http_server(root, tmp_path / "http.log")
    yield root, server
    server.stop()


def _shard_heads(server) -> int:
    return server.log.read_text().count('"HEAD /pc/4_4_40/')


def test_raw_replaced_in_place_over_http_is_predicted_again(model, served, tmp_path):
    root, server = served
    precomputed(root / "pc", em(1), VOXEL, CHUNK, "raw", sharded=True)
    path = shard(tmp_path / "t", f"precomputed://{server.url}/pc", "s0", n=12)
    old, _ = predict(model, path, tmp_path / "run")

    shutil.rmtree(root / "pc")
    precomputed(root / "pc", em(2), VOXEL, CHUNK, "raw", sharded=True)  # a re-export
    # the server's Last-Modified is in whole seconds: a re-export takes longer than that
    later = time.time() + 5
    for file in (root / "pc").rglob("*"):
        os.utime(file, (later, later))
    heads = _shard_heads(server)
    new, counts = predict(model, path, tmp_path / "run")
    assert counts == {"synapses": 12, "predicted": 12, "raw_changed": 12}
    # a clean run from a local copy (test_remote: local and served predictions agree)
    clean, _ = predict(model, shard(tmp_path / "local", str(root / "pc"), "s0", n=12),
                       tmp_path / "clean")
    assert_same_predictions(new, clean)
    assert_differ(new, old)
    assert _shard_heads(server) > heads  # stamped over HTTP

    _, counts = predict(model, path, tmp_path / "run")
    assert counts["predicted"] == 0


def test_one_chunk_rewritten_on_s3_changes_the_stamps_of_its_synapses_only(tmp_path,
                                                                           monkeypatch):
    root = tmp_path / "bucket"
    write_zarr_volume(root / "v.zarr", "raw", em(1), VOXEL, chunks=CHUNK)
    server = s3_server(root, tmp_path / "s3.log")
    try:
        for key, value in {**S3_KEYS, "AWS_ENDPOINT_URL": server.url}.items():
            monkeypatch.setenv(key, value)
        container = f"s3://{BUCKET}/v.zarr"
        before = VolumeStamps(open_raw(container, "raw")).of(locations(), SHAPE, "ntclass")
        import boto3

        chunk = root / "changed-chunk"
        chunk.write_bytes(b"not the same bytes")
        boto3.client("s3", endpoint_url=server.url, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing"
                     ).upload_file(str(chunk), BUCKET, "v.zarr/raw/1.1.2")
        after = VolumeStamps(open_raw(container, "raw")).of(locations(), SHAPE, "ntclass")
    finally:
        server.stop()
    changed = set((np.flatnonzero(before != after) + 1).tolist())
    assert changed == touching(np.array([8, 64, 128]), np.array([16, 128, 192]))


# ------------------------------------------------------------------ storage layouts

def _files(folder: Path) -> set[str]:
    meta = {".zarray", ".zattrs", ".zgroup", "zarr.json", "attributes.json", "info"}
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and p.name not in meta}


def _all_keys(volume) -> set[str]:
    store = open_tensorstore(volume)
    layout = storage_layout(volume.kind, store.spec().to_json())
    grid = [-(-s // c) for s, c in zip(volume.shape, layout.chunk)]
    return {layout.key((z, y, x)) for z in range(grid[0]) for y in range(grid[1])
            for x in range(grid[2])}


SMALL = (20, 100, 90)


def _zarr3(path: Path, data, metadata: dict) -> None:
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)},
                     "create": True, "metadata": {"shape": list(data.shape),
                                                  "data_type": "uint8", **metadata}}).result()
    store.write(data).result()


def _layouts(root: Path, data: np.ndarray) -> dict[str, tuple[Path, str]]:
    """The same voxels in every layout ntclass reads: (folder of the stored objects,
    the dataset as ntclass names it)."""
    write_zarr_volume(root / "dot.zarr", "raw", data, VOXEL, chunks=(8, 32, 32))
    nested = zarr.open(str(root / "slash.zarr"), mode="a").create_dataset(
        "raw", data=data, chunks=(8, 32, 32), dimension_separator="/")
    nested.attrs["voxel_size"] = list(VOXEL)
    grid = {"chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [8, 32, 32]}}}
    _zarr3(root / "z3.zarr" / "raw", data, grid)
    _zarr3(root / "z3v2.zarr" / "raw", data, {**grid, "chunk_key_encoding": {"name": "v2"}})
    _zarr3(root / "z3sharded.zarr" / "raw", data, {
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [8, 64, 64]}},
        "codecs": [{"name": "sharding_indexed", "configuration": {"chunk_shape": [8, 32, 32]}}]})
    n5(root / "e.n5", "raw/s0", data, VOXEL, (8, 32, 32))
    precomputed(root / "pc", data, VOXEL, (8, 32, 32), "raw", sharded=False)
    precomputed(root / "pcs", data, VOXEL, (8, 32, 32), "raw", sharded=True)
    return {"zarr .": (root / "dot.zarr" / "raw", "raw"),
            "zarr /": (root / "slash.zarr" / "raw", "raw"),
            "zarr3": (root / "z3.zarr" / "raw", "raw"),
            "zarr3 v2 keys": (root / "z3v2.zarr" / "raw", "raw"),
            "zarr3 sharded": (root / "z3sharded.zarr" / "raw", "raw"),
            "n5": (root / "e.n5" / "raw" / "s0", "raw/s0"),
            "precomputed": (root / "pc", "s0"),
            "precomputed sharded": (root / "pcs", "s0")}


def test_each_layouts_keys_name_exactly_the_objects_tensorstore_wrote(tmp_path):
    data = (np.arange(np.prod(SMALL)) % 251).astype(np.uint8).reshape(SMALL)
    for name, (folder, dataset) in _layouts(tmp_path, data).items():
        container = {"n5": tmp_path / "e.n5"}.get(
            name, folder if name.startswith("precomputed") else folder.parent)
        assert _all_keys(open_raw(container, dataset, VOXEL)) == _files(folder), name


def test_precomputed_murmurhash_shards_are_found(tmp_path):
    data = (np.arange(np.prod(SMALL)) % 251).astype(np.uint8).reshape(SMALL)
    sharding = {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 1,
                "hash": "murmurhash3_x86_128", "minishard_bits": 1, "shard_bits": 3,
                "minishard_index_encoding": "gzip", "data_encoding": "gzip"}
    scale = {"size": list(SMALL[::-1]), "resolution": list(VOXEL[::-1]), "encoding": "raw",
             "chunk_size": [16, 16, 4], "voxel_offset": [3, 0, 5], "sharding": sharding}
    store = ts.open({"driver": "neuroglancer_precomputed",
                     "kvstore": {"driver": "file", "path": str(tmp_path / "pc")},
                     "create": True, "multiscale_metadata": {
                         "type": "image", "data_type": "uint8", "num_channels": 1},
                     "scale_metadata": scale}).result()
    store[..., 0].write(data.T).result()
    volume = open_raw(tmp_path / "pc", "s0")
    assert len(_files(tmp_path / "pc")) > 4  # chunks spread over shards by their hash
    assert _all_keys(volume) == _files(tmp_path / "pc")


def test_murmurhash_and_morton_follow_their_references():
    # MurmurHash3 of nothing with seed 0 is 0 (the shards test checks it on chunk ids)
    assert murmurhash3_x86_128_low64(b"") == 0
    # neuroglancer's compressed Morton code: bits interleaved x, y, z while an axis has
    # bits; grid 4 x 2 x 1 gives x two bits, y one, z none
    assert [compressed_morton_code(p, (4, 2, 1)) for p in
            [(1, 0, 0), (0, 1, 0), (2, 0, 0), (3, 1, 0)]] == [1, 2, 4, 7]
