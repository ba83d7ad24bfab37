"""Real servers on 127.0.0.1 for remote raw: HTTP with byte ranges (RangeHTTPServer, as
sharded precomputed needs) and S3 (moto's server mode), each a process of its own, and
the volumes they serve: one EM volume in the layouts labs use."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import tensorstore as ts

BUCKET = "em-bucket"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1"}
SHARDING = {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 0, "hash": "identity",
            "minishard_bits": 1, "shard_bits": 1, "minishard_index_encoding": "gzip",
            "data_encoding": "raw"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process, its address and its log (one line per request)."""

    def __init__(self, command: list[str], url: str, log: Path, cwd: Path | None = None,
                 env: dict | None = None):
        self.url, self.log = url, log
        self.process = subprocess.Popen(command, cwd=cwd, stdout=log.open("w"),
                                        stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})})
        for _ in range(200):
            try:
                urllib.request.urlopen(url, timeout=1)
                return
            except OSError as e:
                if getattr(e, "code", None):  # an HTTP error: it answers
                    return
                if self.process.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited: {log.read_text()[-500:]}") from e
                time.sleep(0.1)
        raise RuntimeError(f"{command} did not answer at {url}")

    def requests(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if '"GET ' in line]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


def http_server(root: Path, log: Path) -> Server:
    port = free_port()
    return Server([sys.executable, "-m", "RangeHTTPServer", str(port), "--bind", "127.0.0.1"],
                  f"http://127.0.0.1:{port}", log, cwd=root)


def s3_server(root: Path, log: Path) -> Server:
    """moto's S3 server holding `root`'s files in BUCKET."""
    import boto3

    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    server = Server([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                    f"http://127.0.0.1:{port}", log, env=S3_KEYS)
    client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, path.relative_to(root).as_posix())
    return server


def precomputed(path: Path, data: np.ndarray, voxel_size, chunk, encoding: str,
                sharded: bool) -> None:
    """`data` (z, y, x) as a neuroglancer precomputed volume."""
    scale = {"size": list(data.shape[::-1]), "resolution": list(voxel_size[::-1]),
             "encoding": encoding, "chunk_size": list(chunk[::-1]), "voxel_offset": [0, 0, 0]}
    if encoding == "jpeg":
        scale["jpeg_quality"] = 90
    if sharded:
        scale["sharding"] = SHARDING
    store = ts.open({"driver": "neuroglancer_precomputed",
                     "kvstore": {"driver": "file", "path": str(path)}, "create": True,
                     "multiscale_metadata": {"type": "image", "data_type": "uint8",
                                             "num_channels": 1},
                     "scale_metadata": scale}).result()
    store[..., 0].write(data.T).result()


def n5(path: Path, dataset: str, data: np.ndarray, voxel_size, chunk) -> None:
    """`data` (z, y, x) as a gzip N5 dataset, attributes in N5's x, y, z."""
    store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(path / dataset)},
                     "create": True,
                     "metadata": {"dimensions": list(data.shape[::-1]),
                                  "blockSize": list(chunk[::-1]), "dataType": "uint8",
                                  "compression": {"type": "gzip"}}}).result()
    store.write(data.T).result()
    attributes = path / dataset / "attributes.json"
    meta = json.loads(attributes.read_text())
    attributes.write_text(json.dumps({**meta, "resolution": list(voxel_size[::-1]),
                                      "offset": [0, 0, 0]}))
