import numpy as np
import pandas as pd
import pytest

from ntclass.errors import NtclassError
from ntclass.split.assign import PARTS, make_split, summarise

FRACTIONS = {"train": 0.7, "validation": 0.15, "test": 0.15}


def synthetic_table(n_neurons=60, seed=0):
    """Neurons of 4 NTs with 3-15 synapses each."""
    rng = np.random.default_rng(seed)
    rows = []
    for neuron in range(n_neurons):
        nt = ["ach", "gaba", "glu", "ser"][neuron % 4]
        for _ in range(rng.integers(3, 16)):
            rows.append((nt, neuron, f"hl{neuron % 40}"))
    df = pd.DataFrame(rows, columns=["nt", "pre_id", "hemilineage"])
    df.insert(0, "synapse_id", np.arange(len(df)))
    df["nt"] = df["nt"].astype("string")
    return df


def fractions_of(manifest):
    counts = pd.crosstab(manifest["nt"], manifest["split"])
    return counts.div(counts.sum(axis=1), axis=0)


@pytest.mark.parametrize("method", ["random", "grouped"])
def test_fractions_close_to_targets(method):
    manifest, _ = make_split(synthetic_table(), method, FRACTIONS, seed=1)
    assert set(manifest["split"]) == set(PARTS)
    got = fractions_of(manifest)
    for part, target in FRACTIONS.items():
        assert (got[part] - target).abs().max() <= 0.05


def test_grouped_keeps_every_neuron_on_one_side():
    manifest, _ = make_split(synthetic_table(), "grouped", FRACTIONS, seed=2)
    assert manifest.groupby("pre_id")["split"].nunique().max() == 1


def test_grouped_by_hemilineage():
    table = synthetic_table(n_neurons=120)
    manifest, _ = make_split(table, "grouped", FRACTIONS, seed=0, group_by="hemilineage",
                          max_deviation=0.1)
    assert manifest.groupby("hemilineage")["split"].nunique().max() == 1


def test_same_seed_same_split_other_seed_other_split():
    table = synthetic_table()
    for method in ["random", "grouped"]:
        a, _ = make_split(table, method, FRACTIONS, seed=7)
        b, _ = make_split(table, method, FRACTIONS, seed=7)
        c, _ = make_split(table, method, FRACTIONS, seed=8)
        assert a["split"].equals(b["split"])
        assert not a["split"].equals(c["split"])


def test_impossible_balanced_split_is_refused():
    table = synthetic_table(n_neurons=12)  # 3 neurons per NT, very uneven sizes
    table.loc[table["pre_id"] == 0, "pre_id"] = 4  # ach: neurons 4 and 8 only
    with pytest.raises(NtclassError, match="cannot split NT 'ach' by 'pre_id'"):
        make_split(table, "grouped", FRACTIONS, seed=0)
    with pytest.raises(NtclassError, match=r"within 1% of the target fractions"):
        make_split(synthetic_table(n_neurons=24), "grouped", FRACTIONS, seed=0,
                   max_deviation=0.01)


def test_unlabelled_synapses_stay_out_of_the_split():
    table = synthetic_table()
    table.loc[:9, "nt"] = pd.NA
    manifest, _ = make_split(table, "grouped", FRACTIONS, seed=0)
    assert manifest.loc[:9, "split"].isna().all()
    assert manifest.loc[10:, "split"].notna().all()


def test_bad_settings():
    table = synthetic_table()
    with pytest.raises(NtclassError, match="add up to 0.9"):
        make_split(table, "random", {"train": 0.7, "test": 0.2}, seed=0)
    with pytest.raises(NtclassError, match="has no column 'neuropil'"):
        make_split(table, "grouped", FRACTIONS, seed=0, group_by="neuropil")


