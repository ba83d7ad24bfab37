"""The whole workflow end to end on a tiny demo config, through real snakemake."""

from __future__ import annotations

import html as html_lib
import json
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy.stats import binomtest
from workflow_helpers import TINY_CONFIG, planned_jobs, snakemake, write_config

CLASSES = TINY_CONFIG["classes"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("workflow")
    write_config(directory, TINY_CONFIG)
    snakemake(directory)
    return directory


def test_outputs_exist(finished_run):
    for path in ["results/split/manifest.csv", "results/split/summary.csv",
                 "results/models/tiny/model.pt", "results/models/tiny/model_last.pt",
                 "results/models/tiny/training_log.csv", "results/models/tiny/validation.csv",
                 "results/predictions/tiny/test/shards/0.parquet",
                 "results/predictions/tiny/test/shards/1.parquet",
                 "results/predictions/tiny/test/predictions.csv",
                 "results/predictions/tiny/test/predictions.parquet",
                 "results/evaluation/tiny/test/metrics.json",
                 "results/evaluation/tiny/test/report.txt",
                 "results/evaluation/tiny/test/neurons.csv",
                 "results/evaluation/tiny/test/inputs.csv",
                 "results/evaluation/tiny/test/edges.csv",
                 "results/evaluation/tiny/test/confusion.png",
                 "results/evaluation/tiny/test/calibration.png",
                 "results/evaluation/comparison.csv", "results/evaluation/comparison.html",
                 "results/models/tiny/training_curves.png",
                 "logs/split.log", "logs/train/tiny.log"]:
        assert (finished_run / path).is_file(), path


def test_every_job_records_its_cost_and_ntclass_costs_sums_them(finished_run):
    bench = finished_run / "results/benchmarks"
    expected = {"split": ["split.tsv"], "train": ["tiny.tsv"],
                "target_synapses": ["test.tsv"],
                "predict_shard": ["tiny/test/0.tsv", "tiny/test/1.tsv"],
                "merge_predictions": ["tiny/test.tsv"], "evaluate": ["tiny/test.tsv"],
                "compare": ["compare.tsv"]}
    for rule, files in expected.items():
        for name in files:
            row = pd.read_csv(bench / rule / name, sep="\t").iloc[0]
            assert row["s"] > 0, (rule, name)
    out = subprocess.run([str(Path(sys.executable).with_name("ntclass")), "costs", str(bench)],
                         capture_output=True, text=True, check=True).stdout
    jobs = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()[1:]
            if line and not line.startswith("(")}
    assert jobs["predict_shard"] == 2 and jobs["train"] == 1
    assert set(expected) <= set(jobs)


def test_split_keeps_neurons_whole(finished_run):
    manifest = pd.read_csv(finished_run / "results/split/manifest.csv")
    assert manifest.groupby("pre_id")["split"].nunique().max() == 1
    assert set(manifest["split"]) == {"train", "validation", "test"}


def test_training_log_and_model(finished_run):
    losses = pd.read_csv(finished_run / "results/models/tiny/training_log.csv")
    iterations = TINY_CONFIG["training"]["iterations"]
    assert list(losses["iteration"]) == list(range(1, iterations + 1))
    assert losses["loss"].tail(100).mean() < losses["loss"].head(50).mean()
    record = torch.load(finished_run / "results/models/tiny/model.pt", weights_only=True)
    assert record["classes"] == CLASSES and record["architecture"] == "vgg3d"


