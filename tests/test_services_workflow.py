"""The workflow with real services: MongoDB as the synapse source, SLURM as the executor."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from workflow_helpers import ROOT, TINY_CONFIG, snakemake, two_model_config, write_config

from ntclass.sources.mongo import import_table

QUICK_TRAINING = {**TINY_CONFIG["training"], "iterations": 20, "save_every": 10,
                  "log_every": 10}


def mongo_config(uri: str, database: str) -> dict:
    return {**TINY_CONFIG, "training": QUICK_TRAINING,
            "source": {"type": "mongodb", "uri": uri, "database": database,
                       "raw_container": "data/volume.zarr", "raw_dataset": "volumes/raw/s0"}}


def test_mongodb_as_source_and_as_target_with_write_back(mongo_uri, tmp_path):
    demo = {**TINY_CONFIG["demo"], "out_dir": "data"}
    write_config(tmp_path, {**TINY_CONFIG, "demo": demo,
                            "source": {"type": "table", "table": "data/synapses.csv",
                                       "raw_container": "data/volume.zarr"}})
    snakemake(tmp_path, "data/synapses.csv")  # the demo data, made by the workflow itself
    table = pd.read_csv(tmp_path / "data/synapses.csv")
    database = f"ntclass_wf_{uuid.uuid4().hex[:8]}"
    import_table(table, mongo_uri, database)
    config = mongo_config(mongo_uri, database)
    config["demo"] = demo
    config["targets"] = {"db": {**config["source"], "write_back": True}}
    write_config(tmp_path, config)
    snakemake(tmp_path)  # split, training, prediction of the whole database, write-back

    manifest = pd.read_csv(tmp_path / "results/split/manifest.csv")
    assert sorted(manifest["synapse_id"]) == sorted(table["synapse_id"])
    merged = manifest.merge(table, on="synapse_id", suffixes=("", "_t"))
    assert (merged["nt"] == merged["nt_t"]).all() and (merged["pre_id"] == merged["pre_id_t"]).all()
    losses = pd.read_csv(tmp_path / "results/models/tiny/training_log.csv")
    assert len(losses) == 20

    predictions = pd.read_parquet(tmp_path / "results/predictions/tiny/db/predictions.parquet")
    assert sorted(predictions["synapse_id"]) == sorted(table["synapse_id"])
    receipt = json.loads(
        (tmp_path / "results/predictions/tiny/db/mongo_write_back.json").read_text())
    assert receipt["ntclass"]["synapses"] == len(table)
    assert receipt["ntclass"]["field"] == "ntclass.tiny"
    import pymongo
    docs = pymongo.MongoClient(mongo_uri)[database].synapses.find(
        {}, {"_id": 0, "synapse_id": 1, "ntclass": 1})
    stored = {d["synapse_id"]: d["ntclass"]["tiny"] for d in docs}
    expected = predictions.set_index("synapse_id")
    assert set(stored) == set(expected.index)
    for sid, doc in stored.items():
        assert doc["predicted_nt"] == expected.at[sid, "predicted_nt"]
        assert abs(doc["probabilities"]["gaba"] - expected.at[sid, "gaba"]) < 1e-6


def test_wrong_mongodb_port_stops_within_seconds(tmp_path, monkeypatch):
    monkeypatch.setenv("NTCLASS_MONGO_PASSWORD", "pw-never-shown")
    (tmp_path / "data").mkdir()
    config = mongo_config("mongodb://reader@127.0.0.1:1", "synapses")
    write_config(tmp_path, config)
    (tmp_path / "data/volume.zarr").mkdir()
    start = time.monotonic()
    result = snakemake(tmp_path, "results/split/manifest.csv", check=False, timeout=120)
    elapsed = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ntclass: cannot reach MongoDB at mongodb://reader@127.0.0.1:1 within 5 s" in output
    assert "pw-never-shown" not in output
    assert "pw-never-shown" not in (tmp_path / "logs/split.log").read_text()
    assert elapsed < 60
    assert not (tmp_path / "results/split/manifest.csv").exists()


def completed_jobs() -> list[str]:
    """The controller's records of finished jobs (JobCompType=jobcomp/filetxt)."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                            check=True).stdout
    log = Path(re.search(r"^JobCompLoc\s*=\s*(\S+)", config, re.MULTILINE).group(1))
    return log.read_text().splitlines() if log.exists() else []


def readme_profile_install_line() -> str:
    """The README's one line that installs the starter cluster profile."""
    lines = (ROOT / "README.md").read_text().splitlines()
    return next(line for line in lines if line.startswith("mkdir -p ~/.config/snakemake"))


SBATCH_CALL = re.compile(r"sbatch call: (.*)")
GPU_RULES = {"train", "predict_shard"}


