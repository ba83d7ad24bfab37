"""The demo with a remote default storage: every file of the run in an S3 bucket (moto's
server on 127.0.0.1, through Snakemake's S3 storage plugin), none in the working directory;
a second run plans nothing, and neither does a changed cut of the work; the view, the report
and `ntclass view` work from the bucket."""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import re
import shutil
import sys
import urllib.parse
from pathlib import Path

import pandas as pd
import pytest
from conftest import in_ci
from remote_servers import BUCKET, s3_server
from workflow_helpers import TINY_CONFIG, planned_jobs, snakemake, write_config

RUN = "runs/demo"  # the run's folder in the bucket


def storage_args(endpoint: str) -> tuple[str, ...]:
    """What a lab adds to its command line: the default storage and the plugin's settings."""
    return ("--default-storage-provider", "s3", "--default-storage-prefix",
            f"s3://{BUCKET}/{RUN}", "--storage-s3-endpoint-url", endpoint,
            "--storage-s3-access-key", "testing", "--storage-s3-secret-key", "testing")


def demo_config(served_at: str) -> dict:
    """The tiny demo, trained for a few steps, one shard, with its view: served from the
    storage's address."""
    config = copy.deepcopy(TINY_CONFIG)
    config["training"].update({"iterations": 4, "save_every": 4, "validate_every": 4,
                               "log_every": 2})
    config["prediction"]["shards"] = 1
    config["view"] = {"enabled": True, "served_at": served_at}
    return config


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server with an empty bucket, and a boto3 client of it."""
    missing = [name for name, found in (
        ("moto_server", Path(sys.executable).with_name("moto_server").exists()),
        ("snakemake-storage-plugin-s3",
         importlib.util.find_spec("snakemake_storage_plugin_s3") is not None)) if not found]
    if missing:
        message = f"{' and '.join(missing)} not installed (requirements.lock has them)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    import boto3

    empty = tmp_path_factory.mktemp("empty")
    server = s3_server(empty, tmp_path_factory.mktemp("logs") / "s3.log")
    client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    yield server, client
    server.stop()


def bucket_keys(client) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=RUN + "/")
    return {o["Key"][len(RUN) + 1:] for page in pages for o in page.get("Contents", [])}


def read(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=f"{RUN}/{key}")["Body"].read()


@pytest.fixture(scope="module")
def remote_run(s3, tmp_path_factory):
    """The demo run once with the bucket as its default storage."""
    server, client = s3
    folder = tmp_path_factory.mktemp("remote_storage")
    write_config(folder, demo_config(server.url))
    result = snakemake(folder, *storage_args(server.url))
    stored = set(re.findall(rf"Storing in storage: s3://{BUCKET}/{RUN}/(\S+)",
                            result.stdout + result.stderr))
    return folder, server, client, stored


def test_every_output_is_in_the_bucket_and_none_in_the_working_directory(remote_run):
    folder, _, client, stored = remote_run
    keys = bucket_keys(client)
    folders = {k.rsplit("/", i)[0] for k in keys for i in range(1, k.count("/") + 1)}
    # every file and folder Snakemake stored (outputs, logs, benchmarks) is there
    assert stored and stored <= keys | folders, sorted(stored - keys - folders)
    for key in ("data/demo/synapses.csv", "data/demo/volume.zarr/.zgroup",
                "results/split/manifest.csv", "results/models/tiny/model.pt",
                "results/models/tiny/training_curves.png", "results/targets/test/meta.json",
                "results/predictions/tiny/test/shards/0.parquet",
                "results/predictions/tiny/test/predictions.csv",
                "results/evaluation/tiny/test/metrics.json",
                "results/evaluation/tiny/test/confusion.png",
                "results/evaluation/comparison.html",
                "results/view/tiny/test/annotations/info",
                "results/view/tiny/test/segment_properties/info",
                "results/view/tiny/test/state.html", "logs/train/tiny.log",
                "results/benchmarks/predict_shard/tiny/test/0.tsv"):
        assert key in keys, key
    # nothing of the run lies beside the config: only Snakemake's own folder
    assert {p.name for p in folder.iterdir()} == {"config.yaml", ".snakemake"}
    manifest = pd.read_csv(io.BytesIO(read(client, "results/split/manifest.csv")))
    predictions = pd.read_csv(io.BytesIO(
        read(client, "results/predictions/tiny/test/predictions.csv")))
    assert sorted(predictions["synapse_id"]) == sorted(
        manifest.loc[manifest["split"] == "test", "synapse_id"])


def test_a_second_run_plans_nothing_even_with_another_cut_of_the_work(remote_run, tmp_path):
    """The second run changes threads, memory, workers, block and batch sizes: nothing is
    out of date, and none of these enters a rerun trigger (one dry run shows both)."""
    folder, server, _, _ = remote_run
    args = storage_args(server.url)
    config = demo_config(server.url)
    config["prediction"].update({"workers": 2, "rows_per_block": 7, "batch_size": 5,
                                 "read_batch_rows": 11})
    config["resources"] = {"train": {"threads": 2, "mem_mb": 999},
                           "predict": {"threads": 2, "mem_mb": 1234}}
    assert planned_jobs(folder, *args, config=write_config(tmp_path, config)) == {}
    # a value that changes a result still plans what depends on it (the dry runs see)
    config = demo_config(server.url)
    config["evaluation"] = {"min_synapses": 2}
    assert planned_jobs(folder, *args, config=write_config(tmp_path, config)) == {
        "evaluate": 1, "compare": 1, "neuroglancer": 1, "all": 1}


def test_the_view_names_its_layers_in_the_bucket(remote_run):
    _, server, client, _ = remote_run
    keys = bucket_keys(client)
    state = json.loads(read(client, "results/view/tiny/test/state.json"))
    urls = [s["url"] if isinstance(s, dict) else s
            for layer in state["layers"] for s in layer["source"]]
    local = [u for u in urls if server.url in u]
    assert len(local) == 3, urls  # the raw, the synapses, the neurons' properties
    for url in local:
        path = url.split(f"{server.url}/{BUCKET}/{RUN}/", 1)[1]
        path = path.split("/volumes/")[0]  # the raw: its container
        assert any(k.startswith(path + "/") for k in keys), url
    url = urllib.parse.unquote(read(client, "results/view/tiny/test/state_url.txt").decode())
    assert f"{server.url}/{BUCKET}/{RUN}/results/view/tiny/test/annotations" in url


def test_the_report_and_ntclass_view_work_from_the_bucket(remote_run, tmp_path):
    folder, server, client, _ = remote_run
    report = tmp_path / "report.html"
    snakemake(folder, *storage_args(server.url), "--report", str(report))
    assert "confusion.png" in report.read_text()
    # `ntclass view` serves a copy of the run's folder: the state's sources move to it
    from ntclass.view.serve import served_state

    copy_ = tmp_path / "copy"  # as `aws s3 sync s3://<bucket>/<run> copy` makes it
    for key in bucket_keys(client):
        if key.startswith(("results/view/", "data/demo/volume.zarr/")):
            (copy_ / key).parent.mkdir(parents=True, exist_ok=True)
            (copy_ / key).write_bytes(read(client, key))
    served = served_state(copy_, "tiny", "test", "http://127.0.0.1:9")
    text = json.dumps(served.state)
    assert server.url not in text
    paths = re.findall(r'"(?:precomputed|zarr2)://http://127\.0\.0\.1:9/([^"]+)"', text)
    assert len(paths) == 3, text[:500]
    for path in paths:
        assert (copy_ / path.split("/volumes/")[0]).is_dir(), path
    shutil.rmtree(copy_)