def test_every_test_synapse_predicted_once(finished_run):
    manifest = pd.read_csv(finished_run / "results/split/manifest.csv")
    test = manifest[manifest["split"] == "test"]
    pred = pd.read_csv(finished_run / "results/predictions/tiny/test/predictions.csv")
    assert sorted(pred["synapse_id"]) == sorted(test["synapse_id"])
    assert np.allclose(pred[CLASSES].sum(axis=1), 1.0, atol=1e-4)
    assert (pred["predicted_nt"] == pred[CLASSES].idxmax(axis=1)).all()
    assert np.allclose(pred["confidence"], pred[CLASSES].max(axis=1))
    ranked = np.sort(pred[CLASSES].to_numpy(), axis=1)
    assert np.allclose(pred["margin"], ranked[:, -1] - ranked[:, -2], atol=1e-6)
    p = pred[CLASSES].to_numpy()
    assert np.allclose(pred["entropy"], -(p * np.log(np.clip(p, 1e-30, None))).sum(axis=1),
                       atol=1e-5)
    merged = pred.merge(test, on="synapse_id", suffixes=("", "_m"))
    assert (merged["nt"] == merged["nt_m"]).all()
    parquet = pd.read_parquet(finished_run / "results/predictions/tiny/test/predictions.parquet")
    assert len(parquet) == len(pred)
    shards = [pd.read_parquet(finished_run / f"results/predictions/tiny/test/shards/{i}.parquet")
              for i in (0, 1)]
    assert all(len(s) > 0 for s in shards), "both shards hold synapses"


def test_metrics_agree_with_predictions_and_beat_chance(finished_run):
    pred = pd.read_csv(finished_run / "results/predictions/tiny/test/predictions.csv")
    metrics = json.loads((finished_run / "results/evaluation/tiny/test/metrics.json").read_text())
    accuracy = (pred["predicted_nt"] == pred["nt"]).mean()
    assert metrics["synapse"]["accuracy"] == pytest.approx(accuracy)
    assert metrics["synapse"]["confusion_matrix"]["classes"] == CLASSES
    assert np.sum(metrics["synapse"]["confusion_matrix"]["counts"]) == len(pred)
    # the demo data are learnable: a tiny model trained for minutes beats chance clearly
    # (one-sided binomial test; the test part holds a few dozen synapses)
    correct = int((pred["predicted_nt"] == pred["nt"]).sum())
    p_value = binomtest(correct, len(pred), metrics["chance"], alternative="greater").pvalue
    assert p_value < 0.01, metrics["synapse"]
    report = (finished_run / "results/evaluation/tiny/test/report.txt").read_text()
    assert f"accuracy           {accuracy:.3f}" in report


def test_input_composition_and_provenance_of_the_run(finished_run):
    """inputs.csv counts each post-synaptic neuron's inputs by predicted NT; the prediction
    table, metrics.json and the report say which model file and config made them."""
    import hashlib

    from ntclass.provenance import table_provenance

    pred = pd.read_csv(finished_run / "results/predictions/tiny/test/predictions.csv")
    evaluation = finished_run / "results/evaluation/tiny/test"
    inputs = pd.read_csv(evaluation / "inputs.csv").set_index("post_id")
    partnered = pred[pred["post_id"].notna()]
    counts = partnered.groupby(["post_id", "predicted_nt"]).size().unstack(fill_value=0)
    assert sorted(inputs.index) == sorted(counts.index)
    for c in CLASSES:
        expected = counts[c] if c in counts else 0
        assert (inputs[f"n_{c}"] == expected).all(), c
    assert np.allclose(inputs[[f"fraction_{c}" for c in CLASSES]].sum(axis=1), 1.0)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    right = (partnered["predicted_nt"] == partnered["nt"]).sum()
    assert metrics["inputs"]["agreement"] == pytest.approx(right / partnered["nt"].notna().sum())

    made = table_provenance(finished_run / "results/predictions/tiny/test/predictions.parquet")
    model = (finished_run / "results/models/tiny/model.pt").read_bytes()
    assert made["model"] == "tiny" and made["classes"] == CLASSES
    assert made["checkpoint_sha256"] == hashlib.sha256(model).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", made["prediction"]["config_sha256"])
    provenance = metrics["provenance"]
    assert provenance["checkpoint_sha256"] == made["checkpoint_sha256"]
    assert provenance["evaluation"]["neuron_rule"] == "majority"
    assert provenance["evaluation"]["config_sha256"] == made["prediction"]["config_sha256"]
    report = (evaluation / "report.txt").read_text()
    assert f"checkpoint sha256  {made['checkpoint_sha256']}" in report
    assert "coverage" in report and "Inputs (inputs.csv)" in report


