import logging
import os
import pickle
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CLASSES

import ntclass
from ntclass.errors import NtclassError
from ntclass.settings import Augment, Loss, Neither
from ntclass.sources.synapses import read_table_source
from ntclass.split.assign import make_split
from ntclass.train.run import TrainConfig, TrainOutputs, learning_rate_at, load_model, train


def only_section(**augment) -> dict:
    """An augment section with just the augmentations given (the schema's defaults switch
    some on)."""
    return {"mirror_transpose": False, **{k: {"enabled": False} for k in Augment.nested_sections()},
            **augment}


def only(**augment) -> Augment:
    return Augment.from_partial(only_section(**augment), "training.augment")


SMALL = TrainConfig.from_config({
    "architecture": "vgg3d",
    "model_params": {"fmaps": 2, "fc_size": 8, "dropout": 0.0, "global_pool": True,
                     "downsample_factors": [[1, 2, 2], [2, 2, 2]]},
    "classes": list(CLASSES), "voxel_size": [40, 4, 4], "input_shape": [4, 24, 24],
    "batch_size": 2, "iterations": 6, "learning_rate": 1e-3, "save_every": 3, "log_every": 3,
    "validate_every": 3, "workers": 0, "augment": only_section()})


@pytest.fixture(scope="module")
def manifest(tiny_demo, tmp_path_factory):
    table = read_table_source(tiny_demo["table"], tiny_demo["volume"], "volumes/raw/s0",
                              CLASSES, (40, 4, 4))
    path = tmp_path_factory.mktemp("split") / "manifest.csv"
    make_split(table, "random", {"train": 0.7, "validation": 0.15, "test": 0.15},
               seed=0)[0].to_csv(path, index=False)
    return path


def run(manifest, tmp_path, cfg, name="m"):
    out = tmp_path / name
    outputs = TrainOutputs(*(str(out / n) for n in ("model.pt", "last.pt", "loss.csv",
                                                   "validation.csv")))
    train(manifest, cfg, outputs, out / "checkpoints")
    return out


def test_model_file_round_trip(manifest, tmp_path):
    out = run(manifest, tmp_path, replace(SMALL, validate_every=0))
    model, record = load_model(out / "model.pt", CLASSES)
    assert record["iteration"] == 6 and record["input_shape"] == [4, 24, 24]
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 4, 24, 24)).shape == (1, len(CLASSES))
    losses = pd.read_csv(out / "loss.csv")
    assert list(losses["iteration"]) == [1, 2, 3, 4, 5, 6]
    # the last checkpoint holds the bare model's weights, as Synister and gunpowder read them
    from ntclass.models.checkpoints import read_checkpoint
    (folder,) = (out / "checkpoints").iterdir()
    state, _ = read_checkpoint(folder / "model_checkpoint_6")
    last = torch.load(out / "last.pt", weights_only=True)["state_dict"]
    assert state.keys() == last.keys() and all(torch.equal(state[k], last[k]) for k in last)


def test_model_pt_is_the_best_validated_model_and_the_last_is_kept(manifest, tmp_path):
    cfg = replace(SMALL, iterations=8, validate_every=2, learning_rate=3e-3)
    out = run(manifest, tmp_path, cfg)
    validation = pd.read_csv(out / "validation.csv")
    assert list(validation["iteration"]) == [2, 4, 6, 8]
    assert validation["accuracy"].between(0, 1).all() and (validation["loss"] > 0).all()
    ranked = validation.sort_values(["accuracy", "loss"], ascending=[False, True],
                                    kind="stable")
    best = torch.load(out / "model.pt", weights_only=True)
    assert best["iteration"] == ranked["iteration"].iloc[0]
    assert torch.load(out / "last.pt", weights_only=True)["iteration"] == 8
    # the validation figures are real: recomputing the best model's accuracy agrees
    from ntclass.train.validation import ValidationSet
    table = pd.read_csv(manifest, dtype={"nt": "string", "split": "string"})
    data = ValidationSet(table[table["split"] == "validation"], CLASSES, cfg.input_shape,
                         cfg.voxel_size, cfg.validation_synapses, cfg.seed)
    model, _ = load_model(out / "model.pt", CLASSES)
    _, accuracy = data.evaluate(model, torch.nn.CrossEntropyLoss(), torch.device("cpu"))
    assert accuracy == pytest.approx(ranked["accuracy"].iloc[0], abs=1e-6)