def test_summary_counts():
    manifest, _ = make_split(synthetic_table(), "random", FRACTIONS, seed=0)
    summary = summarise(manifest, ["ach", "gaba", "glu", "ser"]).set_index("nt")
    assert summary.loc["unlabelled", "total"] == 0
    summary = summary.drop(["unlabelled", "unlabelled_several_nts"])
    assert (summary[list(PARTS)].sum(axis=1) == summary["total"]).all()
    assert summary["total"].sum() == len(manifest)
    assert np.allclose(summary[[f"{p}_fraction" for p in PARTS]].sum(axis=1), 1.0, atol=1e-3)


SYNISTER_UNKNOWN = ["NA", "NONE", "NEW", "UNKNOWN", "UNKNOWN0"]


def test_unknown_hemilineages_are_not_one_group():
    """As on FAFB v3: every serotonin neuron's hemilineage is 'unknown' (in any case)."""
    table = synthetic_table()
    ser = table["nt"] == "ser"
    table.loc[ser, "hemilineage"] = np.where(table.loc[ser, "pre_id"] % 8 == 3, "unknown",
                                             "UNKNOWN0")
    with pytest.raises(NtclassError, match="cannot split NT 'ser' by 'hemilineage': it has "
                       r"2 group\(s\)"):
        make_split(table, "grouped", FRACTIONS, seed=0, group_by="hemilineage",
                   max_deviation=0.2)
    manifest, _ = make_split(table, "grouped", FRACTIONS, seed=0, group_by="hemilineage",
                             max_deviation=0.2, unknown_groups=SYNISTER_UNKNOWN)
    # each serotonin neuron whole on one side, and serotonin in every part
    assert (manifest[ser].groupby("pre_id")["split"].nunique() == 1).all()
    assert set(manifest.loc[ser, "split"]) == set(PARTS)
    # known hemilineages still stay whole
    known = manifest[~ser]
    assert (known.groupby("hemilineage")["split"].nunique() == 1).all()
    # the summary counts the groups the split used: each serotonin neuron one
    summary = summarise(manifest, ["ach", "gaba", "glu", "ser"], "hemilineage",
                        unknown_groups=SYNISTER_UNKNOWN).set_index("nt")
    neurons = manifest[ser].groupby("split")["pre_id"].nunique()
    assert [summary.loc["ser", f"{p}_groups"] for p in PARTS] == [neurons[p] for p in PARTS]
    assert neurons.max() > 2  # more groups than the two spellings of "unknown"


def test_other_nts_are_refused_or_left_out():
    from ntclass.sources.synapses import check_classes

    table = synthetic_table()
    with pytest.raises(NtclassError, match="NT 'ser' is not one of the configured classes.*"
                       "other_nts: leave_out"):
        check_classes(table, ["ach", "gaba", "glu"], "table 't'")
    left = check_classes(table, ["ach", "gaba", "glu"], "table 't'", "leave_out")
    ser = table["nt"] == "ser"
    assert left.loc[ser, "nt"].isna().all() and (left.loc[ser, "nt_other"] == "ser").all()
    manifest, _ = make_split(left, "grouped", FRACTIONS, seed=0, max_deviation=0.1)
    assert manifest.loc[ser, "split"].isna().all()
    summary = summarise(manifest, ["ach", "gaba", "glu"]).set_index("nt")
    assert summary.at["left_out_ser", "total"] == ser.sum()


def test_a_stored_split_is_checked_like_a_split_file():
    from ntclass.split.assign import apply_stored_split

    table = synthetic_table()
    table["stored_split"] = pd.array(np.where(table["pre_id"] % 5 == 0, "test", "train"),
                                     dtype="string")
    manifest = apply_stored_split(table, "skeleton", "MongoDB database 'd'")
    assert manifest["split"].tolist() == table["stored_split"].tolist()
    table.loc[3, "stored_split"] = "val"
    with pytest.raises(NtclassError, match=r"split 'skeleton' stored in MongoDB database 'd' "
                       r"\(splits.skeleton\): synapse 3 is in part 'val'"):
        apply_stored_split(table, "skeleton", "MongoDB database 'd'")
    table.loc[3, "stored_split"] = pd.NA
    with pytest.raises(NtclassError, match="labelled synapse 3 .* has no part"):
        apply_stored_split(table, "skeleton", "MongoDB database 'd'")