def test_rerun_has_nothing_to_do(finished_run):
    assert planned_jobs(finished_run) == {}


def test_cremi_source_runs_too(finished_run, tmp_path):
    """The same data read from per-class CREMI folders: split and training work."""
    shutil.copytree(finished_run / "data/demo/cremi", tmp_path / "cremi")
    config = {**TINY_CONFIG, "source": {"type": "cremi", "directory": "cremi"},
              "training": {**TINY_CONFIG["training"], "iterations": 5, "save_every": 5}}
    write_config(tmp_path, config)
    snakemake(tmp_path, "results/models/tiny/model.pt")
    manifest = pd.read_csv(tmp_path / "results/split/manifest.csv")
    original = pd.read_csv(finished_run / "results/split/manifest.csv")
    assert len(manifest) == len(original)
    assert manifest["raw_container"].str.endswith(".hdf").all()


def test_every_kind_of_target_predicts_the_same_cubes_alike(finished_run, tmp_path):
    """The whole table over the volume and the folder of CREMI crops as targets: every
    synapse predicted once, and the test synapses exactly as the split target has them."""
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    config["targets"] = {
        "test": {"type": "split", "part": "test"},
        "everything": {"type": "table", "table": "data/demo/synapses.csv",
                       "raw_container": "data/demo/volume.zarr"},
        "crops": {"type": "cremi", "directory": "data/demo/cremi"},
    }
    changed = tmp_path / "config.yaml"
    changed.write_text(yaml.safe_dump(config))
    assert planned_jobs(finished_run, "results/predictions/tiny/test/predictions.csv",
                        config=changed) == {}
    snakemake(finished_run, "results/evaluation/tiny/everything/metrics.json",
              "results/evaluation/tiny/crops/metrics.json", config=changed)
    table = pd.read_csv(finished_run / "data/demo/synapses.csv")
    test = pd.read_parquet(finished_run / "results/predictions/tiny/test/predictions.parquet")
    for target in ("everything", "crops"):
        pred = pd.read_parquet(
            finished_run / f"results/predictions/tiny/{target}/predictions.parquet")
        assert sorted(pred["synapse_id"]) == sorted(table["synapse_id"]), target
        same = pred.set_index("synapse_id").loc[test["synapse_id"], CLASSES].to_numpy()
        assert np.allclose(same, test[CLASSES].to_numpy(), atol=1e-5), target
        metrics = json.loads((finished_run /
                              f"results/evaluation/tiny/{target}/metrics.json").read_text())
        assert metrics["synapse"]["n"] == len(table)


def without_chunks(volume: Path, out: Path, drop) -> None:
    """A copy of a zarr volume lacking the chunk files whose (z, y, x) index `drop`
    selects, as an interrupted copy or a store that lost files leaves it."""
    shutil.copytree(volume, out)
    for chunk in (out / "volumes/raw/s0").glob("*.*.*"):
        if drop(tuple(int(i) for i in chunk.name.split("."))):
            chunk.unlink()