def test_same_seed_same_weights(manifest, tmp_path):
    a = torch.load(run(manifest, tmp_path, SMALL, "a") / "model.pt", weights_only=True)
    b = torch.load(run(manifest, tmp_path, SMALL, "b") / "model.pt", weights_only=True)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


def test_resume_from_last_checkpoint(manifest, tmp_path, caplog):
    out = run(manifest, tmp_path, SMALL)
    longer = replace(SMALL, iterations=9, lr_schedule="cosine")
    # a longer run is another run: it starts from scratch in its own folder
    with caplog.at_level(logging.INFO, logger="ntclass.train.run"):
        run(manifest, tmp_path, longer)
    assert "training from scratch" in caplog.text
    # the same run again resumes from its last checkpoint and redoes nothing
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ntclass.train.run"):
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


def one_batch(manifest, cfg):
    import gunpowder as gp

    from ntclass.train.device_augment import iteration_generator
    from ntclass.train.gp_nodes import centred_roi
    from ntclass.train.run import build_batches, data_shape, device_augment
    table = pd.read_csv(manifest, dtype={"nt": "string", "split": "string"})
    keys = {"raw": gp.ArrayKey("RAW"), "label": gp.ArrayKey("LABEL")}
    source = build_batches(table[table["split"] == "train"], cfg, keys)
    request = gp.BatchRequest(random_seed=7)
    request[keys["raw"]] = gp.ArraySpec(roi=centred_roi(data_shape(cfg), cfg.voxel_size))
    request[keys["label"]] = gp.ArraySpec(nonspatial=True)
    with gp.build(source):
        cubes = source.request_batch(request)[keys["raw"]].data
    # then the device's part, as the model's wrapper applies it
    return device_augment(cfg)(torch.from_numpy(cubes), iteration_generator(0, 1)).numpy()


ALL_AUGMENTATIONS = {
    "mirror_transpose": True,
    "intensity": {"enabled": True, "scale": [0.9, 1.1], "shift": [-0.1, 0.1]},
    "deform": {"enabled": True, "control_point_spacing": [160, 40, 40],
               "jitter_sigma": [0, 8, 8], "scale": [0.9, 1.1], "rotate": True, "subsample": 1,
               "p": 1.0},
    "misalign": {"enabled": True, "prob_slip": 0.2, "prob_shift": 0.2, "sigma": 8},
    "noise": {"enabled": True, "variance": 0.001, "p": 1.0},
    "defects": {"enabled": True, "prob_missing": 0.1, "prob_low_contrast": 0.1,
                "contrast_scale": 0.1},
}


def test_every_augmentation_runs_in_the_pipeline(manifest):
    plain = one_batch(manifest, replace(SMALL, augment=only()))
    augmented = one_batch(manifest, replace(SMALL, augment=only(**ALL_AUGMENTATIONS)))
    assert plain.shape == augmented.shape == (2, 1, 4, 24, 24)
    assert np.isfinite(augmented).all() and augmented.min() >= -1 and augmented.max() <= 1
    assert not np.allclose(plain, augmented)


def test_missing_sections_are_blanked(manifest):
    blank = {"defects": {"enabled": True, "prob_missing": 1.0, "prob_low_contrast": 0.0,
                         "contrast_scale": 0.1}}
    raw = one_batch(manifest, replace(SMALL, augment=only(**blank)))
    assert np.all(raw == -1)  # zeroed, then mapped from [0, 1] to [-1, 1]


