"""Typed, frozen settings of the config sections a job uses, built once from the config.

The schema holds every default; these objects take a section as Snakemake validated it
(defaults filled), refuse keys they do not know and keys they lack, and from then on the
library passes objects, never dicts. Lists become tuples so that the objects are frozen
all the way down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Self

from ntclass.errors import NtclassError


def _frozen(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass(frozen=True)
class Section:
    """A config section as an object: exactly its fields, no more, no fewer."""

    @classmethod
    def from_config(cls, section: Mapping[str, Any], where: str) -> Self:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise NtclassError(f"config key '{where}.{unknown[0]}' is unknown; known keys "
                               f"are {', '.join(sorted(known))}")
        missing = [k for k in known if k not in section]
        if missing:
            raise NtclassError(f"config key '{where}.{missing[0]}' is missing")
        return cls(**{k: _frozen(section[k]) for k in known})


@dataclass(frozen=True)
class Partition(Section):
    """How a target's synapses are cut into shard jobs and sorted in space."""

    shards: int | str  # a number, or "auto": one per synapses_per_shard
    synapses_per_shard: int | None  # None unless shards is "auto"
    block_size: tuple[int, int, int]  # nm, the cells of the spatial sort order
    read_batch_rows: int  # synapses per batch when the target's source is read

    def n_shards(self, n_synapses: int) -> int:
        if self.shards == "auto":
            return max(1, -(-n_synapses // self.synapses_per_shard))
        return int(self.shards)


@dataclass(frozen=True)
class Prediction(Section):
    """A shard job's settings: the first two change the probabilities, the rest only how
    the work is cut."""

    device: str  # auto, cpu, cuda or cuda:N
    mixed_precision: bool  # bf16 autocast on a GPU
    rows_per_block: int  # synapses per daisy block
    batch_size: int
    workers: int  # daisy worker processes


@dataclass(frozen=True)
class Evaluation(Section):
    """How predictions become metrics, neuron calls and signed edges."""

    neuron_rule: str  # majority, mean or sum
    min_synapses: int
    min_confidence: float
    signs: Mapping[str, int]  # NT -> 1, -1 or 0; NTs not listed get 0
