"""Models trained elsewhere: predict-only runs with an ntclass model file and with a
gunpowder checkpoint of Synister's VGG, fine-tuning from a checkpoint, and the evaluation
of an existing prediction table."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from synister_reference import (
    DOWNSAMPLE,
    SYNISTER_CLASSES,
    save_gunpowder_checkpoint,
    synister_cubes,
    synister_model,
    synister_probabilities,
)
from workflow_helpers import snakemake, write_config

from ntclass.errors import NtclassError
from ntclass.models import build_model
from ntclass.models.checkpoints import import_model, read_checkpoint
from ntclass.models.modelfile import load_model, model_record
from ntclass.settings import ImportedModel
from ntclass.volumes import crop_cubes, open_raw

# the config's classes: Synister's six plus tyramine, in ntclass's order
CLASSES = ["acetylcholine", "gaba", "glutamate", "serotonin", "dopamine", "octopamine",
           "tyramine"]
OWN_CLASSES = ["serotonin", "glutamate", "gaba", "acetylcholine"]  # the demo's four, shuffled
OWN_SHAPE = [8, 48, 48]
OWN_PARAMS = {"fmaps": 4, "fc_size": 16, "dropout": 0.0, "global_pool": True,
              "downsample_factors": [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]]}
SYNISTER_SHAPE = [16, 48, 48]
SYNISTER_PARAMS = {"fmaps": 4, "fmap_increase": 2, "convolutions_per_level": 2,
                   "downsample_factors": [list(d) for d in DOWNSAMPLE], "fc_size": 4096}


def own_model_file(path, classes=OWN_CLASSES, seed: int = 1) -> torch.nn.Module:
    """An ntclass model.pt as a training run writes it (random weights)."""
    torch.manual_seed(seed)
    model = build_model("vgg3d", OWN_SHAPE, len(classes), **OWN_PARAMS).eval()
    torch.save(model_record(model, architecture="vgg3d", model_params=OWN_PARAMS,
                            classes=classes, input_shape=OWN_SHAPE, voxel_size=[40, 4, 4],
                            intensity={"uint8": [0.0, 255.0]}, iteration=7, crop="ntclass"),
               path)
    return model


def executed_rules(result: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"^local(?:rule|checkpoint) (\w+):", result.stdout + result.stderr,
                          re.MULTILINE))


def off_grid_table(tiny_demo, folder):
    """The demo's synapses moved to seeded places inside their voxels: real locations
    rarely lie on a voxel corner, and there Synister's crop and ntclass's differ."""
    table = pd.read_csv(tiny_demo["table"])
    rng = np.random.default_rng(5)
    for axis, size in zip("zyx", (40, 4, 4)):
        table[axis] = (table[axis] // size) * size + rng.uniform(0, size, len(table))
    path = folder / "off_grid.csv"
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def predict_only(tiny_demo, tmp_path_factory):
    """A config without a source: two models from checkpoints, one table target."""
    run = tmp_path_factory.mktemp("predict_only")
    own = own_model_file(run / "own_model.pt")
    reference = synister_model(SYNISTER_SHAPE, gain=8)  # probabilities that tell cubes apart
    save_gunpowder_checkpoint(reference, run / "model_checkpoint_1000")
    config = {
        "classes": CLASSES,
        "voxel_size": [40, 4, 4],
        "models": {
            "own": {"checkpoint": "own_model.pt", "absent_classes": "zero"},
            "synister": {"checkpoint": "model_checkpoint_1000", "architecture": "vgg3d",
                         "params": SYNISTER_PARAMS, "input_shape": SYNISTER_SHAPE,
                         "checkpoint_classes": SYNISTER_CLASSES, "absent_classes": "zero"},
        },
        "targets": {"demo": {"type": "table", "table": str(off_grid_table(tiny_demo, run)),
                             "raw_container": tiny_demo["volume"]}},
        "prediction": {"shards": 2, "batch_size": 8},
    }
    write_config(run, config)
    result = snakemake(run)
    return run, own, reference, result


def test_predict_only_runs_no_split_and_no_training(predict_only):
    run, _, _, result = predict_only
    rules = executed_rules(result)
    assert {"target_synapses", "import_model", "predict_shard", "evaluate"} <= rules
    assert not rules & {"split", "train", "training_curves", "demo_data"}
    assert not (run / "results/split").exists()
    for model in ("own", "synister"):
        metrics = json.loads((run / f"results/evaluation/{model}/demo/metrics.json"
                              ).read_text())
        assert metrics["synapse"]["n"] > 0


def cubes_of(predictions: pd.DataFrame, volume_path: str, shape) -> np.ndarray:
    volume = open_raw(volume_path, "volumes/raw/s0", None)
    cubes, _ = crop_cubes(volume, predictions[["z", "y", "x"]].to_numpy(float), shape)
    return cubes


def test_synister_checkpoint_gives_synisters_probabilities(predict_only, tiny_demo):
    run, _, reference, _ = predict_only
    pred = pd.read_parquet(run / "results/predictions/synister/demo/predictions.parquet")
    volume = open_raw(tiny_demo["volume"], "volumes/raw/s0", None)
    theirs = synister_cubes(volume, pred[["z", "y", "x"]].to_numpy(float), SYNISTER_SHAPE)
    ours = cubes_of(pred, tiny_demo["volume"], SYNISTER_SHAPE)
    # the locations are off the grid: most cubes of the two conventions differ
    assert (theirs != ours).any(axis=(1, 2, 3)).mean() > 0.5
    expected = synister_probabilities(reference, theirs)
    got = pred[SYNISTER_CLASSES].to_numpy()
    assert np.abs(got - expected).max() < 1e-4
    # a class the model lacks has probability 0; the others still sum to 1
    assert (pred["tyramine"] == 0).all()
    assert np.allclose(pred[CLASSES].sum(axis=1), 1, atol=1e-5)
    assert (pred["predicted_nt"] == pd.Series(SYNISTER_CLASSES)[expected.argmax(1)].values
            ).all()


def voxel_centred_and_random(volume, n: int, seed: int) -> np.ndarray:
    """Locations (nm) at voxel centres (as tables exported from voxel coordinates hold
    them) and anywhere, in whole nm (FAFB's tables) and not, some reaching past the
    volume's border."""
    rng = np.random.default_rng(seed)
    vs, offset = np.array(volume.voxel_size), np.array(volume.offset)
    extent = np.array(volume.shape) * vs
    centred = offset + (rng.integers(0, volume.shape, (n, 3)) + 0.5) * vs
    anywhere = offset + rng.uniform(-vs * 4, extent + vs * 4, (n, 3))
    return np.concatenate([centred, np.trunc(anywhere[: n // 2]), anywhere[n // 2:]])


def test_a_synister_checkpoint_predicts_on_the_cubes_synisters_get_raw_cuts(tmp_path):
    """The path a gunpowder checkpoint takes in prediction (import_model records crop
    synister; the shard job's BlockPredictor reads its cubes with the record's crop) gives
    the cubes of Synister's get_raw, as written out from daisy 0.2's arithmetic in
    tests/synister_reference.py (synister/utils.py at funkelab/synister 101df828, daisy/roi.py
    and daisy/coordinate.py at funkelab/daisy 5d0e6c9a), and Synister's probabilities:
    its intensity mapping, its fill of 0 outside the volume and its class order."""
    from ntclass.cubes import CubeReader
    from ntclass.predict.shard import BlockPredictor, PredictConfig
    from ntclass.settings import Prediction
    from ntclass.volumes import cube_begins, write_zarr_volume

    data = np.random.default_rng(3).integers(0, 256, (40, 112, 112), dtype=np.uint8)
    write_zarr_volume(tmp_path / "v.zarr", "raw", data, (40, 4, 4), offset=(400, 40, 80),
                      chunks=(8, 32, 32))
    volume = open_raw(tmp_path / "v.zarr", "raw")
    reference = synister_model(SYNISTER_SHAPE, gain=8)  # probabilities that tell cubes apart
    save_gunpowder_checkpoint(reference, tmp_path / "model_checkpoint_1000")
    entry = {"checkpoint": str(tmp_path / "model_checkpoint_1000"), "architecture": "vgg3d",
             "params": SYNISTER_PARAMS, "input_shape": SYNISTER_SHAPE,
             "checkpoint_classes": SYNISTER_CLASSES}
    classes = CLASSES[:6]  # ntclass's order, not the checkpoint's
    record = import_model(entry["checkpoint"], as_model(entry), classes, [40, 4, 4],
                          tmp_path / "model.pt")
    assert record["crop"] == "synister"

    locations = voxel_centred_and_random(volume, 12, seed=4)
    theirs = synister_cubes(volume, locations, SYNISTER_SHAPE)
    pending, padded = CubeReader(volume, SYNISTER_SHAPE, 1).submit(locations, record["crop"])
    ours = np.stack([cube.result() for cube in pending])
    assert np.array_equal(ours, theirs)
    assert padded.any() and not padded.all()
    # the voxel-centred cubes are where rounding halves down would have cut others
    vs = np.array(volume.voxel_size)
    start = np.trunc(locations[:12]).astype(int) - np.array(SYNISTER_SHAPE) // 2 * vs
    halves_down = (start + (vs - 1) // 2) // vs - np.array(volume.offset) // vs
    moved = (halves_down != cube_begins(volume, locations[:12], SYNISTER_SHAPE, "synister"))
    assert moved.any(axis=1).mean() > 0.5

    rows = pd.DataFrame({"raw_container": str(tmp_path / "v.zarr"), "raw_dataset": "raw",
                         "z": locations[:, 0], "y": locations[:, 1], "x": locations[:, 2]})
    cfg = PredictConfig(classes=tuple(classes), voxel_size=(40, 4, 4), intensity_range=None,
                        settings=Prediction(device="cpu", mixed_precision=False,
                                            rows_per_block=64, batch_size=8, workers=1))
    probs, flagged, _ = BlockPredictor(str(tmp_path / "model.pt"), None, cfg, None
                                       ).predict(rows)
    order = [SYNISTER_CLASSES.index(c) for c in classes]
    expected = synister_probabilities(reference, theirs)[:, order]
    assert np.abs(probs - expected).max() < 1e-5
    assert np.array_equal(flagged, padded)
    # the comparison tells cubes apart: on the cubes of rounding halves down, and on
    # another intensity mapping, the probabilities are far outside its tolerance
    moved_cubes = np.stack([volume.read(b, SYNISTER_SHAPE)[0] for b in halves_down])
    elsewhere = synister_probabilities(reference, moved_cubes)[:, order]
    assert np.abs(elsewhere - expected[:12]).max(axis=1)[moved.any(axis=1)].min() > 1e-4
    with torch.no_grad():  # [0, 1] in place of [-1, 1]
        unit = torch.softmax(reference(torch.tensor(theirs / np.float32(255))), dim=1)
    assert np.abs(unit.numpy()[:, order] - expected).max() > 1e-3


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason="no GPU"))])
def test_uint8_raw_maps_to_synisters_input_bit_for_bit(device):
    """Every uint8 value as Synister's get_raw maps it (synister/utils.py at funkelab/
    synister 101df828: `raw.astype(np.float32)`, `/ 255.0`, `* 2.0 - 1.0`, float32
    throughout) and as ntclass does for a gunpowder checkpoint (SYNISTER_INTENSITY)."""
    from ntclass.intensity import Intensity, to_network
    from ntclass.models.checkpoints import SYNISTER_INTENSITY

    raw = np.arange(256, dtype=np.uint8).reshape(1, 4, 8, 8)
    theirs = raw.astype(np.float32) / 255.0 * 2.0 - 1.0
    intensity = Intensity("uint8", *SYNISTER_INTENSITY["uint8"])
    ours = to_network(torch.from_numpy(raw).to(device), intensity).cpu().numpy()[:, 0]
    assert theirs.dtype == ours.dtype == np.float32
    assert np.array_equal(ours, theirs)


def test_ntclass_model_file_outputs_are_mapped_by_name(predict_only, tiny_demo):
    run, own, _, _ = predict_only
    pred = pd.read_parquet(run / "results/predictions/own/demo/predictions.parquet")
    cubes = cubes_of(pred, tiny_demo["volume"], OWN_SHAPE)
    with torch.no_grad():
        x = torch.tensor(cubes.astype(np.float32) / 255 * 2 - 1)[:, None]
        expected = torch.softmax(own(x), dim=1).numpy()
    assert np.abs(pred[OWN_CLASSES].to_numpy() - expected).max() < 1e-4
    assert (pred[["dopamine", "octopamine", "tyramine"]] == 0).all().all()


def test_evaluate_command_reproduces_the_workflows_evaluation(predict_only, tmp_path):
    run = predict_only[0]
    config = run / "config.yaml"
    csv = run / "results/predictions/own/demo/predictions.csv"
    out = tmp_path / "evaluation"
    result = subprocess.run([sys.executable, "-m", "ntclass.cli", "evaluate", str(csv),
                             "--config", str(config), "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ours = json.loads((out / "metrics.json").read_text())
    workflow = json.loads((run / "results/evaluation/own/demo/metrics.json").read_text())
    # the CSV's decimal text: the same calls, calibration figures within rounding
    for level in ("synapse", "neuron"):
        for key in ("n", "accuracy", "confusion_matrix"):
            assert ours[level][key] == workflow[level][key], (level, key)
    assert ours["synapse"]["ece"] == pytest.approx(workflow["synapse"]["ece"], abs=1e-6)
    for name in ("report.txt", "neurons.csv", "edges.csv", "confusion.png",
                 "calibration.png"):
        assert (out / name).stat().st_size > 0
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "neurons.csv"),
        pd.read_csv(run / "results/evaluation/own/demo/neurons.csv"), rtol=1e-6)


def as_model(entry: dict) -> ImportedModel:
    return ImportedModel.from_partial(entry, "models.m")


def test_a_checkpoint_that_does_not_fit_names_the_tensor(tmp_path):
    save_gunpowder_checkpoint(synister_model(SYNISTER_SHAPE), tmp_path / "ckpt")
    entry = {"checkpoint": str(tmp_path / "ckpt"), "architecture": "vgg3d",
             "params": {**SYNISTER_PARAMS, "fmaps": 8}, "input_shape": SYNISTER_SHAPE,
             "checkpoint_classes": SYNISTER_CLASSES}
    with pytest.raises(NtclassError, match=r"tensor 'features.0.weight' has shape "
                       r"\[4, 1, 3, 3, 3\] in the checkpoint and \[8, 1, 3, 3, 3\]"):
        import_model(entry["checkpoint"], as_model(entry), SYNISTER_CLASSES, [40, 4, 4],
                     tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


def test_classes_are_matched_by_name_or_refused(tmp_path):
    save_gunpowder_checkpoint(synister_model(SYNISTER_SHAPE), tmp_path / "ckpt")
    entry = {"checkpoint": str(tmp_path / "ckpt"), "architecture": "vgg3d",
             "params": SYNISTER_PARAMS, "input_shape": SYNISTER_SHAPE,
             "checkpoint_classes": SYNISTER_CLASSES}
    with pytest.raises(NtclassError, match="'tyramine' is not among the outputs"):
        import_model(entry["checkpoint"], as_model(entry), CLASSES, [40, 4, 4],
                     tmp_path / "m.pt")
    with pytest.raises(NtclassError, match="output for class 'octopamine'"):
        import_model(entry["checkpoint"], as_model(entry), CLASSES[:4], [40, 4, 4],
                     tmp_path / "m.pt")
    with pytest.raises(NtclassError, match="input_shape"):
        import_model(entry["checkpoint"], as_model({k: v for k, v in entry.items()
                                                    if k != "input_shape"}), SYNISTER_CLASSES,
                     [40, 4, 4], tmp_path / "m.pt")


def test_code_in_a_checkpoint_is_never_run(tmp_path):
    from conftest import CodeRunningPayload

    marker = tmp_path / "ran"
    torch.save({"model_state_dict": CodeRunningPayload(str(marker))}, tmp_path / "evil")
    with pytest.raises(NtclassError, match="weights_only"):
        read_checkpoint(tmp_path / "evil")
    assert not marker.exists()


def test_fine_tuning_starts_from_the_checkpoint(tiny_demo, tmp_path):
    """training.init_from: the weights start as the checkpoint's (outputs mapped by name,
    or a new output layer), and the run's identity includes the weights' hash."""
    own = own_model_file(tmp_path / "start.pt")
    config = {
        "classes": ["acetylcholine", "gaba", "glutamate", "serotonin"],
        "source": {"type": "table", "table": tiny_demo["table"],
                   "raw_container": tiny_demo["volume"]},
        "split": {"method": "random", "seed": 0, "max_deviation": 0.2},
        "training": {"input_shape": OWN_SHAPE, "batch_size": 4, "iterations": 4,
                     "learning_rate": 1e-9, "save_every": 2, "validate_every": 0,
                     "init_from": {"checkpoint": "start.pt"}},
        "models": {
            "kept": {"architecture": "vgg3d", "params": OWN_PARAMS},
            "new": {"architecture": "vgg3d", "params": OWN_PARAMS,
                    "training": {"init_from": {"checkpoint": "start.pt",
                                               "output_layer": "new"}}},
        },
        "targets": {},
    }
    write_config(tmp_path, config)
    snakemake(tmp_path, "results/models/kept/model.pt", "results/models/new/model.pt")
    start = own.state_dict()
    order = [OWN_CLASSES.index(c) for c in config["classes"]]
    for name in ("kept", "new"):
        state = read_checkpoint(tmp_path / f"results/models/{name}/model.pt")[0]
        # a learning rate of 1e-9: the weights are still the checkpoint's
        assert torch.allclose(state["features.0.weight"], start["features.0.weight"],
                              atol=1e-6)
        out = state["classifier.6.weight"]
        same = torch.allclose(out, start["classifier.6.weight"][order], atol=1e-6)
        assert same == (name == "kept")
    log = (tmp_path / "logs/train/kept.log").read_text()
    assert "initial weights from start.pt" in log
    # other initial weights: the model trains again, in a checkpoint folder of its own
    own_model_file(tmp_path / "start.pt", seed=2)
    snakemake(tmp_path, "results/models/kept/model.pt")
    folders = list((tmp_path / "results/models/kept/checkpoints").iterdir())
    assert len(folders) == 2
    state = read_checkpoint(tmp_path / "results/models/kept/model.pt")[0]
    assert not torch.allclose(state["features.0.weight"], start["features.0.weight"],
                              atol=1e-3)


def refusal(directory, tiny_demo, models: dict, targets: dict | None = None) -> str:
    """The error of a dry run of a predict-only config of `models`."""
    targets = targets or {"t": {"type": "table", "table": tiny_demo["table"],
                                "raw_container": tiny_demo["volume"]}}
    write_config(directory, {"classes": CLASSES, "models": models, "targets": targets})
    result = snakemake(directory, "-n", check=False)
    assert result.returncode != 0
    return result.stderr


def test_a_config_without_source_must_predict_with_checkpoints(tmp_path, tiny_demo):
    assert "model 'm' is to be trained, which needs a labelled source" in refusal(
        tmp_path, tiny_demo, {"m": {"architecture": "vgg3d"}})
    assert "target 'test' is a part of the split" in refusal(
        tmp_path, tiny_demo, {"m": {"checkpoint": "x.pt"}},
        {"test": {"type": "split", "part": "test"}})


def test_a_missing_checkpoint_is_named(tmp_path, tiny_demo):
    assert ("ntclass: file 'gone/model_checkpoint_9' given as models.m.checkpoint does not "
            "exist") in refusal(tmp_path, tiny_demo,
                                {"m": {"checkpoint": "gone/model_checkpoint_9"}})


NOT_A_CHECKPOINT = {
    "a Git LFS pointer": (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n"
                          b"size 123\n", r"is a Git LFS pointer, not the checkpoint itself"),
    "a text file": (b"epoch 10, loss 0.3\n", r"is not a PyTorch checkpoint"),
}


def test_a_truncated_checkpoint_is_named_damaged_not_unsafe(tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save({"model_state_dict": {"w": torch.zeros(1000)}}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(NtclassError, match=r"'.*cut\.pt' is damaged or incomplete") as error:
        read_checkpoint(cut)
    assert "weights_only" not in str(error.value)
    with pytest.raises(NtclassError, match="is damaged or incomplete"):
        load_model(cut)


@pytest.mark.parametrize("case", NOT_A_CHECKPOINT)
def test_a_file_that_is_no_checkpoint_is_named_as_such(tmp_path, case):
    content, sentence = NOT_A_CHECKPOINT[case]
    (tmp_path / "model.pt").write_bytes(content)
    with pytest.raises(NtclassError, match=sentence) as error:
        read_checkpoint(tmp_path / "model.pt")
    assert "weights_only=False" not in str(error.value)


def test_mismatches_name_their_cause(tmp_path):
    """More outputs than checkpoint_classes: the class order, not the params. Features of
    another cube shape: the input shape, not the params."""
    save_gunpowder_checkpoint(synister_model(SYNISTER_SHAPE), tmp_path / "ckpt")
    entry = {"checkpoint": str(tmp_path / "ckpt"), "architecture": "vgg3d",
             "params": SYNISTER_PARAMS, "input_shape": SYNISTER_SHAPE,
             "checkpoint_classes": SYNISTER_CLASSES[:-1]}
    with pytest.raises(NtclassError, match=r"has \d+ outputs, but its class order "
                       r"\(checkpoint_classes\) names \d+"):
        import_model(entry["checkpoint"], as_model(entry), SYNISTER_CLASSES[:-1], [40, 4, 4],
                     tmp_path / "m.pt")
    other = [SYNISTER_SHAPE[0], SYNISTER_SHAPE[1] * 2, SYNISTER_SHAPE[2] * 2]
    with pytest.raises(NtclassError, match=r"trained on cubes of another shape.*give the "
                       r"input_shape it was trained on"):
        import_model(entry["checkpoint"], as_model({**entry, "input_shape": other,
                                                    "checkpoint_classes": SYNISTER_CLASSES}),
                     SYNISTER_CLASSES, [40, 4, 4], tmp_path / "m.pt")


def test_fine_tuning_on_fewer_classes_is_pointed_to_a_new_output_layer(tmp_path):
    from ntclass.models.checkpoints import init_weights
    from ntclass.settings import InitFrom

    params = {"fmaps": 2, "fc_size": 8, "downsample_factors": [[1, 2, 2], [2, 2, 2]],
              "global_pool": True}
    four = build_model("vgg3d", [4, 24, 24], 4, **params)
    torch.save(model_record(four, architecture="vgg3d", model_params=params,
                            classes=["a", "b", "c", "d"], input_shape=[4, 24, 24],
                            voxel_size=[40, 4, 4], intensity={}, iteration=1,
                            crop="ntclass"),
               tmp_path / "four.pt")
    three = build_model("vgg3d", [4, 24, 24], 3, **params)
    init = InitFrom(checkpoint=str(tmp_path / "four.pt"), classes=None, output_layer="keep",
                    sha256=None)
    with pytest.raises(NtclassError, match=r"output for class 'd'.*set training.init_from."
                       r"output_layer: new"):
        init_weights(three, init, ["a", "b", "c"], "vgg3d")
