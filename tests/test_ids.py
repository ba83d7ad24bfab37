"""Ids are exact unsigned 64-bit integers, whatever form a reader hands them over in."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from ntclass.errors import NtclassError
from ntclass.ids import to_ids

BIG = [2**64 - 1, 2**63 + 1, 2**53 + 1, 720575940623456789, 0]


@pytest.mark.parametrize("values", [
    pd.Series([str(v) for v in BIG] + [""], dtype="string"),  # a CSV read as text
    pd.Series([f" {v} " for v in BIG] + [None], dtype=object),  # padded text
    pd.Series(BIG + [None], dtype=object),  # Python ints with a gap (MongoDB documents)
    pd.Series(pd.array(BIG + [None], dtype="UInt64")),  # Parquet uint64 with a null
])
def test_every_form_gives_the_same_exact_ids(values):
    ids = to_ids(values, "pre_id", "t")
    assert str(ids.dtype) == "UInt64"
    assert ids.iloc[:-1].tolist() == BIG and ids.isna().tolist() == [False] * 5 + [True]


def test_whole_floats_up_to_2_53_are_accepted_and_larger_floats_refused():
    assert to_ids(pd.Series([3.0, np.nan]), "post_id", "t").tolist() == [3, pd.NA]
    assert to_ids(pd.Series(["12.0", ""], dtype="string"), "post_id", "t").tolist() == [
        12, pd.NA]
    with pytest.raises(NtclassError, match=r"t: column 'post_id' is stored as floating point "
                                           r"and holds 1\.152921504606847e\+18 at row 1"):
        to_ids(pd.Series([1.0, 2.0**60]), "post_id", "t")


@pytest.mark.parametrize("value, said", [
    ("-5", "outside 0 to 2^64 - 1"), (str(2**64), "outside 0 to 2^64 - 1"),
    ("DA1_lPN", "not a whole number"), ("7.2e17", "not a whole number"),
    (1.5, "a float that is not an exact whole number"), (True, "true/false"),
])
def test_values_that_are_no_ids_are_refused_never_turned_into_others(value, said):
    values = pd.Series(["1", value, "3"], dtype=object)
    with pytest.raises(NtclassError, match=r"t: column 'pre_id' holds .* at row 1, "
                                           + re.escape(said)):
        to_ids(values, "pre_id", "t")


def test_negative_signed_integers_are_refused():
    with pytest.raises(NtclassError, match="holds -1 at row 0, a negative number"):
        to_ids(pd.Series([-1, 5], dtype="int64"), "synapse_id", "t")