def test_focal_loss_is_cross_entropy_at_gamma_0_and_discounts_easy_samples():
    from ntclass.train.losses import build_loss
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.2, 0.1, 0.0]])
    target = torch.tensor([0, 2])
    ce = torch.nn.functional.cross_entropy(logits, target)
    def loss(section):
        return Loss.from_partial(section, "training.loss")

    focal0 = build_loss(loss({"type": "focal", "gamma": 0.0}), ["a", "b", "c"])
    assert float(focal0(logits, target)) == pytest.approx(float(ce))
    focal2 = build_loss(loss({"type": "focal", "gamma": 2.0}), ["a", "b", "c"])
    per_sample = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    easy, hard = [float(focal2(logits[i:i + 1], target[i:i + 1])) for i in (0, 1)]
    assert easy < 0.01 * float(per_sample[0]) and hard > 0.3 * float(per_sample[1])
    weighted = build_loss(loss({"class_weights": [1.0, 1.0, 3.0]}), ["a", "b", "c"])
    expected = (per_sample[0] + 3 * per_sample[1]) / 4
    assert float(weighted(logits, target)) == pytest.approx(float(expected))
    with pytest.raises(NtclassError, match="class_weights has 2 values"):
        build_loss(loss({"class_weights": [1.0, 2.0]}), ["a", "b", "c"])


def test_neither_locations_keep_away_from_every_synapse(manifest):
    from scipy.spatial import cKDTree

    from ntclass.train.neither import background_locations
    from ntclass.volumes import open_raw

    table = pd.read_csv(manifest, dtype={"nt": "string", "split": "string"})
    found = background_locations(table, 300, 400.0, [4, 24, 24], [40, 4, 4], seed=3)
    assert len(found) == 300 and (found["nt"] == "neither").all()
    distance, _ = cKDTree(table[["z", "y", "x"]].to_numpy(float)).query(
        found[["z", "y", "x"]].to_numpy(float))
    assert distance.min() >= 400
    volume = open_raw(table["raw_container"].iloc[0], "volumes/raw/s0", None)
    voxels = volume.to_voxel(found[["z", "y", "x"]].to_numpy(float))
    assert (voxels >= [2, 12, 12]).all() and (voxels <= np.array(volume.shape) - [2, 12, 12]
                                              ).all()
    again = background_locations(table, 300, 400.0, [4, 24, 24], [40, 4, 4], seed=3)
    assert again.equals(found)
    with pytest.raises(NtclassError, match="cannot place 10 'neither' locations at least "
                       "1e\\+06 nm"):
        background_locations(table, 10, 1e6, [4, 24, 24], [40, 4, 4], seed=3)


def test_a_neither_class_is_trained_on_background_cubes(manifest, tmp_path):
    cfg = replace(SMALL, classes=[*CLASSES, "neither"], iterations=4, validate_every=0,
                  neither=Neither(enabled=True, min_distance=300, locations=50))
    out = run(manifest, tmp_path, cfg)
    model, record = load_model(out / "model.pt")
    assert record["classes"][-1] == "neither"
    assert model.classifier[-1].out_features == len(CLASSES) + 1
    with pytest.raises(NtclassError, match="class 'neither' has no training synapse.*"
                       "training.neither.enabled"):
        run(manifest, tmp_path, replace(cfg, neither=replace(cfg.neither, enabled=False)),
            name="without")


# dropout on: its draws must resume too
KILLED = replace(SMALL, model_params={**SMALL.model_params, "dropout": 0.5})