def test_cubes_without_data_are_flagged_left_out_and_a_blank_volume_is_refused(
        finished_run, tmp_path):
    """Chunks (16 x 128 x 128 voxels) missing where y < 256: the cubes there hold only the
    fill value. They are flagged, left out of the metrics and counted in the report; a
    volume without any chunk stops the target with one sentence."""
    volume = finished_run / "data/demo/volume.zarr"
    without_chunks(volume, tmp_path / "holey.zarr", lambda key: key[1] < 2)
    without_chunks(volume, tmp_path / "blank.zarr", lambda key: True)
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    table = {"type": "table", "table": "data/demo/synapses.csv"}
    config["targets"] = {"holey": {**table, "raw_container": str(tmp_path / "holey.zarr")},
                         "blank": {**table, "raw_container": str(tmp_path / "blank.zarr")}}
    changed = tmp_path / "config.yaml"
    changed.write_text(yaml.safe_dump(config))
    snakemake(finished_run, "results/evaluation/tiny/holey/metrics.json", config=changed)

    pred = pd.read_parquet(finished_run / "results/predictions/tiny/holey/predictions.parquet")
    y = (pred["y"] / 4).astype(int)  # voxels; cubes reach 24 voxels either side
    assert pred.loc[y + 24 <= 256, "empty"].all()
    assert not pred.loc[y - 24 >= 256, "empty"].any()
    assert 0 < pred["empty"].sum() < len(pred)
    metrics = json.loads(
        (finished_run / "results/evaluation/tiny/holey/metrics.json").read_text())
    assert metrics["empty_cubes"] == {"n": int(pred["empty"].sum()), "left_out": True}
    assert metrics["synapse"]["n"] == int((~pred["empty"] & pred["nt"].notna()).sum())
    report = (finished_run / "results/evaluation/tiny/holey/report.txt").read_text()
    assert f"{int(pred['empty'].sum())} synapses' cubes held no data" in report

    result = snakemake(finished_run, "results/predictions/tiny/blank/predictions.parquet",
                       config=changed, check=False)
    assert result.returncode != 0
    assert (f"ntclass: raw '{tmp_path / 'blank.zarr'}' (dataset 'volumes/raw/s0'): 100% of "
            f"the {len(pred)} synapses' cubes hold no data") in result.stderr
    assert not (finished_run / "results/predictions/tiny/blank/predictions.parquet").exists()


