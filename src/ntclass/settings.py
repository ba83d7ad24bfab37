"""Typed, frozen settings of the config sections a job uses, built once from the config.

The schema holds every default; these objects take a section as Snakemake validated it
(defaults filled), refuse keys they do not know and keys they lack, and from then on the
library passes objects, never dicts. Lists become tuples so that the objects are frozen
all the way down.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Self

from ntclass.errors import NtclassError
from ntclass.schema import with_defaults


def _frozen(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass(frozen=True)
class Section:
    """A config section as an object: exactly its fields, no more, no fewer (but for the
    `optional` ones, which the schema gives no default: None when absent)."""

    optional: ClassVar[tuple[str, ...]] = ()
    # keys that are sections of their own, by their settings class
    nested: ClassVar[Mapping[str, type[Section]]] = {}
    # where the section's part of the schema is, from the top (for `from_partial`)
    schema: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_partial(cls, section: Mapping[str, Any], where: str) -> Self:
        """From a section that may leave keys out: the schema's defaults fill them."""
        return cls.from_config(with_defaults(section, cls.schema, where), where)

    @classmethod
    def from_config(cls, section: Mapping[str, Any], where: str) -> Self:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise NtclassError(f"config key '{where}.{unknown[0]}' is unknown; known keys "
                               f"are {', '.join(sorted(known))}")
        missing = [k for k in known if k not in section and k not in cls.optional]
        if missing:
            raise NtclassError(f"config key '{where}.{missing[0]}' is missing")
        values = {k: _frozen(section.get(k)) for k in known}
        for key, kind in cls.nested.items():
            if values[key] is not None:
                values[key] = kind.from_config(section[key], f"{where}.{key}")
        return cls(**values)


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
    the work is cut (the JPEG decoders give the same pixels)."""

    device: str  # auto, cpu, cuda or cuda:N
    mixed_precision: bool  # bf16 autocast on a GPU
    rows_per_block: int  # synapses per daisy block
    batch_size: int
    workers: int  # daisy worker processes
    jpeg_decoder: str = "auto"  # auto, tensorstore or nvimgcodec (predict.jpeg)


@dataclass(frozen=True)
class Evaluation(Section):
    """How predictions become metrics, neuron calls and signed edges."""

    optional: ClassVar[tuple[str, ...]] = ("neuron_table",)

    neuron_rule: str  # majority, mean or sum
    min_synapses: int
    min_confidence: float
    signs: Mapping[str, int]  # NT -> 1, -1 or 0; NTs not listed get 0
    empty_cubes: str  # leave_out or keep: synapses whose cubes held no data
    group_by: tuple[str, ...] = ()  # columns whose groups get consensus calls
    neuron_table: str | None = None  # a table of neurons (pre_id and group columns)


@dataclass(frozen=True)
class View(Section):
    """How results are shown in neuroglancer."""

    optional: ClassVar[tuple[str, ...]] = ("segmentation",)
    schema: ClassVar[tuple[str, ...]] = ("properties", "view")
    enabled: bool  # whether `all` asks for the layers
    viewer: str  # the neuroglancer address the state's URL opens
    served_at: str  # where `ntclass view` serves local files
    segmentation: str | None  # a neuroglancer source of the lab's segmentation
    palette: str  # synister or codex
    limit: int  # annotations per spatial cell
    synapses_per_job: int  # rows per annotation_map job
    sharded_above: int  # synapses above which the indices are sharded
    keys_per_minishard: int  # about how many keys a minishard holds
    shard_mb: float  # about how many MB a shard file holds


@dataclass(frozen=True)
class Split(Section):
    """How the labelled synapses are split into train, validation and test."""

    optional: ClassVar[tuple[str, ...]] = ("assignment", "mongo_split")
    method: str  # random, grouped or given
    assignment: str | None  # given: the split file
    mongo_split: str | None  # given: a split stored in a MongoDB source
    group_by: str
    unknown_groups: tuple[str, ...]
    fractions: Mapping[str, float]
    seed: int
    max_deviation: float
    node_limit: int
    mip_gap: float

    @property
    def stored(self) -> str | None:
        """The name of the split stored in the source's documents, if that is the one."""
        return self.mongo_split if self.method == "given" else None


@dataclass(frozen=True)
class ImportedModel(Section):
    """A model trained elsewhere (`models.<name>` with a `checkpoint`): what the checkpoint
    does not record about itself (None where it should)."""

    schema: ClassVar = ("properties", "models", "additionalProperties")
    optional: ClassVar = ("architecture", "checkpoint_classes", "input_shape", "voxel_size",
                          "training", "crop")
    checkpoint: str
    architecture: str | None
    params: Mapping[str, Any]
    checkpoint_classes: tuple[str, ...] | None  # its outputs' order
    input_shape: tuple[int, int, int] | None
    voxel_size: tuple[int, int, int] | None
    absent_classes: str  # refuse, or zero: configured classes it lacks get probability 0
    crop: str | None  # where its trainer placed cubes (volumes.CROPS); None: as recorded
    training: Mapping | None  # refused by the config check for imported models


_TRAINING = ("properties", "training", "properties")


@dataclass(frozen=True)
class IntensityAugment(Section):
    """Per-section intensity scale and shift."""

    schema: ClassVar = (*_TRAINING, "augment", "properties", "intensity")
    enabled: bool
    scale: tuple[float, float]
    shift: tuple[float, float]


