"""Splits from older tools, read without unpickling anything but plain data.

A pickle can run code while it loads; the loader here refuses every class and function a
pickle names, so only dicts, lists, tuples, strings and numbers come through.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import pandas as pd

from ntclass.errors import NtclassError
from ntclass.split.assign import PARTS

PART_ALIASES = {"train": "train", "training": "train", "validation": "validation",
                "val": "validation", "validate": "validation", "test": "test",
                "testing": "test"}


class _PlainDataUnpickler(pickle.Unpickler):
    def __init__(self, file, origin: str):
        super().__init__(file)
        self.origin = origin

    def find_class(self, module: str, name: str):
        raise NtclassError(f"{self.origin} holds a Python object ({module}.{name}), not plain "
                           "lists and strings; refusing to unpickle it")


def _load_plain(path: str | os.PathLike) -> object:
    origin = f"legacy split '{path}'"
    if not os.path.isfile(path):
        raise NtclassError(f"{origin} does not exist")
    with open(path, "rb") as f:
        try:
            return _PlainDataUnpickler(f, origin).load()
        except NtclassError:
            raise
        except Exception as e:  # truncated or not a pickle at all
            raise NtclassError(f"{origin} is not a readable pickle ({e})") from None


def _synapse_id(value: object, origin: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise NtclassError(f"{origin}: synapse id {value!r} is not an integer")
    try:
        return int(value)
    except ValueError:
        raise NtclassError(f"{origin}: synapse id {value!r} is not an integer") from None


def _part(value: object, origin: str) -> str:
    part = PART_ALIASES.get(str(value).lower()) if isinstance(value, str) else None
    if part is None:
        raise NtclassError(f"{origin}: part {value!r} is not one of {', '.join(PARTS)} "
                           "(or train/val/test)")
    return part


def read_legacy_split(path: str | os.PathLike) -> pd.DataFrame:
    """A split pickled by an older tool, as a table of `synapse_id` and `split`.

    Accepted: a dict of part name to a list of synapse ids (`{"train": [...], "test": [...]}`)
    or a dict of synapse id to part name.
    """
    origin = f"legacy split '{path}'"
    data = _load_plain(path)
    if not isinstance(data, Mapping) or not data:
        raise NtclassError(f"{origin} holds a {type(data).__name__}; expected a dict of part "
                           "name to a list of synapse ids, or of synapse id to part name")
    rows = []
    if all(isinstance(v, list | tuple | set | frozenset) for v in data.values()):
        for part, ids in data.items():
            part = _part(part, origin)
            rows += [(_synapse_id(i, origin), part) for i in ids]
    else:
        rows = [(_synapse_id(i, origin), _part(part, origin)) for i, part in data.items()]
    table = pd.DataFrame(rows, columns=["synapse_id", "split"])
    dup = table["synapse_id"].duplicated()
    if dup.any():
        raise NtclassError(f"{origin}: synapse {table['synapse_id'][dup].iloc[0]} is in more "
                           "than one part")
    return table.sort_values("synapse_id", kind="stable").reset_index(drop=True)