def test_slurm_profile_installed_by_the_readme_runs_the_workflow_as_typed(
        slurm_cluster, two_model_run, tmp_path):
    """`snakemake --profile slurm` with the starter profile installed by the README's line
    and set to the lab's own partition, as a lab would: every job runs under SLURM in that
    partition, the GPU steps ask for a GPU and no other step does, and the outputs equal a
    local run's (model a of the shared two-model run: its split, training and test target
    do not depend on model b or the other target)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"} | {
        "HOME": str(home), "PYTHONUNBUFFERED": "1"}
    subprocess.run(["bash", "-c", readme_profile_install_line()], cwd=ROOT, env=env,
                   check=True)
    profile = home / ".config/snakemake/slurm/config.v8+.yaml"
    lab = yaml.safe_load(profile.read_text())
    # the lab's cluster: its own partition for everything, no accounting (README's lines)
    lab["default-resources"] = {"slurm_partition": "lab"}
    del lab["set-resources"]
    lab |= {"jobs": 2, "latency-wait": 5, "slurm-status-command": "squeue",
            "slurm-no-account": True, "slurm-init-seconds-before-status-checks": 3}
    profile.write_text(yaml.safe_dump(lab))

    # model a and the test target of the local run, with the needs sized for this small node
    config = two_model_config()
    config["models"] = {"a": config["models"]["a"]}
    config["targets"] = {"test": config["targets"]["test"]}
    config["resources"] = {"train": {"mem_mb": 2000, "runtime": 30, "threads": 1},
                           "predict": {"mem_mb": 2000, "threads": 1},
                           "split": {"mem_mb": 2000, "runtime": 10}}
    local, cluster = two_model_run, tmp_path / "cluster"
    cluster.mkdir()
    write_config(cluster, config)

    before = len(completed_jobs())
    run = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "--profile",
                          "slurm", "-s", str(ROOT / "Snakefile"), "--configfile",
                          "config.yaml", "--verbose"], cwd=cluster, env=env,
                         capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Using profile slurm" in run.stderr
    calls = SBATCH_CALL.findall(run.stderr)
    rules = [re.search(r"--comment '?rule_([a-z_]+?)(?:_wildcards|'|\s)", c).group(1)
             for c in calls]
    assert set(rules) >= {"split", "train", "predict_shard", "evaluate"}, rules
    for rule, call in zip(rules, calls):
        assert "-p lab" in call, call
        assert ("--gpus=1" in call) == (rule in GPU_RULES), call
    records = completed_jobs()[before:]
    assert len(records) == len(calls), records
    assert all("JobState=COMPLETED" in r and "Partition=lab" in r for r in records), records

    for name in ["results/split/manifest.csv", "results/predictions/a/test/predictions.csv"]:
        assert (local / name).read_text() == (cluster / name).read_text(), name
    metrics = [json.loads((d / "results/evaluation/a/test/metrics.json").read_text())
               for d in (local, cluster)]
    for m in metrics:  # the configs differ in model b, the other target and resources
        for stage in ("prediction", "evaluation"):
            del m["provenance"][stage]["config_sha256"]
    assert metrics[0] == metrics[1]
    a = torch.load(local / "results/models/a/model.pt", weights_only=True)["state_dict"]
    b = torch.load(cluster / "results/models/a/model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def synister_database(uri: str, table: pd.DataFrame, database: str) -> None:
    """A database in the layout Synister's SynisterDb writes: synapse documents with
    x, y, z, synapse_id, skeleton_id, source_id, prepost and a stored split `splits.skeleton`
    (4 neurons of each NT train, 2 test); skeletons with `nt_known` lists; hemi_lineages.
    Plus a post-synaptic document per neuron (prepost: post), which is not a synapse to
    classify. The synapse collection is named `synapses_v3` (not Synister's default)."""
    import pymongo

    db = pymongo.MongoClient(uri)[database]
    neurons = table.groupby("pre_id").agg(nt=("nt", "first"), hemi=("hemilineage", "first"))
    rank = neurons.groupby("nt").cumcount()
    part = {pre: ("train" if r < 4 else "test") for pre, r in rank.items()}
    hemis = {h: i for i, h in enumerate(sorted(neurons["hemi"].unique()))}
    db.hemi_lineages.insert_many([{"hemi_lineage_id": i, "hemi_lineage_name": h.upper(),
                                   "nt_guess": [h.split("_")[1]]} for h, i in hemis.items()])
    db.skeletons.insert_many([{"skeleton_id": int(pre), "hemi_lineage_id": hemis[row.hemi],
                               "nt_known": [row.nt]} for pre, row in neurons.iterrows()])
    docs = [{"x": float(r.x), "y": float(r.y), "z": float(r.z), "synapse_id": int(r.synapse_id),
             "skeleton_id": int(r.pre_id), "source_id": "FAFB", "prepost": "pre",
             "splits": {"skeleton": part[r.pre_id]}} for r in table.itertuples()]
    first = table.groupby("pre_id").first()
    docs += [{"x": float(r.x) + 8, "y": float(r.y), "z": float(r.z),
              "synapse_id": 100000 + int(pre), "skeleton_id": int(pre), "source_id": "FAFB",
              "prepost": "post", "splits": {}} for pre, r in first.iterrows()]
    db.synapses_v3.insert_many(docs)


def test_a_synister_database_as_it_is(mongo_uri, tiny_demo, tmp_path):
    """Synister's own layout: its stored split, a class subset (serotonin left out), a
    target filtered to some neurons, and both write-back layouts."""
    import pymongo

    table = pd.read_csv(tiny_demo["table"])
    database = f"synister_{uuid.uuid4().hex[:8]}"
    synister_database(mongo_uri, table, database)
    classes = ["gaba", "acetylcholine", "glutamate"]
    chosen = [int(p) for p in sorted(table["pre_id"].unique())[::3]]
    source = {"type": "mongodb", "uri": mongo_uri, "database": database,
              "collections": {"synapses": "synapses_v3"},
              "raw_container": tiny_demo["volume"], "raw_dataset": "volumes/raw/s0"}
    config = {**TINY_CONFIG, "classes": classes, "training": QUICK_TRAINING,
              "source": source, "split": {"method": "given", "mongo_split": "skeleton"},
              "targets": {"chosen": {**source, "filter": {"skeleton_id": {"$in": chosen}},
                                     "write_back": True,
                                     "synister_write_back": {"enabled": True,
                                                             "split_name": "skeleton",
                                                             "experiment": "ntclass_{model}"}}}}
    del config["demo"]
    write_config(tmp_path, config)
    snakemake(tmp_path)

    manifest = pd.read_csv(tmp_path / "results/split/manifest.csv")
    assert (manifest["synapse_id"] < 100000).all()  # post-synaptic documents left alone
    serotonin = manifest["nt_other"] == "serotonin"
    assert serotonin.sum() == (table["nt"] == "serotonin").sum()
    assert manifest.loc[serotonin, "split"].isna().all()
    stored = pymongo.MongoClient(mongo_uri)[database].synapses_v3.find(
        {"prepost": "pre"}, {"_id": 0, "synapse_id": 1, "splits": 1})
    stored = {d["synapse_id"]: d["splits"]["skeleton"] for d in stored}
    labelled = manifest[manifest["nt"].notna()]
    assert len(labelled) == (table["nt"] != "serotonin").sum()
    assert all(stored[s] == p for s, p in zip(labelled["synapse_id"], labelled["split"]))
    summary = pd.read_csv(tmp_path / "results/split/summary.csv").set_index("nt")
    assert summary.at["left_out_serotonin", "total"] == serotonin.sum()

    predictions = pd.read_parquet(
        tmp_path / "results/predictions/tiny/chosen/predictions.parquet")
    expected_ids = table.loc[table["pre_id"].isin(chosen), "synapse_id"]
    assert sorted(predictions["synapse_id"]) == sorted(expected_ids)
    expected = predictions.set_index("synapse_id")

    client = pymongo.MongoClient(mongo_uri)
    docs = client[database].synapses_v3.find({"ntclass": {"$exists": True}},
                                             {"_id": 0, "synapse_id": 1, "ntclass": 1})
    ours = {d["synapse_id"]: d["ntclass"]["tiny"] for d in docs}
    assert set(ours) == set(expected.index)
    # Synister's reader: SynisterDb.get_predictions(split_name, experiment, train_number,
    # predict_number) reads <database>_predictions.<split>_<experiment>_t<n>_p<n>
    collection = client[f"{database}_predictions"]["skeleton_ntclass_tiny_t0_p0"]
    synister = {p["synapse_id"]: {"prediction": p["prediction"]} for p in collection.find({})}
    assert set(synister) == set(expected.index)
    for sid, doc in synister.items():
        assert np.allclose(doc["prediction"], expected.loc[sid, classes].to_numpy(float),
                           atol=1e-6)
        assert classes[int(np.argmax(doc["prediction"]))] == expected.at[sid, "predicted_nt"]
    receipt = json.loads(
        (tmp_path / "results/predictions/tiny/chosen/mongo_write_back.json").read_text())
    assert receipt["synister"]["synapses"] == receipt["ntclass"]["synapses"] == len(expected)
    assert receipt["classes"] == classes
