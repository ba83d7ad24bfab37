"""JPEG precomputed raw decoded by nvImageCodec (its CPU-only backend: no GPU here) gives
the same probabilities as TensorStore's decoder, bit for bit: sharded and unsharded,
local and over HTTP; missing and damaged chunks follow the same rules."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import tensorstore as ts
import torch
from conftest import CLASSES
from remote_servers import http_server, precomputed

from ntclass.errors import NtclassError
from ntclass.models import build_model
from ntclass.models.modelfile import model_record
from ntclass.predict.cubes import CubeReader
from ntclass.predict.jpeg import choose_jpeg_decoder, compressed_morton_code
from ntclass.predict.shard import PredictConfig, predict_shard
from ntclass.predict.targets import shard_file, write_target
from ntclass.settings import Partition, Prediction
from ntclass.sources.kinds import source_of
from ntclass.volumes import open_raw

VOXEL = (40, 4, 4)
CHUNK = (20, 64, 96)  # z, y, x: the demo (48, 832, 832) has clipped edge chunks
SHAPE = [8, 48, 48]
PARAMS = {"fmaps": 4, "fc_size": 16, "dropout": 0.0, "global_pool": True,
          "downsample_factors": [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]}


@pytest.fixture(scope="module")
def jpeg(tiny_demo, tmp_path_factory):
    """The demo's EM as JPEG precomputed, sharded and unsharded (its size is no multiple
    of the chunks: edge chunks are clipped), served over HTTP; a model."""
    root = tmp_path_factory.mktemp("jpeg")
    data = open_raw(tiny_demo["volume"], "volumes/raw/s0").data[...]
    assert any(s % c for s, c in zip(data.shape, CHUNK))
    precomputed(root / "sharded", data, VOXEL, CHUNK, "jpeg", sharded=True)
    precomputed(root / "unsharded", data, VOXEL, CHUNK, "jpeg", sharded=False)
    http = http_server(root, tmp_path_factory.mktemp("logs") / "http.log")
    torch.manual_seed(1)
    model = build_model("vgg3d", SHAPE, len(CLASSES), **PARAMS).eval()
    model_path = root.parent / "model.pt"
    torch.save(model_record(model, architecture="vgg3d", model_params=PARAMS,
                            classes=list(CLASSES), input_shape=SHAPE, voxel_size=list(VOXEL),
                            intensity={"uint8": [0.0, 255.0]}, iteration=1, crop="ntclass"),
               model_path)
    yield {"root": root, "http": http, "model": str(model_path), "table": tiny_demo["table"]}
    http.stop()


def predictions(jpeg, container: str, decoder: str, folder) -> pd.DataFrame:
    target = {"type": "table", "table": jpeg["table"], "raw_container": container,
              "raw_dataset": "s0"}
    write_target(None, source_of(target), CLASSES, None,
                 Partition(shards=1, synapses_per_shard=None, block_size=(640, 256, 256),
                           read_batch_rows=10_000), str(folder / "target"))
    cfg = PredictConfig(classes=tuple(CLASSES), voxel_size=VOXEL, intensity_range=None,
                        settings=Prediction(device="cpu", mixed_precision=False,
                                            rows_per_block=128, batch_size=32, workers=1,
                                            jpeg_decoder=decoder))
    out = folder / "out.parquet"
    predict_shard(jpeg["model"], folder / "target" / shard_file(0), cfg, folder / "work",
                  folder / "cache", str(out))
    return pd.read_parquet(out).sort_values("synapse_id").reset_index(drop=True)


@pytest.mark.parametrize("layout", ["sharded", "unsharded"])
def test_nvimgcodec_probabilities_equal_tensorstores_bit_for_bit(jpeg, layout, tmp_path):
    local = str(jpeg["root"] / layout)
    remote = f"precomputed://{jpeg['http'].url}/{layout}"
    reference = predictions(jpeg, local, "tensorstore", tmp_path / "ts")
    assert len(reference) > 50 and not reference["empty"].any()
    for name, container in (("local", local), ("http", remote)):
        before = len(jpeg["http"].requests())
        found = predictions(jpeg, container, "nvimgcodec", tmp_path / name)
        assert (len(jpeg["http"].requests()) > before) == (name == "http")
        pd.testing.assert_frame_equal(found, reference, check_exact=True)
    # and the cubes themselves, voxel for voxel, through the batched decoder
    volume = open_raw(local, "s0")
    rng = np.random.default_rng(0)
    locations = rng.uniform(0, 1, (200, 3)) * np.array(volume.shape) * volume.voxel_size
    cubes = {}
    for decoder in ("tensorstore", "nvimgcodec"):
        reader = CubeReader(volume, SHAPE, 2, jpeg_decoder=decoder)
        pending, padded = reader.submit(np.sort(locations, axis=0))
        cubes[decoder] = np.stack([p.result() for p in pending])
        assert padded.any()  # edge cubes, and edge chunks, are among them
    assert reader.jpeg is not None and reader.jpeg.batches >= 1
    assert reader.cache.decoded == len(set().union(*map(set, reader.cache.keys(
        *reader._boxes(np.sort(locations, axis=0), "ntclass")[:2]))))  # each chunk once
    assert np.array_equal(cubes["tensorstore"], cubes["nvimgcodec"])


def test_missing_chunks_are_empty_and_damaged_ones_stop_the_read_with_either_decoder(
        jpeg, tmp_path):
    lost = tmp_path / "lost"
    shutil.copytree(jpeg["root"] / "unsharded", lost)
    for chunk in (lost / "4_4_40").iterdir():
        if chunk.name.startswith("0-96_"):  # every chunk of x < 96 is gone
            chunk.unlink()
    flags = {d: predictions(jpeg, str(lost), d, tmp_path / d) for d in ("tensorstore",
                                                                        "nvimgcodec")}
    pd.testing.assert_frame_equal(flags["nvimgcodec"], flags["tensorstore"], check_exact=True)
    x_voxel = flags["nvimgcodec"]["x"] // VOXEL[2]
    assert flags["nvimgcodec"].loc[x_voxel < 96 - SHAPE[2], "empty"].all()
    assert not flags["nvimgcodec"].loc[x_voxel >= 96 + SHAPE[2], "empty"].any()

    damaged = tmp_path / "damaged"
    shutil.copytree(jpeg["root"] / "unsharded", damaged)
    chunk = damaged / "4_4_40" / "96-192_64-128_0-20"
    chunk.write_bytes(chunk.read_bytes()[:300])  # truncated, as a lost upload leaves it
    volume = open_raw(damaged, "s0")
    centre = np.array([[10 * 40, 96 * 4, 144 * 4]], dtype=float)  # inside that chunk
    with pytest.raises(ValueError, match="96-192_64-128_0-20"):
        CubeReader(volume, SHAPE, 2).submit(centre)[0][0].result()
    with pytest.raises(NtclassError, match=r"JPEG chunk '96-192_64-128_0-20' could not be "
                                           r"decoded.*damaged"):
        CubeReader(volume, SHAPE, 2, jpeg_decoder="nvimgcodec").submit(centre)[0][0].result()


def test_compressed_morton_codes_are_the_keys_tensorstore_writes(jpeg):
    info = ts.open({"driver": "neuroglancer_precomputed",
                    "kvstore": {"driver": "file", "path": str(jpeg["root"] / "sharded")}}
                   ).result().spec().to_json()["scale_metadata"]
    grid = [-(-s // c) for s, c in zip(info["size"], info["chunk_size"])]
    shards = ts.KvStore.open({"driver": "neuroglancer_uint64_sharded", "metadata":
                              info["sharding"], "base": {"driver": "file", "path": str(
                                  jpeg["root"] / "sharded" / info["key"]) + "/"}}).result()
    stored = sorted(int.from_bytes(k, "big") for k in shards.list().result())
    codes = sorted(compressed_morton_code((x, y, z), grid) for x in range(grid[0])
                   for y in range(grid[1]) for z in range(grid[2]))
    assert stored == codes and len(set(codes)) == np.prod(grid)
    assert compressed_morton_code((1, 0, 0), (4, 4, 1)) == 1
    assert compressed_morton_code((0, 1, 0), (4, 4, 1)) == 2
    assert compressed_morton_code((0, 0, 1), (1, 1, 4)) == 1  # axes of one chunk take no bit
    assert compressed_morton_code((3, 0, 0), (4, 1, 1)) == 3


def test_auto_picks_nvimgcodec_on_a_cuda_device_only():
    assert choose_jpeg_decoder("auto", "cpu") == "tensorstore"
    assert choose_jpeg_decoder("auto", "cuda:0") == "nvimgcodec"
    assert choose_jpeg_decoder("nvimgcodec", "cpu") == "nvimgcodec"
    assert choose_jpeg_decoder("tensorstore", "cuda") == "tensorstore"
    with pytest.raises(NtclassError, match="prediction.jpeg_decoder is 'nvjpeg'"):
        choose_jpeg_decoder("nvjpeg", "cpu")


def test_other_volumes_are_read_by_tensorstore_whatever_the_setting(tmp_path):
    from ntclass.volumes import write_zarr_volume

    data = np.random.default_rng(0).integers(0, 255, (8, 64, 64), dtype=np.uint8)
    write_zarr_volume(tmp_path / "v.zarr", "raw", data, VOXEL)
    precomputed(tmp_path / "raw", data, VOXEL, CHUNK, "raw", sharded=False)
    for volume in (open_raw(tmp_path / "v.zarr", "raw"), open_raw(tmp_path / "raw", "s0")):
        assert CubeReader(volume, SHAPE, 2, jpeg_decoder="nvimgcodec").jpeg is None