def test_damaged_cache_files_are_predicted_again_and_a_failed_rerun_leaves_nothing_stale(
        finished_run, tmp_path):
    """Truncated cache files: their synapses are predicted again, to the same values. A
    model whose outputs are NaN: refused with one sentence naming it, and the earlier
    predictions and evaluation of that model and target are gone."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, symlinks=True)
    predictions = run / "results/predictions/tiny/test/predictions.parquet"
    before = pd.read_parquet(predictions)
    damaged = sorted((run / "results/predictions/tiny/test/cache").rglob("*.parquet"))
    assert damaged
    for path in damaged:
        path.write_bytes(path.read_bytes()[:200])
    snakemake(run, "--forcerun", "predict_shard", "--",
              "results/evaluation/tiny/test/metrics.json")
    logs = "".join(p.read_text() for p in (run / "logs/predict/tiny/test").glob("[0-9].log"))
    assert f"cache file {damaged[0].relative_to(run)} is damaged" in logs
    pd.testing.assert_frame_equal(pd.read_parquet(predictions), before)

    model = run / "results/models/tiny/model.pt"
    record = torch.load(model, weights_only=True)
    record["state_dict"] = {k: v * float("nan") if v.is_floating_point() else v
                            for k, v in record["state_dict"].items()}
    torch.save(record, model)
    result = snakemake(run, "results/evaluation/tiny/test/metrics.json", check=False)
    assert result.returncode != 0
    assert f"ntclass: model '{Path('results/models/tiny/model.pt')}' gives NaN or infinite " \
           "outputs" in result.stderr, result.stderr[-2000:]
    assert not predictions.exists()
    assert not (run / "results/evaluation/tiny/test/metrics.json").exists()


def predicted_now(run, target: str) -> int:
    """Locations the shards of `target` predicted in their last run (as their logs say)."""
    logs = (run / f"logs/predict/tiny/{target}").glob("[0-9]*.log")
    return sum(int(re.findall(r"(\d+) locations to predict", log.read_text())[-1])
               for log in logs)


def table_target(run, name: str, table: pd.DataFrame, **settings) -> Path:
    """A config predicting `table` (written next to the run) as target `name`."""
    table.to_csv(run / f"{name}.csv", index=False)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["targets"] = {name: {"type": "table", "table": f"{name}.csv",
                                "raw_container": "data/demo/volume.zarr"}}
    config["prediction"] = {**config["prediction"], **settings}
    path = run / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def predictions_of(run, target: str) -> pd.DataFrame:
    table = pd.read_parquet(run / f"results/predictions/tiny/{target}/predictions.parquet")
    return table.sort_values("synapse_id").reset_index(drop=True)


def test_a_new_release_predicts_only_its_changed_synapses(finished_run, tmp_path):
    """Moved and new synapses are predicted again, the rest come from the cache; the
    result equals a run from scratch, which reads its target in batches of 37 rows into 3
    shards (reading in batches changes nothing either)."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("predictions"))
    table = pd.read_csv(run / "data/demo/synapses.csv")
    wanted = "results/predictions/tiny/release/predictions.parquet"
    snakemake(run, wanted, config=table_target(run, "release", table))
    assert predicted_now(run, "release") == len(table)

    release = table.copy()
    release.loc[[3, 50, 100], "z"] += 40  # moved by a section
    release = release.drop(index=[7, 8])  # gone
    new = table.iloc[[20, 30]].assign(synapse_id=lambda t: t["synapse_id"] + 10**6,
                                      y=lambda t: t["y"] + 8)
    release = pd.concat([release, new], ignore_index=True)
    snakemake(run, wanted, config=table_target(run, "release", release))
    assert predicted_now(run, "release") == 5
    incremental = predictions_of(run, "release")
    assert sorted(incremental["synapse_id"]) == sorted(release["synapse_id"])

    scratch = tmp_path / "scratch"
    shutil.copytree(finished_run, scratch, ignore=shutil.ignore_patterns("predictions"))
    snakemake(scratch, wanted, config=table_target(scratch, "release", release,
                                                   read_batch_rows=37, shards=3))
    assert predicted_now(scratch, "release") == len(release)
    assert len(list((scratch / "results/predictions/tiny/release/shards").iterdir())) == 3
    fresh = predictions_of(scratch, "release")
    pd.testing.assert_frame_equal(incremental.drop(columns=CLASSES + ["confidence"]),
                                  fresh.drop(columns=CLASSES + ["confidence"]))
    assert np.allclose(incremental[CLASSES], fresh[CLASSES], atol=1e-6)


def test_signed_edges_and_comparison(finished_run):
    edges = pd.read_csv(finished_run / "results/evaluation/tiny/test/edges.csv")
    neurons = pd.read_csv(finished_run / "results/evaluation/tiny/test/neurons.csv")
    pred = pd.read_csv(finished_run / "results/predictions/tiny/test/predictions.csv")
    assert edges["n_synapses"].sum() == pred["post_id"].notna().sum()
    calls = neurons.set_index("pre_id")["predicted_nt"]
    assert (edges["pre_nt"] == edges["pre_id"].map(calls)).all()
    signs = {"acetylcholine": 1, "gaba": -1, "serotonin": 0, "octopamine": 0}
    assert (edges["sign"] == edges["pre_nt"].map(signs).fillna(0)).all()
    comparison = pd.read_csv(finished_run / "results/evaluation/comparison.csv")
    metrics = json.loads((finished_run / "results/evaluation/tiny/test/metrics.json").read_text())
    assert comparison.loc[0, "accuracy"] == pytest.approx(metrics["synapse"]["accuracy"])
    assert 0 <= comparison.loc[0, "ece"] <= 1


