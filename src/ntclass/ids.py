"""Neuron and synapse ids: unsigned 64-bit integers, carried exactly through every table.

FlyWire, BANC and male CNS ids lie above 2^53 (beyond what a float64 holds exactly) and some
exporters write them unsigned above 2^63. Every id column (`synapse_id`, `pre_id`, `post_id`)
is held as pandas' nullable `UInt64`: exact for every id from 0 to 2^64 - 1, with missing
values that never turn a column into floats.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ntclass.errors import NtclassError

ID_COLUMNS = ("synapse_id", "pre_id", "post_id")
ID_DTYPE = "UInt64"
MAX_ID = 2**64 - 1
MAX_EXACT_FLOAT = 2**53  # every integer up to here is exact in a float64

_WHOLE = re.compile(r"\s*([+-]?\d+)\s*")
_WHOLE_DECIMAL = re.compile(r"\s*([+-]?\d+)\.0*\s*")  # '12.0' as pandas writes floats


def missing_ids(n: int) -> pd.Series:
    return pd.Series(pd.array([pd.NA] * n, dtype=ID_DTYPE))


def to_ids(values: pd.Series, column: str, origin: str) -> pd.Series:
    """The exact `UInt64` ids of a column as a reader produced it (integers of any width,
    text, or floats that are whole and at most 2^53); anything else is one sentence."""
    values = pd.Series(values).reset_index(drop=True)
    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype):
        raise NtclassError(f"{origin}: column '{column}' holds true/false values, expected "
                           "integer ids")
    if pd.api.types.is_unsigned_integer_dtype(dtype):
        return values.astype(ID_DTYPE)
    if pd.api.types.is_signed_integer_dtype(dtype):
        negative = (values < 0).fillna(False).to_numpy(dtype=bool)
        if negative.any():
            _refuse(origin, column, values, negative, "a negative number")
        return values.astype(ID_DTYPE)
    if pd.api.types.is_float_dtype(dtype):
        return _from_floats(values, column, origin)
    fast = _from_text_or_ints(values)
    return fast if fast is not None else _from_objects(values, column, origin)


def _from_text_or_ints(values: pd.Series) -> pd.Series | None:
    """Arrow's exact casts for the common cases (digit strings with blanks, as CSVs hold
    them; Python ints with None, as MongoDB gives them), tens of times faster than parsing
    value by value. None where some value needs that careful path (and its sentence)."""
    try:
        array = pa.array(values, from_pandas=True)
        if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
            array = pc.utf8_trim_whitespace(array)
            array = pc.if_else(pc.equal(array, ""), pa.scalar(None, array.type), array)
        elif pa.types.is_integer(array.type):
            if array.null_count < len(array) and pc.min(array).as_py() < 0:
                return None
        elif not pa.types.is_null(array.type):
            return None  # floats, booleans, mixed: checked value by value
        ids = pc.cast(array, pa.uint64())
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        return None
    return pd.Series(ids.to_pandas(types_mapper={pa.uint64(): pd.UInt64Dtype()}.get),
                     dtype=ID_DTYPE)


def _refuse(origin: str, column: str, values: pd.Series, bad: np.ndarray, what: str):
    row = int(np.flatnonzero(bad)[0])
    raise NtclassError(f"{origin}: column '{column}' holds {int(values.iloc[row])} at row {row}, "
                       f"{what}; ids must be whole numbers from 0 to 2^64 - 1")


def _from_floats(values: pd.Series, column: str, origin: str) -> pd.Series:
    x = values.astype("float64").to_numpy(na_value=np.nan)
    present = ~np.isnan(x)
    inexact = present & ((x != np.floor(x)) | (x < 0) | (x > MAX_EXACT_FLOAT))
    if inexact.any():
        row = int(np.flatnonzero(inexact)[0])
        raise NtclassError(
            f"{origin}: column '{column}' is stored as floating point and holds "
            f"{float(x[row])!r} at row {row}; a float holds ids exactly only when whole and "
            "at most 2^53, so store ids as integers (or text)")
    out = np.zeros(len(x), dtype=np.uint64)
    out[present] = x[present].astype(np.uint64)
    return pd.Series(pd.arrays.IntegerArray(out, ~present))


def _parse_one(value) -> int | None:
    """The id a single value stands for; None when missing; ValueError when not an id."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_):
        raise ValueError("true/false")
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        if not np.isfinite(value) or value != np.floor(value) or abs(value) > MAX_EXACT_FLOAT:
            raise ValueError("a float that is not an exact whole number")
        return int(value)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    text = str(value)
    if not text.strip():
        return None
    if m := _WHOLE.fullmatch(text):
        return int(m.group(1))
    if (m := _WHOLE_DECIMAL.fullmatch(text)) and abs(int(m.group(1))) <= MAX_EXACT_FLOAT:
        return int(m.group(1))
    raise ValueError("not a whole number")


def _from_objects(values: pd.Series, column: str, origin: str) -> pd.Series:
    parsed = []
    for row, value in enumerate(values.to_numpy(dtype=object)):
        try:
            number = _parse_one(value)
        except ValueError as e:
            raise NtclassError(f"{origin}: column '{column}' holds {value!r} at row {row}, "
                               f"{e}; ids must be whole numbers from 0 to 2^64 - 1") from None
        if number is not None and not 0 <= number <= MAX_ID:
            raise NtclassError(f"{origin}: column '{column}' holds {value!r} at row {row}, "
                               "outside 0 to 2^64 - 1 (an unsigned 64-bit id)")
        parsed.append(pd.NA if number is None else number)
    return pd.Series(pd.array(parsed, dtype=ID_DTYPE))
