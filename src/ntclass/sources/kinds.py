"""The kinds of synapse source as objects, built once from a config section.

A source (the config's `source`, or a target of its own) knows its name, the files it reads
and how to read its synapses in checked batches; `source_of` is the one place that looks at
a section's `type`. A target may also be a part of the split (`SplitPart`), whose synapses
come from the split manifest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import pandas as pd

from ntclass.errors import NtclassError
from ntclass.schema import with_defaults
from ntclass.sources import mongo
from ntclass.sources.synapses import (
    LocationCheck,
    check_unique_ids,
    cremi_batches,
    table_batches,
)
from ntclass.stores import parse_container

# rows per batch when a source is streamed: a few hundred MB of pandas at most
BATCH_ROWS = 1_000_000
# keys of a section that are a target's, not its source's
TARGET_KEYS = ("write_back", "synister_write_back")


def _range(values) -> tuple[float, float] | None:
    """As configured (the numbers a message names are the ones the user wrote)."""
    return tuple(values) if values is not None else None


@dataclass(frozen=True)
class Source:
    """A synapse source; subclasses are the kinds."""

    type: ClassVar[str]
    # the keys of the section this kind reads, besides `type` (others belong to other kinds)
    intensity_range: tuple[float, float] | None

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> Source:
        values = {f.name: section.get(f.name) for f in fields(cls)}
        return cls(**cls._resolved(values))

    @classmethod
    def _resolved(cls, values: dict) -> dict:
        values["intensity_range"] = _range(values["intensity_range"])
        return values

    @property
    def name(self) -> str:
        """How an error names the source: its file, folder or database."""
        raise NotImplementedError

    def files(self) -> dict[str, str]:
        """The local files the source reads, by role (Snakemake inputs)."""
        return {}

    def batches(self, classes: Sequence[str], check: LocationCheck,
                batch_rows: int = BATCH_ROWS, split_field: str | None = None
                ) -> Iterator[pd.DataFrame]:
        """The synapses in batches of about `batch_rows`, each normalised and checked;
        `check.finish()` is the caller's."""
        raise NotImplementedError

    def location_check(self, voxel_size: Sequence[int] | None) -> LocationCheck:
        return LocationCheck(voxel_size, self.intensity_range, self.name)

    def read(self, classes: Sequence[str], voxel_size: Sequence[int] | None = None,
             split_field: str | None = None) -> pd.DataFrame:
        """All synapses as one table (training's labelled sources are small)."""
        check = self.location_check(voxel_size)
        df = pd.concat(list(self.batches(classes, check, split_field=split_field)),
                       ignore_index=True)
        check.finish()
        check_unique_ids(df, self.name)
        return df


@dataclass(frozen=True)
class TableSource(Source):
    """A CSV or Parquet table of synapses over one raw volume."""

    type: ClassVar[str] = "table"
    table: str
    raw_container: str
    raw_dataset: str
    other_nts: str

    @classmethod
    def _resolved(cls, values: dict) -> dict:
        return {**super()._resolved(values), "other_nts": values["other_nts"] or "refuse"}

    @property
    def name(self) -> str:
        return f"synapse table '{self.table}'"

    def files(self) -> dict[str, str]:
        return {"table": self.table, **_local_raw(self.raw_container)}

    def batches(self, classes, check, batch_rows=BATCH_ROWS, split_field=None):
        return table_batches(self.table, self.raw_container, self.raw_dataset, classes,
                             check, batch_rows, self.other_nts)


@dataclass(frozen=True)
class CremiSource(Source):
    """Per-class folders of CREMI files, or one folder of unlabelled ones."""

    type: ClassVar[str] = "cremi"
    directory: str
    labelled: bool

    @property
    def name(self) -> str:
        return f"CREMI folder '{self.directory}'"

    def files(self) -> dict[str, str]:
        return {"cremi": self.directory}

    def batches(self, classes, check, batch_rows=BATCH_ROWS, split_field=None):
        return cremi_batches(self.directory, classes, self.labelled, check, batch_rows)


@dataclass(frozen=True)
class MongoSource(Source):
    """A MongoDB database in Synister's schema, over one raw volume."""

    type: ClassVar[str] = "mongodb"
    database: str
    uri: str | None  # None: NTCLASS_MONGO_URI
    raw_container: str
    raw_dataset: str
    filter: Mapping | None
    skeleton_filter: Mapping | None
    collections: Mapping[str, str]
    other_nts: str

    @classmethod
    def _resolved(cls, values: dict) -> dict:
        return {**super()._resolved(values),
                "collections": {**mongo.COLLECTIONS, **(values["collections"] or {})},
                "other_nts": values["other_nts"] or "leave_out"}

    @property
    def name(self) -> str:
        return f"MongoDB database '{self.database}'"

    def files(self) -> dict[str, str]:
        return _local_raw(self.raw_container)

    def connection(self) -> mongo.Connection:
        return mongo.Connection(self.uri, self.database, self.collections)

    def batches(self, classes, check, batch_rows=BATCH_ROWS, split_field=None):
        return mongo.mongo_batches(self.connection(), self.raw_container, self.raw_dataset,
                                   classes, check, batch_rows, self.other_nts, split_field,
                                   self.filter, self.skeleton_filter)

    def read(self, classes, voxel_size=None, split_field=None) -> pd.DataFrame:
        df = super().read(classes, voxel_size, split_field)
        # documents come in no meaningful order; unused Synister columns are dropped
        df = df.sort_values("synapse_id", kind="stable").reset_index(drop=True)
        return df.drop(columns=[c for c in ("brain_region", "hemilineage", "nt_candidates",
                                            "nt_other") if c in df and df[c].isna().all()])


@dataclass(frozen=True)
class SplitPart:
    """A target that is one part of the split: its synapses come from the manifest, its
    raw from the labelled source."""

    type: ClassVar[str] = "split"
    part: str
    target: str  # its name among the config's targets

    @property
    def name(self) -> str:
        return f"target '{self.target}' (the split's {self.part} part)"


KINDS: dict[str, type[Source]] = {k.type: k for k in (TableSource, CremiSource, MongoSource)}


def source_of(section: Mapping[str, Any], where: str = "source") -> Source:
    """The source a config section describes (`source`, or a target named by `where`),
    checked against the schema, whose defaults it gets."""
    schema_keys = (("properties", "source") if where == "source" else
                   ("properties", "targets", "additionalProperties"))
    section = with_defaults(section, schema_keys, where)
    kind = KINDS.get(section.get("type"))
    if kind is None:
        raise NtclassError(f"config key '{where}.type' is {section.get('type')!r}; expected "
                           f"one of {', '.join(KINDS)}")
    return kind.from_section(section)


def target_of(section: Mapping[str, Any], where: str) -> Source | SplitPart:
    """What a target predicts: a part of the split, or a source of its own."""
    if section.get("type") == SplitPart.type:
        section = with_defaults(section, ("properties", "targets", "additionalProperties"),
                                where)
        return SplitPart(section["part"], where.removeprefix("targets."))
    return source_of(section, where)


def _local_raw(container: str) -> dict[str, str]:
    """The raw container as a local input file; remote raw is no file Snakemake tracks."""
    address = parse_container(container)
    return {} if address.remote or address.driver else {"raw": container}
