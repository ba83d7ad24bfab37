"""Remote raw through real servers on 127.0.0.1: HTTP with byte ranges and S3 (moto).

One EM volume, in the layouts the field serves (precomputed JPEG sharded, precomputed raw,
gzip N5), is predicted from a local copy and from each server: the predictions are
identical. Training reads through the same reader, each chunk once."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CLASSES
from remote_servers import BUCKET, S3_KEYS, http_server, n5, precomputed, s3_server
from test_train import SMALL, run
from workflow_helpers import snakemake, write_config

from ntclass.errors import NtclassError
from ntclass.models import build_model
from ntclass.models.modelfile import model_record
from ntclass.predict.shard import PredictConfig, predict_shard
from ntclass.predict.targets import shard_file, write_target
from ntclass.settings import Partition, Prediction
from ntclass.sources.kinds import source_of
from ntclass.sources.synapses import read_table_source
from ntclass.split.assign import make_split
from ntclass.stores import parse_container, redact_url
from ntclass.volumes import open_raw

VOXEL = (40, 4, 4)
CHUNK = (16, 64, 64)
SHAPE = [8, 48, 48]
PARAMS = {"fmaps": 4, "fc_size": 16, "dropout": 0.0, "global_pool": True,
          "downsample_factors": [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]}
# layout: (folder, dataset, how each server's address names it)
LAYOUTS = {
    "precomputed JPEG, sharded": ("pc-jpeg", "s0", "precomputed://{url}/pc-jpeg"),
    "precomputed raw": ("pc-raw", "4_4_40", "{url}/pc-raw|neuroglancer-precomputed:"),
    "N5 gzip": ("em.n5", "raw/s0", "n5://{url}/em.n5"),
}


@pytest.fixture(scope="module")
def served(tiny_demo, tmp_path_factory):
    """The demo's EM in each layout, served over HTTP and S3; a model; the synapses."""
    root = tmp_path_factory.mktemp("served")
    data = open_raw(tiny_demo["volume"], "volumes/raw/s0").data[...]
    precomputed(root / "pc-jpeg", data, VOXEL, CHUNK, "jpeg", sharded=True)
    precomputed(root / "pc-raw", data, VOXEL, CHUNK, "raw", sharded=False)
    n5(root / "em.n5", "raw/s0", data, VOXEL, CHUNK)
    logs = tmp_path_factory.mktemp("logs")
    http = http_server(root, logs / "http.log")
    s3 = s3_server(root, logs / "s3.log")
    torch.manual_seed(1)
    model = build_model("vgg3d", SHAPE, len(CLASSES), **PARAMS).eval()
    model_path = root.parent / "model.pt"
    torch.save(model_record(model, architecture="vgg3d", model_params=PARAMS,
                            classes=list(CLASSES), input_shape=SHAPE, voxel_size=list(VOXEL),
                            intensity={"uint8": [0.0, 255.0]}, iteration=1, crop="ntclass"),
               model_path)
    yield {"root": root, "http": http, "s3": s3, "model": str(model_path),
           "table": tiny_demo["table"]}
    http.stop()
    s3.stop()


@pytest.fixture
def s3_env(served, monkeypatch):
    """The environment a lab gives an S3-compatible server: keys and its endpoint."""
    for key, value in {**S3_KEYS, "AWS_ENDPOINT_URL": served["s3"].url}.items():
        monkeypatch.setenv(key, value)


def address(served, layout: str, where: str) -> tuple[str, str]:
    folder, dataset, remote = LAYOUTS[layout]
    if where == "local":
        return str(served["root"] / folder), dataset
    url = served["http"].url if where == "http" else f"s3://{BUCKET}"
    return remote.format(url=url), dataset


def predictions(served, container: str, dataset: str, folder: Path) -> pd.DataFrame:
    """The demo's synapses predicted from `container` by the library's shard job."""
    target = {"type": "table", "table": served["table"], "raw_container": container,
              "raw_dataset": dataset}
    write_target(None, source_of(target), CLASSES, None,
                 Partition(shards=1, synapses_per_shard=None, block_size=(640, 256, 256),
                           read_batch_rows=10_000), str(folder / "target"))
    cfg = PredictConfig(classes=tuple(CLASSES), voxel_size=VOXEL, intensity_range=None,
                        settings=Prediction(device="cpu", mixed_precision=False,
                                            rows_per_block=16, batch_size=8, workers=1))
    out = folder / "out.parquet"
    predict_shard(served["model"], folder / "target" / shard_file(0), cfg, folder / "work",
                  folder / "cache", str(out))
    return pd.read_parquet(out).sort_values("synapse_id").reset_index(drop=True)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_predictions_from_each_server_equal_the_local_ones(served, s3_env, layout, tmp_path):
    local = predictions(served, *address(served, layout, "local"), tmp_path / "local")
    assert len(local) > 50 and not local["empty"].any()
    for where in ("http", "s3"):
        before = len(served[where].requests())
        remote = predictions(served, *address(served, layout, where), tmp_path / where)
        assert len(served[where].requests()) > before  # read over the network
        pd.testing.assert_frame_equal(
            remote, local)


