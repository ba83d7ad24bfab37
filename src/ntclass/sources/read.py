"""Every kind of synapse source behind one interface: checked batches, or one table."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pandas as pd

from ntclass.errors import NtclassError
from ntclass.sources.mongo import mongo_batches
from ntclass.sources.synapses import (
    LocationCheck,
    check_unique_ids,
    cremi_batches,
    source_name,
    table_batches,
)

# rows per batch when a source is streamed: a few hundred MB of pandas at most
BATCH_ROWS = 1_000_000


def source_batches(source: dict, classes: Sequence[str], voxel_size: Sequence[int] | None,
                   check: LocationCheck, batch_rows: int = BATCH_ROWS,
                   split_field: str | None = None) -> Iterator[pd.DataFrame]:
    """The synapses of a source (the config's `source` section, or a target) in batches of
    about `batch_rows`, each normalised and checked; `check.finish()` is the caller's.
    `split_field`: the name of a split stored in a MongoDB source, read as `stored_split`."""
    kind = source["type"]
    other_nts = source.get("other_nts") or ("leave_out" if kind == "mongodb" else "refuse")
    if kind == "table":
        return table_batches(source["table"], source["raw_container"],
                             source["raw_dataset"], classes, check, batch_rows, other_nts)
    if kind == "cremi":
        return cremi_batches(source["directory"], classes, source.get("labelled", True),
                             check, batch_rows)
    if kind == "mongodb":
        return mongo_batches(source, classes, check, batch_rows, other_nts, split_field)
    raise NtclassError(f"source type '{kind}' is unknown; expected table, cremi or mongodb")


def location_check(source: dict, voxel_size: Sequence[int] | None) -> LocationCheck:
    return LocationCheck(voxel_size, source.get("intensity_range"), source_name(source))


def read_source(source: dict, classes: Sequence[str],
                voxel_size: Sequence[int] | None = None, split_field: str | None = None
                ) -> pd.DataFrame:
    """All synapses of a source as one table (training's labelled sources are small)."""
    check = location_check(source, voxel_size)
    df = pd.concat(list(source_batches(source, classes, voxel_size, check,
                                       split_field=split_field)), ignore_index=True)
    check.finish()
    check_unique_ids(df, source_name(source))
    if source["type"] == "mongodb":  # documents come in no meaningful order
        df = df.sort_values("synapse_id", kind="stable").reset_index(drop=True)
        df = df.drop(columns=[c for c in ("brain_region", "hemilineage", "nt_candidates",
                                          "nt_other") if c in df and df[c].isna().all()])
    return df