def test_temperature_fitted_on_the_validation_part_and_applied(finished_run, tmp_path):
    from ntclass.evaluate.calibration import fit_temperature
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, symlinks=True)  # times kept: the run stays finished
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["targets"]["validation"] = {"type": "split", "part": "validation"}
    config["evaluation"] = {"temperature_scaling": {"enabled": True, "fit_on": "validation"},
                            "abstention": {"precision": 0.7}}
    write_config(run, config)
    # (its shard jobs are planned once the new target's checkpoint job has run)
    assert planned_jobs(run) == {"target_synapses": 1, "merge_predictions": 1,
                                 "fit_temperature": 1, "fit_abstention": 1, "evaluate": 2,
                                 "compare": 1, "all": 1}
    snakemake(run)
    record = json.loads((run / "results/models/tiny/temperature.json").read_text())
    validation = pd.read_csv(run / "results/predictions/tiny/validation/predictions.csv")
    labels = validation["nt"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    assert record["temperature"] == pytest.approx(
        fit_temperature(validation[CLASSES].to_numpy(), labels), rel=1e-6)
    assert record["synapses"] == len(validation) and record["nll_after"] <= record["nll_before"]
    before = json.loads((finished_run / "results/evaluation/tiny/test/metrics.json").read_text())
    after = json.loads((run / "results/evaluation/tiny/test/metrics.json").read_text())
    assert after["temperature"] == record["temperature"]
    assert after["synapse"]["accuracy"] == before["synapse"]["accuracy"]
    assert after["synapse"]["ece_uncalibrated"] == pytest.approx(before["synapse"]["ece"])
    comparison = pd.read_csv(run / "results/evaluation/comparison.csv").set_index("target")
    assert comparison.loc["test", "temperature"] == pytest.approx(record["temperature"])

    # the abstention threshold, fitted on the calibrated calls of the validation part
    abstention = json.loads((run / "results/models/tiny/abstention.json").read_text())
    assert abstention["temperature"] == record["temperature"]
    for target in ("validation", "test"):
        evaluation = run / f"results/evaluation/tiny/{target}"
        metrics = json.loads((evaluation / "metrics.json").read_text())
        neurons = pd.read_csv(evaluation / "neurons.csv")
        unclear = neurons["predicted_nt"] == "unclear"
        below = (neurons["confidence"] < abstention["threshold"] if abstention["threshold"]
                 is not None else True)
        assert (unclear == below).all()
        assert metrics["abstention"]["coverage"] == pytest.approx(1 - unclear.mean())
        report = (evaluation / "report.txt").read_text()
        assert "abstention:" in report and "precision 0.7" in report
        assert metrics["provenance"]["evaluation"]["temperature"] == record["temperature"]
    validation = json.loads((run / "results/evaluation/tiny/validation/metrics.json"
                             ).read_text())
    if abstention["threshold"] is not None:  # reached on the part it was fitted on
        assert validation["neuron"]["accuracy"] >= 0.7
        assert validation["neuron"]["coverage"] == pytest.approx(abstention["coverage"])


# the tiny target's layer as a whole brain's is cut: several map jobs, several shards an index
VIEW_JOBS = {"enabled": True, "synapses_per_job": 16, "sharded_above": 0,
             "keys_per_minishard": 4, "shard_mb": 0.001}


@pytest.fixture(scope="module")
def viewed_run(finished_run, tmp_path_factory):
    """The finished run with its views and FlyWire tables asked for: only their jobs run."""
    run = tmp_path_factory.mktemp("viewed") / "run"
    shutil.copytree(finished_run, run, symlinks=True)  # times kept: the run stays finished
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["view"] = VIEW_JOBS
    config["evaluation"] = {"flywire_tables": True}
    write_config(run, config)
    # the map and reduce jobs are planned once the checkpoint annotation_plan has run
    assert planned_jobs(run) == {"annotation_plan": 1, "neuroglancer": 1, "flywire_tables": 1,
                                 "all": 1}
    snakemake(run)
    return run


def test_views_hold_every_prediction_over_the_local_raw(viewed_run):
    view = viewed_run / "results/view/tiny/test"
    info = json.loads((view / "annotations/info").read_text())
    assert info["@type"] == "neuroglancer_annotations_v1"
    nt = next(p for p in info["properties"] if p["id"] == "nt")
    assert nt["enum_labels"] == CLASSES
    assert len(list((view / "annotations/by_id").iterdir())) > 1  # shard files
    state = json.loads((view / "state.json").read_text())
    [raw] = state["layers"][0]["source"]
    assert raw["url"] == "zarr2://http://127.0.0.1:9000/data/demo/volume.zarr/volumes/raw/s0"
    assert raw["transform"]["inputDimensions"] == {
        "d0": [4e-8, "m"], "d1": [4e-9, "m"], "d2": [4e-9, "m"]}
    url = (view / "state_url.txt").read_text().strip()
    assert url.startswith("https://neuroglancer-demo.appspot.com/#!")
    metrics = json.loads((viewed_run / "results/evaluation/tiny/test/metrics.json").read_text())
    assert info["ntclass_provenance"] == metrics["provenance"]
    assert info["ntclass_provenance"]["checkpoint_sha256"]
    assert json.loads(urllib.parse.unquote(url.partition("#!")[2])) == state


def test_the_layer_from_its_map_and_reduce_jobs_is_the_one_job_layer(viewed_run, tmp_path):
    """Snakemake ran the annotation layer as a plan, map jobs and reduce jobs, each with its
    benchmark; neuroglancer's own reader decodes it as the layer written in one process."""
    from view_helpers import read_with_neuroglancer

    from ntclass.view.annotation_jobs import index_shards, read_plan, write_annotations

    jobs = viewed_run / "results/view/tiny/test/annotation_jobs"
    plan = read_plan(jobs / "plan.json")
    predictions = viewed_run / "results/predictions/tiny/test/predictions.parquet"
    table = pd.read_parquet(predictions)
    assert len(plan["parts"]) == -(-len(table) // 16) >= 2
    reduces = index_shards(plan)
    assert len(reduces) > len(plan["indices"])  # some index in several shards
    bench = viewed_run / "results/benchmarks"
    assert len(list((bench / "annotation_map/tiny/test").glob("*.tsv"))) == len(plan["parts"])
    assert len(list((bench / "annotation_reduce/tiny/test").rglob("*.tsv"))) == len(reduces)
    one = tmp_path / "one"
    write_annotations(str(predictions), one, CLASSES, tmp_path / "work",
                      limit=plan["limit"], sharded=True, rows_per_part=len(table),
                      minishard_keys=VIEW_JOBS["keys_per_minishard"],
                      shard_bytes=int(VIEW_JOBS["shard_mb"] * 1e6))
    segments = {"pre_segment": sorted(int(s) for s in table.pre_id.dropna().unique()),
                "post_segment": sorted(int(s) for s in table.post_id.dropna().unique())}
    ids = table.synapse_id.tolist()
    layer = read_with_neuroglancer(viewed_run / "results/view/tiny/test/annotations", ids,
                                   segments)
    assert layer == read_with_neuroglancer(one, ids, segments)
    assert sorted(layer["by_id"]) == sorted(ids)


def test_flywire_tables_hold_every_synapse_and_neuron(viewed_run):
    evaluation = viewed_run / "results/evaluation/tiny/test"
    predictions = pd.read_parquet(viewed_run / "results/predictions/tiny/test/predictions.parquet")
    from ntclass.provenance import table_provenance

    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert table_provenance(evaluation / "flywire_synapses.parquet") == metrics["provenance"]
    synapses = pd.read_parquet(evaluation / "flywire_synapses.parquet").set_index("id")
    assert list(synapses.columns) == ["pre_pt_root_id", "post_pt_root_id", "x", "y", "z",
                                      "gaba", "ach", "oct", "ser"]
    predictions = predictions.set_index("synapse_id").loc[synapses.index]
    assert np.array_equal(synapses["ach"], predictions["acetylcholine"])
    assert np.array_equal(synapses["pre_pt_root_id"], predictions["pre_id"])
    neurons = pd.read_csv(evaluation / "neurons.csv")
    flywire = pd.read_csv(evaluation / "flywire_neurons.csv")
    assert flywire["root_id"].tolist() == neurons["pre_id"].tolist()
    codes = {"acetylcholine": "ACH", "gaba": "GABA", "serotonin": "SER", "octopamine": "OCT"}
    called = neurons["predicted_nt"].map(codes)
    assert flywire["nt_type"].fillna("").tolist() == called.fillna("").tolist()


def test_report_holds_the_comparison_the_figures_and_the_view(viewed_run, tmp_path):
    report = tmp_path / "report.html"
    snakemake(viewed_run, "--report", str(report))
    html = report.read_text()
    for name in ("comparison.html", "confusion.png", "calibration.png", "training_curves.png",
                 "report.txt", "state.html"):
        assert name in html, name
    for category in ("Confusion matrices", "Comparison", "Calibration", "Training", "Metrics",
                     "Neuroglancer"):
        assert f'"{category}"' in html, category
    page = (viewed_run / "results/view/tiny/test/state.html").read_text()
    link = re.search(r'<a id="state" href="([^"]+)"', page).group(1)
    assert html_lib.unescape(link) == (
        viewed_run / "results/view/tiny/test/state_url.txt").read_text().strip()


def test_the_view_opens_in_a_browser_with_each_class_in_its_colour(viewed_run, chromium,
                                                                    tmp_path):
    """`ntclass view` serves the project and neuroglancer's bundled client; headless
    Chromium loads the state, and the screenshot shows points of every predicted class
    in its palette colour."""
    from view_browser import MIN_PIXELS, colours_seen, screenshot_when_ready

    from ntclass.view.state import PALETTES

    predictions = pd.read_parquet(viewed_run / "results/predictions/tiny/test/predictions.parquet")
    present = sorted(set(predictions["predicted_nt"]))
    wanted = {c: PALETTES["synister"][c] for c in present}
    server = subprocess.Popen([str(Path(sys.executable).with_name("ntclass")), "view",
                               str(viewed_run), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        for line in server.stdout:
            if "in neuroglancer:" in line:
                url = line.rsplit(" ", 1)[1].strip()
                break
        assert url, "ntclass view printed no URL"
        shot = tmp_path / "view.png"
        seen = screenshot_when_ready(chromium, url, shot, lambda png: colours_seen(png, wanted))
    finally:
        server.terminate()
        server.wait(timeout=30)
    missing = [c for c in present if seen[c] < MIN_PIXELS]
    assert not missing, f"no points in the colour of {missing} ({seen}); see {shot}"


def test_report_in_a_browser_shows_the_comparison_and_a_confusion_matrix(
        finished_run, chromium, tmp_path):
    import html as html_lib

    from report_browser import data_uri_payload, shown_after_clicking

    report = tmp_path / "report.html"
    snakemake(finished_run, "--report", str(report))

    dom = shown_after_clicking(chromium, report, "Comparison", "comparison.html", tmp_path)
    assert "<title>clicked</title>" in dom, dom[:300]
    frame = re.search(r'<iframe[^>]*src="(data:[^"]+)"', dom)
    assert frame, "the comparison is not shown"
    table = data_uri_payload(html_lib.unescape(frame.group(1))).decode()
    assert "<table" in table and "balanced_accuracy" in table and "tiny" in table

    # results with labels are listed by their labels (model, target), not by file name
    dom = shown_after_clicking(chromium, report, "Confusion matrices", "tiny", tmp_path)
    assert "<title>clicked</title>" in dom, dom[:300]
    image = re.search(r'<img[^>]*src="(data:image/png[^"]+)"', dom)
    assert image, "the confusion matrix is not shown"
    assert data_uri_payload(html_lib.unescape(image.group(1)))[:8] == b"\x89PNG\r\n\x1a\n"