@dataclass(frozen=True)
class DeformAugment(Section):
    """Elastic deformation with in-plane rotation (lengths in nm)."""

    schema: ClassVar = (*_TRAINING, "augment", "properties", "deform")
    enabled: bool
    control_point_spacing: tuple[int, int, int]
    jitter_sigma: tuple[float, float, float]
    scale: tuple[float, float]
    rotate: bool
    subsample: int  # unused; kept so that older configs load
    p: float


@dataclass(frozen=True)
class MisalignAugment(Section):
    """Sections that slip (one alone) or shift (it and all after it) in y/x."""

    schema: ClassVar = (*_TRAINING, "augment", "properties", "misalign")
    enabled: bool
    prob_slip: float
    prob_shift: float
    sigma: float  # nm


@dataclass(frozen=True)
class NoiseAugment(Section):
    schema: ClassVar = (*_TRAINING, "augment", "properties", "noise")
    enabled: bool
    variance: float
    p: float


@dataclass(frozen=True)
class DefectAugment(Section):
    """Missing (blank) and low-contrast sections."""

    schema: ClassVar = (*_TRAINING, "augment", "properties", "defects")
    enabled: bool
    prob_missing: float
    prob_low_contrast: float
    contrast_scale: float


@dataclass(frozen=True)
class Augment(Section):
    """Synister's augmentations; each is on when its `enabled` is."""

    schema: ClassVar = (*_TRAINING, "augment")
    nested: ClassVar = {"intensity": IntensityAugment, "deform": DeformAugment,
                        "misalign": MisalignAugment, "noise": NoiseAugment,
                        "defects": DefectAugment}
    mirror_transpose: bool
    intensity: IntensityAugment
    deform: DeformAugment
    misalign: MisalignAugment
    noise: NoiseAugment
    defects: DefectAugment


@dataclass(frozen=True)
class Loss(Section):
    schema: ClassVar = (*_TRAINING, "loss")
    type: str  # cross_entropy or focal
    gamma: float  # the focal loss's exponent
    class_weights: tuple[float, ...] | None  # one per class, in the order of classes


@dataclass(frozen=True)
class Neither(Section):
    """Synister's extra class, trained on random locations away from every synapse."""

    schema: ClassVar = (*_TRAINING, "neither")
    enabled: bool
    min_distance: float  # nm
    locations: int


@dataclass(frozen=True)
class InitFrom(Section):
    """Fine-tuning: the checkpoint whose weights a training starts from."""

    schema: ClassVar = (*_TRAINING, "init_from")
    optional: ClassVar = ("classes", "sha256")
    checkpoint: str
    classes: tuple[str, ...] | None  # its output order, where it does not record it
    output_layer: str  # keep (outputs mapped by name) or new
    sha256: str | None  # the checkpoint's digest, added when training starts


@dataclass(frozen=True)
class TrainConfig:
    """One model's training: its architecture and the training section with the model's
    overrides, as `from_config` builds them (every default from the schema)."""

    architecture: str
    model_params: Mapping[str, Any]
    classes: tuple[str, ...]
    voxel_size: tuple[int, int, int] | None  # None: the one stored with the raw
    intensity_range: tuple[float, float] | None  # None: the dtype's range (8/16-bit ints)
    input_shape: tuple[int, int, int]
    batch_size: int
    iterations: int
    learning_rate: float
    lr_schedule: str
    seed: int
    save_every: int
    log_every: int
    workers: int
    device: str
    cache_raw_mb: int
    mixed_precision: bool
    validate_every: int
    validation_synapses: int
    augment: Augment
    loss: Loss
    neither: Neither
    init_from: InitFrom | None
    # filled from the data by resolve_geometry: raw dtype -> [low, high] mapped to [0, 1]
    intensity: Mapping[str, tuple[float, float]]

    MODEL_KEYS: ClassVar = ("architecture", "model_params", "classes", "voxel_size",
                            "intensity_range")

    @classmethod
    def from_config(cls, values: Mapping[str, Any], where: str = "training") -> TrainConfig:
        """From the model's keys (MODEL_KEYS) and its training keys, which may leave keys
        out: the schema fills them."""
        training = with_defaults({k: v for k, v in values.items() if k not in cls.MODEL_KEYS},
                                 _TRAINING[:-1], where)
        built = {"augment": Augment, "loss": Loss, "neither": Neither, "init_from": InitFrom}
        known = {f.name for f in fields(cls)} - {"intensity", *cls.MODEL_KEYS, *built}
        unknown = sorted(set(training) - known - set(built))
        if unknown:
            raise NtclassError(f"config key '{where}.{unknown[0]}' is unknown")
        return cls(
            **{k: _frozen(values.get(k)) for k in cls.MODEL_KEYS},
            **{k: _frozen(training[k]) for k in known},
            **{k: kind.from_config(training[k], f"{where}.{k}") if training.get(k) else None
               for k, kind in built.items()},
            intensity={})

    def digest(self, manifest: str | os.PathLike) -> str:
        """Hash of everything that makes a run: a changed one never resumes a stale one."""
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        h.update(Path(manifest).read_bytes())
        return h.hexdigest()[:16]
