import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CLASSES

from ntclass.errors import NtclassError
from ntclass.settings import Augment, Loss, Neither
from ntclass.sources.synapses import read_table_source
from ntclass.split.assign import make_split
from ntclass.train.run import TrainConfig, TrainOutputs, learning_rate_at, load_model, train


def only_section(**augment) -> dict:
    """An augment section with just the augmentations given (the schema's defaults switch
    some on)."""
    return {"mirror_transpose": False, **{k: {"enabled": False} for k in Augment.nested},
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


@pytest.mark.parametrize("kill", ["while writing checkpoint 6", "before atomic writes"])
def test_a_run_killed_while_writing_a_checkpoint_resumes_from_the_last_good_one(
        manifest, tmp_path, caplog, kill):
    """The files a kill can leave: a partial temporary checkpoint (atomic writes), or, from
    a writer without them, a truncated checkpoint under its final name; and a loss log
    torn in its last row. The resumed run equals an uninterrupted one."""
    cfg = replace(SMALL, validate_every=0)
    whole = torch.load(run(manifest, tmp_path, cfg, "whole") / "model.pt",
                       weights_only=True)["state_dict"]
    killed = run(manifest, tmp_path, cfg, "killed")
    (folder,) = (killed / "checkpoints").iterdir()
    final = folder / "model_checkpoint_6"
    data = final.read_bytes()
    if kill == "while writing checkpoint 6":
        final.unlink()
        (folder / "incomplete-model_checkpoint_6").write_bytes(data[:len(data) // 2])
    else:
        final.write_bytes(data[:len(data) // 2])
    with open(folder / "loss.csv", "a") as f:
        f.write("3,0.4")  # a row cut short by the kill
    for name in ("model.pt", "last.pt", "loss.csv"):
        (killed / name).unlink()

    with caplog.at_level(logging.INFO, logger="ntclass.train.run"):
        run(manifest, tmp_path, cfg, "killed")
    assert "resuming from iteration 3" in caplog.text
    if kill == "before atomic writes":
        assert f"checkpoint {final} does not load" in caplog.text
        assert f"resuming from {folder / 'model_checkpoint_3'}" in caplog.text
        assert (folder / "damaged-model_checkpoint_6").exists()
    assert not list(folder.glob("incomplete-*"))
    resumed = torch.load(killed / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert pd.read_csv(killed / "loss.csv")["iteration"].tolist() == [1, 2, 3, 4, 5, 6]


def test_resume_skips_a_checkpoint_written_ahead_of_its_logged_rows(tmp_path):
    """gunpowder writes a step's checkpoint before the step's loss row and validation: a
    kill in between leaves a checkpoint the logs do not reach. Resuming from it would lose
    those rows, so it is removed and redone from the newest one they reach."""
    from ntclass.train.run import logged_through, resume_point

    for iteration in (20, 40, 60):
        torch.save({"model_state_dict": {}, "optimizer_state_dict": {}},
                   tmp_path / f"model_checkpoint_{iteration}")
    rows = "".join(f"{i},0.5,1.0\n" for i in range(1, 46))
    (tmp_path / "loss.csv").write_text("iteration,loss,seconds\n" + rows + "46,0.")
    (tmp_path / "validation.csv").write_text("iteration,loss,accuracy\n40,0.5,0.5\n")
    assert logged_through(tmp_path, 40) == 45
    assert resume_point(tmp_path, 45) == 40
    assert sorted(p.name for p in tmp_path.glob("model_checkpoint_*")) == [
        "model_checkpoint_20", "model_checkpoint_40"]
    # the validation due at 40 missing: the logs reach 39 only
    (tmp_path / "validation.csv").write_text("iteration,loss,accuracy\n")
    assert logged_through(tmp_path, 40) == 39
    assert resume_point(tmp_path, 39) == 20
