"""Data shaped the way labs hold it, through the real workflow: raw of other dtypes, 64-bit
ids with gaps, hidden files in CREMI folders, Synister's MongoDB documents, and grouped splits
that must not depend on the machine they run on."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from conftest import CLASSES
from workflow_helpers import TINY_CONFIG, snakemake, write_config

MANIFEST = "results/split/manifest.csv"
PREDICTIONS = "results/predictions/tiny/test/predictions.csv"
QUICK_TRAINING = {**TINY_CONFIG["training"], "iterations": 16, "batch_size": 4,
                  "save_every": 8, "log_every": 4, "validate_every": 8}


# --- 64-bit ids --------------------------------------------------------------------------

def with_64bit_ids(table: pd.DataFrame) -> pd.DataFrame:
    """The demo table with ids as FlyWire-era exporters write them: synapse ids above 2^63,
    neuron ids above 2^53 that no float64 holds (odd; partners' ids unsigned above 2^63),
    a blank post_id every fifth row."""
    out = table.copy()
    out["synapse_id"] = [str(2**63 + 2 * int(i) + 1) for i in range(len(out))]
    pre = pd.factorize(out["pre_id"])[0]
    out["pre_id"] = [str(720575940600000001 + 2 * int(c)) for c in pre]
    post = pd.factorize(out["post_id"])[0]
    out["post_id"] = [str(2**64 - 1 - 2 * int(c)) if i % 5 else "" for i, c in enumerate(post)]
    return out


def write_uint64_parquet(table: pd.DataFrame, path: Path) -> None:
    """The table as Parquet with uint64 id columns and nulls, written by Arrow alone (no
    pandas metadata that would restore dtypes on reading)."""
    arrays = {c: pa.array([int(v) if v else None for v in table[c]], type=pa.uint64())
              for c in ("synapse_id", "pre_id", "post_id")}
    rest = {c: pa.array(table[c].tolist()) for c in table.columns if c not in arrays}
    pq.write_table(pa.table({**arrays, **rest}), path)


def ids_as_text(path: Path, column: str) -> list[str]:
    if path.suffix == ".parquet":
        values = pq.read_table(path).column(column).to_pylist()
        return ["" if v is None else str(v) for v in values]
    return pd.read_csv(path, dtype={column: str}, keep_default_na=False)[column].tolist()


# --- raw of other dtypes -----------------------------------------------------------------

RAW_VARIANTS = {
    # uint8 x 257 fills uint16's range: mapped by that range it is the same image
    "uint16": (lambda raw: raw.astype(np.uint16) * 257, None),
    # floats in 0..1 need their range in the config
    "float32": (lambda raw: (raw / np.float32(255)).astype(np.float32), [0, 1]),
    "uint8": (lambda raw: raw, None),
}


def raw_variant(demo, directory: Path, variant: str) -> Path:
    transform, _ = RAW_VARIANTS[variant]
    raw = zarr.open(demo["volume"], mode="r")["volumes/raw/s0"]
    path = directory / f"raw_{variant}.zarr"
    out = zarr.open(str(path), mode="w").create_dataset(
        "volumes/raw/s0", data=transform(raw[:]), chunks=(16, 128, 128))
    out.attrs.update(dict(raw.attrs))
    return path


def lab_config(directory: Path, table: Path, raw: Path, variant: str) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["classes"] = list(CLASSES)
    config["training"] = QUICK_TRAINING
    config["prediction"] = {**config["prediction"], "shards": 1}
    config["source"] = {"type": "table", "table": str(table), "raw_container": str(raw),
                        "raw_dataset": "volumes/raw/s0"}
    intensity_range = RAW_VARIANTS[variant][1]
    if intensity_range is not None:
        config["source"]["intensity_range"] = intensity_range
    return config


@pytest.fixture(scope="module")
def lab_runs(tiny_demo, tmp_path_factory) -> dict[str, Path]:
    """One project per raw dtype over the same 64-bit-id table; the uint8 one runs the whole
    workflow with a second target, the same synapses as uint64 Parquet."""
    data = tmp_path_factory.mktemp("lab_data")
    table = with_64bit_ids(pd.read_csv(tiny_demo["table"]))
    table.to_csv(data / "synapses.csv", index=False)
    write_uint64_parquet(table, data / "synapses.parquet")

    def run(variant: str) -> Path:
        directory = tmp_path_factory.mktemp(f"lab_{variant}")
        raw = raw_variant(tiny_demo, data, variant)
        config = lab_config(directory, data / "synapses.csv", raw, variant)
        if variant == "uint8":
            config["targets"] = {"test": {"type": "split", "part": "test"},
                                 "parquet": {"type": "table", "raw_container": str(raw),
                                             "table": str(data / "synapses.parquet")}}
        write_config(directory, config)
        snakemake(directory, *([] if variant == "uint8" else [PREDICTIONS]))
        return directory

    # the projects are independent: two at a time, as their jobs take one core each
    with ThreadPoolExecutor(2) as pool:
        runs = dict(zip(RAW_VARIANTS, pool.map(run, RAW_VARIANTS)))
    return runs | {"data": data}


def test_64bit_ids_survive_every_table_exactly(lab_runs):
    run, data = lab_runs["uint8"], lab_runs["data"]
    given = pd.read_csv(data / "synapses.csv", dtype=str, keep_default_na=False)
    ids = {c: set(given[c]) for c in ("synapse_id", "pre_id", "post_id")}
    post_of = dict(zip(given["synapse_id"], given["post_id"]))
    tables = {
        MANIFEST: ("synapse_id", "pre_id", "post_id"),
        "results/targets/test/shard-00000.parquet": ("synapse_id", "pre_id", "post_id"),
        "results/targets/parquet/shard-00000.parquet": ("synapse_id", "pre_id", "post_id"),
        PREDICTIONS: ("synapse_id", "pre_id", "post_id"),
        "results/predictions/tiny/test/predictions.parquet": ("synapse_id", "pre_id",
                                                              "post_id"),
        "results/predictions/tiny/parquet/predictions.csv": ("synapse_id", "pre_id",
                                                            "post_id"),
        "results/evaluation/tiny/test/neurons.csv": ("pre_id",),
        "results/evaluation/tiny/test/edges.csv": ("pre_id", "post_id"),
        "results/evaluation/tiny/parquet/edges.csv": ("pre_id", "post_id"),
    }
    for name, columns in tables.items():
        for column in columns:
            values = ids_as_text(run / name, column)
            assert values, (name, column)
            assert set(values) - {""} <= ids[column], (name, column, values[:3])
            if column == "post_id" and "edges" not in name:
                synapses = ids_as_text(run / name, "synapse_id")
                assert [post_of[s] for s in synapses] == values, name  # blanks kept
    # the Parquet target holds every synapse, each predicted once
    predicted = ids_as_text(run / "results/predictions/tiny/parquet/predictions.csv",
                            "synapse_id")
    assert sorted(predicted) == sorted(ids["synapse_id"])
    edges = pd.read_csv(run / "results/evaluation/tiny/parquet/edges.csv", dtype=str)
    pairs = given[given["post_id"] != ""].groupby(["pre_id", "post_id"]).size()
    assert len(edges) == len(pairs)


def test_raw_of_any_dtype_trains_and_predicts_like_uint8(lab_runs):
    base = lab_runs["uint8"]
    base_losses = pd.read_csv(base / "results/models/tiny/training_log.csv")["loss"]
    base_pred = pd.read_csv(base / PREDICTIONS, dtype={"synapse_id": str})
    assert (base_pred[list(CLASSES)].std() > 0).all()  # the output depends on the cube
    for variant, (_, intensity_range) in RAW_VARIANTS.items():
        run = lab_runs[variant]
        losses = pd.read_csv(run / "results/models/tiny/training_log.csv")["loss"]
        assert np.array_equal(losses.to_numpy(), base_losses.to_numpy()), variant
        pred = pd.read_csv(run / PREDICTIONS, dtype={"synapse_id": str})
        assert (pred["synapse_id"] == base_pred["synapse_id"]).all()
        # the same floats reach the model: the same probabilities, to the last digit
        assert pred[list(CLASSES)].equals(base_pred[list(CLASSES)]), variant
        record = torch.load(run / "results/models/tiny/model.pt", weights_only=True)
        expected = intensity_range or [0, np.iinfo(variant).max]
        assert record["intensity"] == {variant: [float(v) for v in expected]}


def test_a_model_refuses_raw_mapped_unlike_its_training(lab_runs, tmp_path):
    """The uint16 model predicting uint16 raw under another intensity range: refused."""
    run = lab_runs["uint16"]
    shutil.copytree(run, tmp_path / "p", symlinks=True)
    config = lab_config(tmp_path / "p", lab_runs["data"] / "synapses.csv",
                        lab_runs["data"] / "raw_uint16.zarr", "uint16")
    config["targets"] = {"again": {"type": "table", "table": config["source"]["table"],
                                   "raw_container": config["source"]["raw_container"],
                                   "intensity_range": [0, 4095]}}
    write_config(tmp_path / "p", config)
    result = snakemake(tmp_path / "p", "results/predictions/tiny/again/predictions.csv",
                       check=False)
    said = [line for line in result.stderr.splitlines() if line.startswith("ntclass: ")]
    assert result.returncode != 0 and len(said) == 1, result.stderr[-2000:]
    assert "was trained on uint16 raw with intensities [0.0, 65535.0]" in said[0]
    assert "would be mapped from [0.0, 4095.0]" in said[0]


# --- CREMI folders as they are copied around ---------------------------------------------

def test_hidden_files_in_a_cremi_folder_are_skipped(tiny_demo, tmp_path):
    folder = tmp_path / "cremi"
    shutil.copytree(tiny_demo["cremi"], folder)
    visible = sorted(folder.glob("*/*.hdf"))
    for parent in (folder, folder / "gaba"):
        (parent / ".ipynb_checkpoints").mkdir()
        shutil.copy(visible[0], parent / ".ipynb_checkpoints" / "copy-checkpoint.hdf")
        (parent / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "gaba" / "._123.hdf").write_bytes(b"\0\5\26\7AppleDouble")
    config = copy.deepcopy(TINY_CONFIG)
    config["classes"] = list(CLASSES)
    config["split"] = {"method": "random", "seed": 0}
    config["source"] = {"type": "cremi", "directory": str(folder)}
    write_config(tmp_path, config)
    snakemake(tmp_path, MANIFEST)
    manifest = pd.read_csv(tmp_path / MANIFEST)
    expected = []
    for path in visible:
        with h5py.File(path, "r") as f:
            types = [t.decode() if isinstance(t, bytes) else t for t in f["annotations/types"]]
            expected += [int(i) for i, t in zip(f["annotations/ids"], types)
                         if t == "presynaptic_site"]
    assert sorted(manifest["synapse_id"]) == sorted(expected)
    assert not manifest["raw_container"].str.contains("/.", regex=False).any()


# --- Synister's MongoDB documents --------------------------------------------------------

def test_mongodb_post_sites_and_ambiguous_neurons(mongo_uri, tiny_demo, tmp_path):
    import pymongo

    from ntclass.sources.mongo import import_table

    table = pd.read_csv(tiny_demo["table"])
    database = f"ntclass_lab_{uuid.uuid4().hex[:8]}"
    import_table(table, mongo_uri, database)
    db = pymongo.MongoClient(mongo_uri)[database]
    # Synister marks every document; post-synaptic sites are no synapses to classify
    db.synapses.update_many({}, {"$set": {"prepost": "pre"}})
    first = table.iloc[0]
    posts = [{"synapse_id": int(10**9 + i), "z": float(first.z), "y": float(first.y),
              "x": float(first.x), "skeleton_id": int(first.pre_id), "prepost": "post"}
             for i in range(3)]
    db.synapses.insert_many(posts)
    # a neuron with two known NTs stays unlabelled, and is counted
    ambiguous = int(table["pre_id"].iloc[-1])
    db.skeletons.update_one({"skeleton_id": ambiguous},
                            {"$set": {"nt_known": ["gaba", "glutamate"]}})
    config = copy.deepcopy(TINY_CONFIG)
    config["classes"] = list(CLASSES)
    config["split"] = {"method": "random", "seed": 0}
    config["source"] = {"type": "mongodb", "uri": mongo_uri, "database": database,
                        "raw_container": tiny_demo["volume"], "raw_dataset": "volumes/raw/s0"}
    write_config(tmp_path, config)
    snakemake(tmp_path, MANIFEST)

    manifest = pd.read_csv(tmp_path / MANIFEST)
    assert sorted(manifest["synapse_id"]) == sorted(table["synapse_id"])
    of_ambiguous = manifest[manifest["pre_id"] == ambiguous]
    n_ambiguous = int((table["pre_id"] == ambiguous).sum())
    assert len(of_ambiguous) == n_ambiguous > 0
    assert of_ambiguous["nt"].isna().all() and of_ambiguous["split"].isna().all()
    assert (of_ambiguous["nt_candidates"] == "gaba;glutamate").all()
    summary = pd.read_csv(tmp_path / "results/split/summary.csv").set_index("nt")
    assert summary.loc["unlabelled_several_nts", "total"] == n_ambiguous
    assert summary.loc["unlabelled", "total"] == n_ambiguous
    log = (tmp_path / "logs/split.log").read_text()
    assert f"{n_ambiguous} synapses of 1 skeletons with several known NTs" in log


# --- the same split on every machine -----------------------------------------------------

def many_neurons(demo, n_per_class: int = 150, seed: int = 0) -> pd.DataFrame:
    """Many small neurons over the demo volume: a grouped split the integer program cannot
    prove optimal within a small node limit."""
    rng = np.random.default_rng(seed)
    locations = pd.read_csv(demo["table"])[["z", "y", "x"]].to_numpy()
    rows = []
    for c, nt in enumerate(CLASSES):
        for n in range(n_per_class):
            for _ in range(int(rng.integers(1, 25))):
                rows.append((len(rows) + 1, nt, 1000 * c + n, *locations[rng.integers(
                    len(locations))]))
    return pd.DataFrame(rows, columns=["synapse_id", "nt", "pre_id", "z", "y", "x"])


def busy_cores(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def test_grouped_split_is_the_same_under_load(tiny_demo, tmp_path):
    many_neurons(tiny_demo).to_csv(tmp_path / "synapses.csv", index=False)
    config = copy.deepcopy(TINY_CONFIG)
    config["classes"] = list(CLASSES)
    config["split"] = {"method": "grouped", "seed": 3, "node_limit": 3, "mip_gap": 0.0,
                       "max_deviation": 0.05}
    config["source"] = {"type": "table", "table": str(tmp_path / "synapses.csv"),
                        "raw_container": tiny_demo["volume"], "raw_dataset": "volumes/raw/s0"}
    outputs = []
    for load in (0, 3):
        run = tmp_path / f"load{load}"
        run.mkdir()
        write_config(run, config)
        burners = busy_cores(load)
        try:
            snakemake(run, MANIFEST)
        finally:
            for burner in burners:
                burner.kill()
        outputs.append([(run / p).read_bytes() for p in (MANIFEST, "results/split/summary.csv")])
    assert outputs[0] == outputs[1]
    summary = pd.read_csv(tmp_path / "load0/results/split/summary.csv").set_index("nt")
    assert summary["optimality_gap"].iloc[0] > 0  # stopped at the node limit, and says so
    assert "stopped at split.node_limit 3 nodes" in (tmp_path / "load0/logs/split.log").read_text()
    groups = summary.loc[list(CLASSES), ["train_groups", "validation_groups", "test_groups"]]
    share = groups.div(groups.sum(axis=1), axis=0)
    assert (share["test_groups"] > 0.08).all()  # each NT's test part holds many neurons
