import logging
from dataclasses import replace

import pandas as pd
import pytest
import torch
from conftest import CLASSES

from ntclass.errors import NtclassError
from ntclass.split import make_split
from ntclass.synapses import read_table_source
from ntclass.train import TrainConfig, learning_rate_at, load_model, train

SMALL = TrainConfig(
    architecture="vgg3d",
    model_params={"fmaps": 2, "fc_size": 8, "dropout": 0.0, "global_pool": True,
                  "downsample_factors": [[1, 2, 2], [2, 2, 2]]},
    classes=list(CLASSES), voxel_size=[40, 4, 4], input_shape=[4, 24, 24], batch_size=2,
    iterations=6, learning_rate=1e-3, save_every=3, log_every=3)


@pytest.fixture(scope="module")
def manifest(tiny_demo, tmp_path_factory):
    table = read_table_source(tiny_demo["table"], tiny_demo["volume"], "volumes/raw/s0",
                              CLASSES, (40, 4, 4))
    path = tmp_path_factory.mktemp("split") / "manifest.csv"
    make_split(table, "random", {"train": 0.7, "validation": 0.15, "test": 0.15},
               seed=0).to_csv(path, index=False)
    return path


def run(manifest, tmp_path, cfg, name="m"):
    out = tmp_path / name
    train(manifest, cfg, out / "model.pt", out / "loss.csv", out / "checkpoints")
    return out


def test_model_file_round_trip(manifest, tmp_path):
    out = run(manifest, tmp_path, SMALL)
    model, record = load_model(out / "model.pt", CLASSES)
    assert record["iteration"] == 6 and record["input_shape"] == [4, 24, 24]
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 4, 24, 24)).shape == (1, len(CLASSES))
    losses = pd.read_csv(out / "loss.csv")
    assert list(losses["iteration"]) == [1, 2, 3, 4, 5, 6]


def test_same_seed_same_weights(manifest, tmp_path):
    a = torch.load(run(manifest, tmp_path, SMALL, "a") / "model.pt", weights_only=True)
    b = torch.load(run(manifest, tmp_path, SMALL, "b") / "model.pt", weights_only=True)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


def test_resume_from_last_checkpoint(manifest, tmp_path, caplog):
    out = run(manifest, tmp_path, SMALL)
    longer = replace(SMALL, iterations=9)
    # a longer run is another run: it starts from scratch in its own folder
    with caplog.at_level(logging.INFO, logger="ntclass.train"):
        run(manifest, tmp_path, longer)
    assert "training from scratch" in caplog.text
    # the same run again resumes from its last checkpoint and redoes nothing
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ntclass.train"):
        run(manifest, tmp_path, longer)
    assert "resuming from iteration 9" in caplog.text
    losses = pd.read_csv(out / "loss.csv")
    assert list(losses["iteration"]) == list(range(1, 10))


def test_checkpoint_from_other_classes_or_architecture_is_refused(manifest, tmp_path):
    out = run(manifest, tmp_path, SMALL)
    with pytest.raises(NtclassError, match="was trained on classes"):
        load_model(out / "model.pt", ["gaba", "acetylcholine"])
    record = torch.load(out / "model.pt", weights_only=True)
    record["architecture"] = "resnet3d"
    record["model_params"] = {"fmaps": 2}
    torch.save(record, tmp_path / "other.pt")
    with pytest.raises(NtclassError, match="does not fit architecture 'resnet3d'"):
        load_model(tmp_path / "other.pt", CLASSES)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(NtclassError, match="cannot load model checkpoint"):
        load_model(tmp_path / "junk.pt")


def test_cosine_schedule():
    cfg = replace(SMALL, lr_schedule="cosine", iterations=100, learning_rate=1.0)
    assert learning_rate_at(cfg, 0) == pytest.approx(1.0)
    assert learning_rate_at(cfg, 50) == pytest.approx(0.5)
    assert learning_rate_at(cfg, 100) == pytest.approx(0.0)
    assert learning_rate_at(SMALL, 5) == SMALL.learning_rate
