"""A split given as a file, and legacy pickled splits read without running their code."""

from __future__ import annotations

import os
import pickle

import pandas as pd
import pytest
from conftest import CodeRunningPayload
from test_split import synthetic_table

from ntclass.cli import main
from ntclass.errors import NtclassError
from ntclass.split.assign import apply_given_split
from ntclass.split.legacy import read_legacy_split


def parts_of(table: pd.DataFrame) -> dict[str, list[int]]:
    return {part: sorted(int(i) for i in rows["synapse_id"])
            for part, rows in table.groupby("split")}


def legacy_pickle(path, obj, protocol=pickle.HIGHEST_PROTOCOL):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_legacy_split_of_lists_and_strings(tmp_path, protocol):
    parts = {"train": [5, 1, 3], "val": ("4",), "test": [2, 0]}
    table = read_legacy_split(legacy_pickle(tmp_path / "s.pkl", parts, protocol))
    assert parts_of(table) == {"train": [1, 3, 5], "validation": [4], "test": [0, 2]}
    by_id = read_legacy_split(legacy_pickle(tmp_path / "t.pkl", {7: "test", "8": "training"}))
    assert parts_of(by_id) == {"test": [7], "train": [8]}



def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "was-run"
    payload = {"train": [1], "test": CodeRunningPayload(str(marker))}
    path = legacy_pickle(tmp_path / "evil.pkl", payload)
    with pytest.raises(NtclassError, match=r"holds a Python object \(.*open\), not plain"):
        read_legacy_split(path)
    assert not marker.exists()
    numpy_ids = legacy_pickle(tmp_path / "np.pkl", {"train": pd.Series([1, 2]).to_numpy()})
    with pytest.raises(NtclassError, match="refusing to unpickle it"):
        read_legacy_split(numpy_ids)


@pytest.mark.parametrize("obj, message", [
    ({"train": [1, 2], "test": [2]}, "synapse 2 is in more than one part"),
    ({"train": [1], "holdout": [2]}, "part 'holdout' is not one of"),
    ({"train": [1.5]}, "synapse id 1.5 is not an integer"),
    ([1, 2, 3], "holds a list; expected a dict"),
])
def test_bad_legacy_splits(tmp_path, obj, message):
    with pytest.raises(NtclassError, match=message):
        read_legacy_split(legacy_pickle(tmp_path / "s.pkl", obj))


def test_truncated_legacy_split(tmp_path):
    path = legacy_pickle(tmp_path / "s.pkl", {"train": list(range(100))})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(NtclassError, match="'.*s.pkl' is not a readable pickle"):
        read_legacy_split(path)


def test_import_split_command_writes_a_split_file(tmp_path, capsys):
    pkl = legacy_pickle(tmp_path / "s.pkl", {"train": [0, 1], "test": [2]})
    out = tmp_path / "split.csv"
    assert main(["import-split", str(pkl), str(out)]) == 0
    assert parts_of(pd.read_csv(out)) == {"train": [0, 1], "test": [2]}
    assert "method: given" in capsys.readouterr().out
    assert main(["import-split", str(tmp_path / "missing.pkl"), str(tmp_path / "x.csv")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def given_file(tmp_path, table, edit=lambda t: t):
    parts = table[["synapse_id"]].assign(split=["train", "validation", "test"] * (
        len(table) // 3) + ["train"] * (len(table) % 3))
    path = tmp_path / "given.csv"
    edit(parts).to_csv(path, index=False)
    return path, parts


def test_given_split_is_applied_as_is(tmp_path):
    table = synthetic_table()
    path, parts = given_file(tmp_path, table)
    manifest = apply_given_split(table, str(path))
    assert manifest["split"].tolist() == parts["split"].tolist()
    assert manifest.drop(columns="split").equals(table)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.iloc[1:], "does not match the data: labelled synapse 0 .* has no part"),
    (lambda t: pd.concat([t, pd.DataFrame({"synapse_id": [99999], "split": ["test"]})]),
     "does not match the data: synapse 99999 .* is not a labelled synapse"),
    (lambda t: t.assign(split=t["split"].replace("validation", "val")),
     "synapse 1 is in part 'val'; expected one of train, validation, test"),
    (lambda t: pd.concat([t, t.iloc[:1]]), "synapse_id 0 occurs more than once"),
    (lambda t: t.rename(columns={"split": "part"}), "has no column 'split'"),
])
def test_given_split_that_does_not_match_the_data(tmp_path, edit, message):
    table = synthetic_table()
    path, _ = given_file(tmp_path, table, edit)
    with pytest.raises(NtclassError, match=message) as err:
        apply_given_split(table, str(path))
    assert os.fspath(path) in str(err.value)
