"""MongoDB as a synapse source, against a real MongoDB-protocol server."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pandas as pd
import pytest
from conftest import CLASSES

from ntclass.errors import NtclassError
from ntclass.sources.kinds import source_of
from ntclass.sources.mongo import import_table, redact_uri, resolve_uri
from ntclass.sources.synapses import read_table_source


def fresh_db() -> str:
    return f"ntclass_test_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def imported(mongo_uri, tiny_demo):
    source = {"type": "mongodb", "uri": mongo_uri, "database": fresh_db(),
              "raw_container": tiny_demo["volume"], "raw_dataset": "volumes/raw/s0"}
    n = import_table(pd.read_csv(tiny_demo["table"]), mongo_uri, source["database"])
    return source, n


def read_source(section: dict, classes, voxel_size=None):
    return source_of(section).read(classes, voxel_size)


def test_import_and_read_back_equal_the_table(imported, tiny_demo):
    source, n = imported
    from_table = read_table_source(tiny_demo["table"], tiny_demo["volume"], "volumes/raw/s0",
                                   CLASSES, (40, 4, 4))
    from_mongo = read_source(source, CLASSES, (40, 4, 4))
    assert n == len(from_table) == len(from_mongo)
    a = from_table.sort_values("synapse_id").reset_index(drop=True)
    b = from_mongo.sort_values("synapse_id").reset_index(drop=True)
    for col in ["synapse_id", "nt", "pre_id", "post_id", "hemilineage", "raw_container"]:
        assert (a[col] == b[col]).all(), col
    assert np.allclose(a[["z", "y", "x"]], b[["z", "y", "x"]])


def test_synister_schema(imported, mongo_uri):
    import pymongo

    source, _ = imported
    db = pymongo.MongoClient(mongo_uri)[source["database"]]
    skeleton = db.skeletons.find_one({})
    assert isinstance(skeleton["nt_known"], list) and len(skeleton["nt_known"]) == 1
    synapse = db.synapses.find_one({"skeleton_id": skeleton["skeleton_id"]})
    assert {"synapse_id", "x", "y", "z", "skeleton_id", "splits"} <= set(synapse)
    hemi = db.hemi_lineages.find_one({"hemi_lineage_id": skeleton["hemi_lineage_id"]})
    assert hemi["nt_guess"] == skeleton["nt_known"]


def test_import_refuses_to_overwrite(imported, tiny_demo):
    source, _ = imported
    with pytest.raises(NtclassError, match="already holds 'synapses'; pass --replace"):
        import_table(pd.read_csv(tiny_demo["table"]), source["uri"], source["database"])


def test_unreachable_server_fails_fast_without_password(monkeypatch):
    monkeypatch.setenv("NTCLASS_MONGO_PASSWORD", "s3cret-pw")
    source = {"uri": "mongodb://alice@127.0.0.1:1", "database": "x"}
    assert "s3cret-pw" in resolve_uri(source["uri"])  # the password is used to connect...
    start = time.monotonic()
    with pytest.raises(NtclassError) as err:
        read_source({**source, "type": "mongodb", "raw_container": "v.zarr"}, CLASSES)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert message.startswith("cannot reach MongoDB at mongodb://alice@127.0.0.1:1 within 5 s")
    assert "s3cret" not in message  # ...but never shown


def test_password_in_the_address_is_refused_and_redacted():
    with pytest.raises(NtclassError) as err:
        resolve_uri("mongodb://bob:hunter2@db.example:27017/?authSource=admin")
    assert "hunter2" not in str(err.value)
    assert "mongodb://bob:***@db.example:27017" in str(err.value)
    assert redact_uri("mongodb://h:1") == "mongodb://h:1"


def test_a_mongodb_target_read_in_many_batches_is_partitioned_as_in_one(imported, tmp_path):
    """Batches of 7 documents (one query each, by _id) give the same shards as one read."""
    from ntclass.predict.targets import read_shard_rows, write_target
    from ntclass.settings import Partition

    source, n = imported
    metas = [write_target(None, source_of(source), CLASSES, (40, 4, 4),
                          Partition(shards=3, synapses_per_shard=None,
                                    block_size=(320, 512, 512), read_batch_rows=rows),
                          str(tmp_path / str(rows)))
             for rows in (7, 1_000_000)]
    assert metas[0] == metas[1] and metas[0]["synapses"] == n
    for shard in range(3):
        batched, whole = (read_shard_rows(tmp_path / str(rows), shard) for rows in
                          (7, 1_000_000))
        pd.testing.assert_frame_equal(batched, whole)


def test_filters_select_part_of_a_database(imported, tiny_demo):
    source, _ = imported
    table = pd.read_csv(tiny_demo["table"])
    some = [int(p) for p in sorted(table["pre_id"].unique())[:5]]
    by_synapse = read_source({**source, "filter": {"skeleton_id": {"$in": some}}}, CLASSES,
                             (40, 4, 4))
    assert sorted(by_synapse["synapse_id"]) == sorted(
        table.loc[table["pre_id"].isin(some), "synapse_id"])
    by_skeleton = read_source({**source, "skeleton_filter": {"nt_known": "gaba"}}, CLASSES,
                              (40, 4, 4))
    assert sorted(by_skeleton["synapse_id"]) == sorted(
        table.loc[table["nt"] == "gaba", "synapse_id"])
    with pytest.raises(NtclassError, match="no pre-synaptic site that the filters select"):
        read_source({**source, "filter": {"skeleton_id": -1}}, CLASSES, (40, 4, 4))


def test_the_readmes_unlabelled_skeleton_filter_works_in_both_layouts(mongo_uri, tiny_demo):
    """Synister stores an unlabelled skeleton's nt_known as null, mongo-import as []."""
    import pymongo

    database = fresh_db()
    db = pymongo.MongoClient(mongo_uri)[database]
    db.skeletons.insert_many([{"skeleton_id": 1, "nt_known": None, "hemi_lineage_id": None},
                              {"skeleton_id": 2, "nt_known": [], "hemi_lineage_id": None},
                              {"skeleton_id": 3, "nt_known": ["gaba"],
                               "hemi_lineage_id": None}])
    db.synapses.insert_many([{"synapse_id": 10 + s, "z": 400.0, "y": 400.0 + 8 * s,
                              "x": 400.0, "skeleton_id": s, "prepost": "pre"}
                             for s in (1, 2, 3)])
    source = {"type": "mongodb", "uri": mongo_uri, "database": database,
              "raw_container": tiny_demo["volume"],
              "skeleton_filter": {"$or": [{"nt_known": None}, {"nt_known": {"$size": 0}}]}}
    found = read_source(source, CLASSES, (40, 4, 4))
    assert sorted(found["synapse_id"]) == [11, 12]