def start_killed_run(manifest, tmp_path, cfg, name, moment) -> subprocess.Popen:
    """A training process that kills itself around the checkpoint of iteration 6 (see
    kill_training.py)."""
    out = tmp_path / name
    outputs = TrainOutputs(*(str(out / n) for n in ("model.pt", "last.pt", "loss.csv",
                                                   "validation.csv")))
    job = tmp_path / f"{name}.pickle"
    job.write_bytes(pickle.dumps((str(manifest), cfg, outputs, str(out / "checkpoints"), 6,
                                  moment)))
    src = str(Path(ntclass.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen([sys.executable, str(Path(__file__).with_name(
        "kill_training.py")), str(job)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)


def test_a_run_killed_around_a_checkpoint_resumes_to_the_weights_of_an_uninterrupted_run(
        manifest, tmp_path, caplog):
    """Killed (SIGKILL) after step 6's loss row and validation but before its checkpoint,
    or half-way through the checkpoint's write: the rerun resumes from checkpoint 3, cuts
    the logs back to it, and ends bit for bit where an uninterrupted run does."""
    from kill_training import MOMENTS

    killed = {moment: (f"killed{i}", start_killed_run(manifest, tmp_path, KILLED,
                                                      f"killed{i}", moment))
              for i, moment in enumerate(MOMENTS)}
    whole = run(manifest, tmp_path, KILLED, "whole")
    for moment, (name, proc) in killed.items():
        output = proc.communicate(timeout=600)[0]
        assert proc.returncode == -signal.SIGKILL, output[-3000:]
        (folder,) = (tmp_path / name / "checkpoints").iterdir()
        # what the kill left: no checkpoint 6, its temporary file, the rows of step 6
        assert not (folder / "model_checkpoint_6").exists()
        (left,) = folder.glob(".model_checkpoint_6.tmp-*")
        assert (left.stat().st_size > 0) == (moment == "while writing the checkpoint")
        assert pd.read_csv(folder / "loss.csv")["iteration"].tolist() == [1, 2, 3, 4, 5, 6]
        assert pd.read_csv(folder / "validation.csv")["iteration"].tolist() == [3, 6]

        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ntclass.train.run"):
            run(manifest, tmp_path, KILLED, name)
        assert f"resuming from iteration 3 ({folder / 'model_checkpoint_3'})" in caplog.text
        assert f"removed {left}" in caplog.text and not left.exists()
        for file in ("model.pt", "last.pt"):
            a, b = (torch.load(d / file, weights_only=True) for d in (whole, tmp_path / name))
            assert a["iteration"] == b["iteration"], (moment, file)
            assert all(torch.equal(a["state_dict"][k], b["state_dict"][k])
                       for k in a["state_dict"]), (moment, file)
        for log_file in ("loss.csv", "validation.csv"):
            a, b = (pd.read_csv(d / log_file) for d in (whole, tmp_path / name))
            assert a.drop(columns="seconds", errors="ignore").equals(
                b.drop(columns="seconds", errors="ignore")), (moment, log_file)


def test_a_checkpoint_that_does_not_load_is_set_aside_and_the_logs_cut_to_the_one_used(
        tmp_path, caplog):
    from ntclass.train.run import cut_logs_to, newest_checkpoint

    for iteration in (3, 6):
        torch.save({"model_state_dict": {}, "optimizer_state_dict": {}},
                   tmp_path / f"model_checkpoint_{iteration}")
    data = (tmp_path / "model_checkpoint_6").read_bytes()
    # torn under its final name (the loop never writes so; a copy or a disk may)
    (tmp_path / "model_checkpoint_6").write_bytes(data[:len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="ntclass.train.run"):
        found = newest_checkpoint(tmp_path)
    assert found.iteration == 3 and found.path == tmp_path / "model_checkpoint_3"
    assert f"checkpoint {tmp_path / 'model_checkpoint_6'} does not load" in caplog.text
    assert (tmp_path / "damaged-model_checkpoint_6").exists()
    assert not (tmp_path / "model_checkpoint_6").exists()

    # rows after the checkpoint go, a torn last one included
    rows = "".join(f"{i},0.5,1.0\n" for i in range(1, 6))
    (tmp_path / "loss.csv").write_text("iteration,loss,seconds\n" + rows + "6,0.")
    (tmp_path / "validation.csv").write_text("iteration,loss,accuracy\n3,0.5,0.5\n"
                                             "6,0.4,0.6\n")
    cut_logs_to(tmp_path, 3)
    assert pd.read_csv(tmp_path / "loss.csv")["iteration"].tolist() == [1, 2, 3]
    assert pd.read_csv(tmp_path / "validation.csv")["iteration"].tolist() == [3]
    # a row missing before the checkpoint: refused, naming the folder
    (tmp_path / "loss.csv").write_text("iteration,loss,seconds\n1,0.5,1.0\n3,0.5,1.0\n")
    with pytest.raises(NtclassError, match="does not hold the loss of every iteration up "
                       "to its checkpoint 3"):
        cut_logs_to(tmp_path, 3)

    (tmp_path / "model_checkpoint_3").write_bytes(b"")
    assert newest_checkpoint(tmp_path) is None