def test_training_reads_a_remote_volume_each_chunk_once(served, tiny_demo, tmp_path):
    container, dataset = address(served, "precomputed raw", "http")
    table = read_table_source(tiny_demo["table"], container, dataset, CLASSES, VOXEL)
    manifest = tmp_path / "manifest.csv"
    make_split(table, "random", {"train": 0.7, "validation": 0.15, "test": 0.15},
               seed=0)[0].to_csv(manifest, index=False)
    before = len(served["http"].requests())
    out = run(manifest, tmp_path, SMALL)
    assert (out / "model.pt").is_file()
    chunk_reads = Counter(re.search(r'"GET (\S+)', line)[1]
                          for line in served["http"].requests()[before:]
                          if "/pc-raw/4_4_40/" in line)
    assert chunk_reads and max(chunk_reads.values()) == 1, chunk_reads.most_common(3)


def test_a_workflow_predicts_from_a_remote_volume(served, tmp_path):
    """The steps that check and read raw take a URL: no local file, no Snakemake input."""
    container, dataset = address(served, "precomputed JPEG, sharded", "http")
    config = {"classes": list(CLASSES), "voxel_size": list(VOXEL),
              "models": {"own": {"checkpoint": served["model"]}},
              "targets": {"em": {"type": "table", "table": served["table"],
                                 "raw_container": container, "raw_dataset": dataset}},
              "prediction": {"batch_size": 8}}
    write_config(tmp_path, config)
    snakemake(tmp_path)
    table = pd.read_csv(tmp_path / "results/predictions/own/em/predictions.csv")
    local = predictions(served, *address(served, "precomputed JPEG, sharded", "local"),
                        tmp_path / "local")
    assert len(table) == len(local)
    merged = table.merge(local, on="synapse_id", suffixes=("", "_local"))
    assert np.allclose(merged[list(CLASSES)].to_numpy(float),
                       merged[[f"{c}_local" for c in CLASSES]].to_numpy(float), atol=1e-6)
    # the neuroglancer state shows the remote raw as given, over the synapses' layer
    state = json.loads((tmp_path / "results/view/own/em/state.json").read_text())
    assert state["layers"][0]["source"] == [{"url": container}]
    info = json.loads((tmp_path / "results/view/own/em/annotations/info").read_text())
    assert info["@type"] == "neuroglancer_annotations_v1"


def test_neuroglancer_source_strings_name_the_format():
    assert parse_container("precomputed://gs://bucket/fafb/v14").driver == (
        "neuroglancer_precomputed")
    assert parse_container("gs://bucket/em|neuroglancer-precomputed:").location == (
        "gs://bucket/em")
    assert parse_container("zarr2://s3://b/em.zarr").driver == "zarr"
    assert parse_container("https://h/em.n5|n5:").driver == "n5"
    assert parse_container("https://h/em").driver is None
    assert parse_container("https://h/em").remote and not parse_container("/data/em").remote
    with pytest.raises(NtclassError, match="names the format 'graphene'"):
        parse_container("graphene://https://h/seg")


def test_urls_are_redacted():
    assert redact_url("https://ann:secret@h/em?X-Amz-Signature=abc") == "https://ann:***@h/em?***"
    assert redact_url("gs://bucket/em") == "gs://bucket/em"


def test_missing_metadata_and_a_dead_server_are_one_sentence(served, monkeypatch):
    url = served["http"].url
    with pytest.raises(NtclassError, match=r"^raw container 'http://127.0.0.1:\d+/nothing' has "
                                           r"neither a neuroglancer precomputed 'info' file"):
        open_raw(f"{url}/nothing", "raw")
    monkeypatch.setenv("NTCLASS_REMOTE_RETRIES", "2")
    from remote_servers import free_port
    dead = f"precomputed://http://ann:secret@127.0.0.1:{free_port()}/em"
    with pytest.raises(NtclassError) as error:
        open_raw(dead, "s0")
    message = str(error.value)
    assert "secret" not in message and "ann:***@127.0.0.1" in message
    assert "failed 2 tries" in message and "\n" not in message


def test_missing_remote_chunks_follow_the_empty_cube_rule(served, tmp_path):
    """A store that lost chunks reads as its fill value: those cubes are flagged empty."""
    import shutil

    copy = served["root"] / "pc-lost"
    shutil.copytree(served["root"] / "pc-raw", copy)
    for chunk in (copy / "4_4_40").iterdir():
        if chunk.name.startswith("0-64_"):  # every chunk of x < 64 is gone
            chunk.unlink()
    found = predictions(served, f"{served['http'].url}/pc-lost", "4_4_40", tmp_path)
    x_voxel = found["x"] // VOXEL[2]
    assert found.loc[x_voxel < 64 - SHAPE[2], "empty"].all()
    assert not found.loc[x_voxel >= 64 + SHAPE[2], "empty"].any()
