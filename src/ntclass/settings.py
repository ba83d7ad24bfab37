"""Typed, frozen settings of the config sections a job uses, built once from the config.

Each setting is declared once, here, as a field of its section's class with `setting`:
its type (the annotation; Literal for a choice), its default, its one-line meaning, its
JSON-schema constraints and its effect: RESULT (it changes what a job makes, so it reaches
the job as a Snakemake param and a change reruns the job) or WORK (it only cuts how the
work is done: it reaches the job as a resource, which Snakemake's rerun trigger ignores).
`python -m ntclass.schemagen --write` builds these sections of config.schema.yaml from
the declarations (see config/README.md, "Adding a setting").

These objects take a section as Snakemake validated it (defaults filled), refuse keys they
do not know and keys they lack, and from then on the library passes objects, never dicts.
Lists become tuples so that the objects are frozen all the way down.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from ntclass.errors import NtclassError
from ntclass.schema import with_defaults

# what a change of a setting does (see the module's docstring)
RESULT, WORK = "result", "work"
# the default of a setting that may be left out, and is None when it is: the schema gives
# it no default
ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "ABSENT"})()


def setting(default: Any = ABSENT, meaning: str = "", *, effect: str = RESULT,
            schema: Mapping[str, Any] | None = None, **constraints: Any) -> Any:
    """A field of a settings class, declaring one config key. `schema`: the key's JSON
    schema where its annotation does not give it (a $ref, a oneOf, a mapping's keys);
    `constraints`: JSON-schema keywords added to it (minimum=1, minLength=1, ...)."""
    if effect not in (RESULT, WORK):
        raise ValueError(f"effect is {effect!r}, expected {RESULT!r} or {WORK!r}")
    if effect == WORK and (isinstance(default, bool) or not isinstance(default, int | str)):
        raise ValueError(f"a WORK setting travels as a Snakemake resource, which is a "
                         f"number or text; its default is {default!r}")
    metadata = {"meaning": meaning, "effect": effect, "schema": schema,
                "constraints": constraints, "declared": default}
    if isinstance(default, Mapping):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
    return dataclasses.field(default=None if default is ABSENT else _frozen(default),
                             metadata=metadata)


def section(kind: type[Section], meaning: str, *, optional: bool = False) -> Any:
    """A field that is a section of its own (its keys declared by `kind`): the schema
    fills it with its defaults when it is left out, unless it is `optional` (None then)."""
    return dataclasses.field(default=None, metadata={"meaning": meaning, "effect": RESULT,
                                                    "section": kind, "optional": optional})


def declared(kind: type) -> list[dataclasses.Field]:
    """The fields of `kind` declared with `setting` or `section`."""
    return [f for f in fields(kind) if "effect" in f.metadata]


def result_settings(kind: type[Section], values: Mapping[str, Any]) -> dict[str, Any]:
    """The RESULT settings of `kind` in a config section (or a settings object's values):
    what a job's params carry, as far as they count (`Section.counted`)."""
    return kind.counted({f.name: values.get(f.name) for f in declared(kind)
                         if f.metadata["effect"] == RESULT})


def work_keys(kind: type[Section]) -> list[str]:
    """The keys of `kind` declared WORK."""
    return [f.name for f in declared(kind) if f.metadata["effect"] == WORK]


def work_settings(kind: type[Section], values: Mapping[str, Any]) -> dict[str, Any]:
    """The WORK settings of `kind` in a config section: what a job's resources carry."""
    return {k: values[k] for k in work_keys(kind)}


def _frozen(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass(frozen=True)
class Section:
    """A config section as an object: exactly its fields, no more, no fewer (but for the
    `optional` ones, which the schema gives no default: None when absent)."""

    optional: ClassVar[tuple[str, ...]] = ()
    # keys the schema requires (where the section is given) though they have no default
    required: ClassVar[tuple[str, ...]] = ()
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
        missing = [k for k in known if k not in section and k not in cls.optional_keys()]
        if missing:
            raise NtclassError(f"config key '{where}.{missing[0]}' is missing")
        values = {k: _frozen(section.get(k)) for k in known}
        for key, kind in cls.nested_sections().items():
            if values[key] is not None:
                values[key] = kind.from_config(section[key], f"{where}.{key}")
        return cls(**values)

    @classmethod
    def from_job(cls, params: Mapping[str, Any], resources: Any, where: str) -> Self:
        """From a job's RESULT settings (`params`, as `result_settings` gave them) and its
        resources, which carry the WORK settings (`work_settings`)."""
        return cls.from_config({**params, **{k: resources[k] for k in work_keys(cls)}},
                               where)

    @classmethod
    def optional_keys(cls) -> tuple[str, ...]:
        """Keys that may be absent (None then): declared without a default, or sections."""
        return (*cls.optional, *(f.name for f in declared(cls)
                                 if f.metadata.get("declared", ABSENT) is ABSENT))

    @classmethod
    def nested_sections(cls) -> Mapping[str, type[Section]]:
        """Keys that are sections of their own (declared with `section`), by their class."""
        return {f.name: f.metadata["section"] for f in declared(cls)
                if "section" in f.metadata}

    @classmethod
    def default(cls, key: str) -> Any:
        """The declared default of `key`."""
        value = next(f for f in fields(cls) if f.name == key).metadata["declared"]
        if value is ABSENT:
            raise KeyError(f"{cls.__name__}.{key} has no default")
        return _frozen(value)

    @classmethod
    def counted(cls, values: dict[str, Any]) -> dict[str, Any]:
        """`result_settings`'s values with those that do not count in this combination set
        to None (so that changing them reruns nothing); as given by default."""
        return values

    def results(self) -> dict[str, Any]:
        """This object's RESULT settings (`result_settings` of its values)."""
        return result_settings(type(self), {f.name: getattr(self, f.name)
                                            for f in fields(self)})
@dataclass(frozen=True)
class Partition(Section):
    """How a target's synapses are cut into shard jobs and sorted in space."""

    shards: int | str = setting(
        "auto", "Snakemake jobs per model and target: a number, or auto (one per "
        "synapses_per_shard synapses)",
        schema={"oneOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}]})
    # None in a job's settings unless shards is "auto" (`counted`)
    synapses_per_shard: int | None = setting(
        1000000, "synapses per shard job where shards is auto", minimum=1)
    block_size: tuple[int, int, int] = setting(
        (640, 1024, 1024), "nm; the cells of the spatial sort order of a target's "
        "synapses: about one raw chunk", schema={"$ref": "#/$defs/shape3"})
    read_batch_rows: int = setting(
        1000000, "synapses per batch when a target's source is read", effect=WORK,
        minimum=1)

    @classmethod
    def counted(cls, values: dict[str, Any]) -> dict[str, Any]:
        """synapses_per_shard counts only when the number of shards follows from it."""
        return {**values, "synapses_per_shard": values["synapses_per_shard"]
                if values["shards"] == "auto" else None}

    def n_shards(self, n_synapses: int) -> int:
        if self.shards == "auto":
            return max(1, -(-n_synapses // self.synapses_per_shard))
        return int(self.shards)


@dataclass(frozen=True)
class Prediction(Section):
    """A shard job's settings: the first two change the probabilities, the rest only how
    the work is cut (the JPEG decoders give the same pixels)."""

    device: str = setting("auto", "where the model runs: auto, cpu, cuda or cuda:N")
    mixed_precision: bool = setting(True, "bf16 autocast on a GPU (ignored on the CPU)")
    rows_per_block: int = setting(
        1024, "synapses per daisy block (consecutive in the spatial order)", effect=WORK,
        minimum=1)
    batch_size: int = setting(64, "cubes per batch of the model", effect=WORK, minimum=1)
    workers: int = setting(1, "daisy worker processes per shard job", effect=WORK,
                           minimum=1)
    jpeg_decoder: Literal["auto", "tensorstore", "nvimgcodec"] = setting(
        "auto", "who decodes the chunks of JPEG precomputed raw: TensorStore on the CPU, or "
        "nvImageCodec in batches (on a CUDA device, cubes cut there; without one its "
        "CPU-only backend); auto: nvimgcodec on a CUDA device where it is installed, else "
        "tensorstore. The pixels are the same: changing it reruns nothing", effect=WORK)


FIT_ON = "name of a target of type split, e.g. {type: split, part: validation}"


@dataclass(frozen=True)
class Abstention(Section):
    """Neuron calls withheld ('unclear') below a confidence threshold fitted on a labelled
    split part to reach a precision of the calls."""

    schema: ClassVar = ("properties", "evaluation", "properties", "abstention")
    precision: float | None = setting(
        None, "the precision the calls must reach on fit_on, e.g. 0.9; null: off",
        exclusiveMinimum=0, maximum=1)
    fit_on: str = setting("validation", FIT_ON)


@dataclass(frozen=True)
class Evaluation(Section):
    """How predictions become metrics, neuron calls and signed edges."""

    neuron_rule: Literal["majority", "mean", "sum"] = setting(
        "majority", "a neuron's call from its synapses' predictions: the most frequent "
        "one (confidence: its share of votes), or the argmax of their mean or summed "
        "probabilities")
    min_synapses: int = setting(1, "neurons with fewer synapses are called unclear",
                                minimum=1)
    min_confidence: float = setting(
        0.0, "neurons whose call is less confident than this are called unclear",
        minimum=0, maximum=1)
    group_by: tuple[str, ...] = setting(
        (), "columns of the target's synapses (hemilineage, brain_region) or of "
        "neuron_table (e.g. cell_type) whose groups get a consensus call each (groups.csv, "
        "and group accuracy in metrics.json)")
    neuron_table: str | None = setting(
        meaning="CSV or Parquet with pre_id and group columns (e.g. cell_type) for group_by",
        schema={"$ref": "#/$defs/path"})
    empty_cubes: Literal["leave_out", "keep"] = setting(
        "leave_out", "synapses whose cubes held no data (at least 99 % of their voxels the "
        "volume's fill value, as where chunks are missing; column empty of the "
        "predictions): left out of the metrics, neuron calls and edges (counted in the "
        "report), or kept")
    abstention: Abstention | None = section(
        Abstention, "withhold neuron calls that are not sure enough: a neuron is called "
        "'unclear' where its confidence (the neuron rule's, after temperature scaling where "
        "that is on) is below a threshold fitted per model on the neuron calls of target "
        "fit_on, the lowest at which the calls there reach `precision` (the share of called "
        "labelled neurons called right); the report states the coverage it leaves (the "
        "share of neurons called). Works with min_confidence: the higher of the two "
        "applies")  # a fitted threshold arrives as a file
    signs: Mapping[str, int] = setting(
        {"acetylcholine": 1, "gaba": -1, "glutamate": -1, "serotonin": 0, "dopamine": 0,
         "octopamine": 0, "tyramine": 0},
        "sign of each NT's synapses in the signed edge list: 1 excitatory, -1 inhibitory, "
        "0 modulatory; NTs not listed get 0",
        schema={"type": "object", "additionalProperties": {"enum": [-1, 0, 1]}})

    @classmethod
    def counted(cls, values: dict[str, Any]) -> dict[str, Any]:
        """The abstention settings count only when it is on."""
        abstention = values["abstention"]
        on = abstention is not None and abstention["precision"] is not None
        return {**values, "abstention": abstention if on else None}


@dataclass(frozen=True)
class TemperatureScaling(Section):
    enabled: bool = setting(False, "fit the temperatures and apply them")
    fit_on: str = setting("validation", FIT_ON)


@dataclass(frozen=True)
class EvaluationRules(Section):
    """Keys of the evaluation section that only the rules read (which jobs run), not the
    evaluation job: a fitted temperature reaches it as a file."""

    flywire_tables: bool = setting(
        False, "also write the neuron and synapse tables in FlyWire's column conventions "
        "(flywire_neurons.csv, flywire_synapses.parquet)")
    temperature_scaling: TemperatureScaling = section(
        TemperatureScaling, "fit one temperature per model on the predictions of target "
        "fit_on (a split part, usually validation) and apply it to every target's "
        "probabilities before evaluation")


@dataclass(frozen=True)
class PredictionRules(Section):
    """Keys of the prediction section that only the rules read (which outputs a run
    writes)."""

    csv: bool | str = setting("auto", "write predictions.csv: true, false, or auto (targets "
                              "up to csv_max_synapses)", schema={"enum": [True, False, "auto"]})
    csv_max_synapses: int = setting(1000000, "the largest target whose predictions.csv is "
                                    "written where csv is auto", minimum=0)


@dataclass(frozen=True)
class View(Section):
    """How results are shown in neuroglancer."""

    schema: ClassVar[tuple[str, ...]] = ("properties", "view")
    enabled: bool = setting(True, "write the neuroglancer layers (rule neuroglancer, in "
                            "`all`)")
    viewer: str = setting("https://neuroglancer-demo.appspot.com",
                          "the neuroglancer address the state's URL opens")
    served_at: str = setting("http://127.0.0.1:9000", "where `ntclass view` serves "
                             "results/ and local raw (the state's sources of local files)")
    segmentation: str | None = setting(
        meaning="a neuroglancer source of the lab's segmentation (e.g. precomputed://gs://"
        "...): shown with the neuron calls as segment properties and linked to the synapses")
    palette: Literal["synister", "codex"] = setting(
        "synister", "the colours of the transmitters: the Synister paper's or FlyWire "
        "Codex's")
    limit: int = setting(1000, "annotations per spatial cell: what a zoomed-out viewer "
                         "draws at once", minimum=1)
    synapses_per_job: int = setting(
        524288, "synapses per annotation_map job: its memory, whatever the target's size",
        minimum=1)
    sharded_above: int = setting(
        10000, "synapses above which the annotation indices are sharded (below: one file "
        "per key)", minimum=0)
    keys_per_minishard: int = setting(
        1000, "about how many keys a minishard of an annotation index holds (neuroglancer's "
        "writers: 1,000)", minimum=1)
    shard_mb: float = setting(
        50, "about how many MB a shard file of an annotation index holds, so how many "
        "annotation_reduce jobs an index takes", exclusiveMinimum=0)


FRACTION = {"type": "number", "minimum": 0, "maximum": 1}


@dataclass(frozen=True)
class Split(Section):
    """How the labelled synapses are split into train, validation and test."""

    method: Literal["random", "grouped", "given"] = setting(
        "grouped", "given: the parts of the split file `assignment`, or of a split stored "
        "in a MongoDB source (`mongo_split`)")
    mongo_split: str | None = setting(
        meaning="method given, source of type mongodb: the name of a split Synister stored "
        "in the synapse documents (field splits.<name>: train, validation or test)",
        minLength=1)
    unknown_groups: tuple[str, ...] = setting(
        ("NA", "NA1", "NONE", "NEW", "NEW2_POSTERIOR", "UNKNOWN",
         *(f"UNKNOWN{i}" for i in range(10))),
        "group_by values meaning 'unknown' (compared without case): each neuron with one "
        "is a group of its own rather than all of them one group (Synister's list of "
        "unknown hemilineage names)")
    group_by: str = setting("pre_id", "the column whose values are kept together "
                            "(grouped): pre_id (the neuron), hemilineage, ...")
    assignment: str | None = setting(
        meaning="method given: CSV/Parquet of synapse_id and split (train/validation/test) "
        "naming every labelled synapse; ntclass import-split converts a legacy .pkl")
    fractions: Mapping[str, float] = setting(
        {"train": 0.7, "validation": 0.15, "test": 0.15},
        "the share of each NT's labelled synapses in each part",
        schema={"type": "object", "additionalProperties": False,
                "properties": {"train": FRACTION, "validation": FRACTION, "test": FRACTION}})
    seed: int = setting(0, "the seed of the random and grouped splits")
    max_deviation: float = setting(
        0.05, "the most a part's per-NT fraction may be off its target: a split further "
        "off stops with a sentence", minimum=0, maximum=1)
    node_limit: int = setting(
        20000, "branch-and-bound nodes for the grouped split's integer program: a "
        "deterministic limit, so that the same data, config and seed give the same split "
        "on every machine", minimum=1)
    mip_gap: float = setting(
        0.001, "the integer program stops once no split can be better by more than this "
        "(summed |fraction deviation| over NTs and parts); the gap reached is in the split "
        "summary", minimum=0)

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
RANGE = {"$ref": "#/$defs/range"}
SHAPE3 = {"$ref": "#/$defs/shape3"}
PROBABILITY = {"minimum": 0, "maximum": 1}


@dataclass(frozen=True)
class IntensityAugment(Section):
    """Per-section intensity scale and shift."""

    schema: ClassVar = (*_TRAINING, "augment", "properties", "intensity")
    enabled: bool = setting(True, "scale and shift each section's intensities")
    scale: tuple[float, float] = setting((0.9, 1.1), "the range of a section's factor",
                                         schema=RANGE)
    shift: tuple[float, float] = setting((-0.1, 0.1), "the range of a section's shift",
                                         schema=RANGE)


@dataclass(frozen=True)
class DeformAugment(Section):
    """Elastic deformation with in-plane rotation (lengths in nm)."""

    schema: ClassVar = (*_TRAINING, "augment", "properties", "deform")
    enabled: bool = setting(False, "deform whole batches on the training device")
    control_point_spacing: tuple[int, int, int] = setting(
        (160, 160, 160), "nm, z y x, between the deformation's control points", schema=SHAPE3)
    jitter_sigma: tuple[float, float, float] = setting(
        (0, 8, 8), "nm, z y x; z must be 0 (in-plane)",
        schema={"type": "array", "items": {"type": "number", "minimum": 0}, "minItems": 3,
                "maxItems": 3})
    scale: tuple[float, float] = setting((1.0, 1.0), "the range of the zoom factor",
                                         schema=RANGE)
    rotate: bool = setting(True, "rotate in-plane by a uniform angle")
    subsample: int = setting(1, "unused: gunpowder's DeformAugment subsampling, kept so that "
                             "older configs load", minimum=1)
    p: float = setting(1.0, "the share of batches deformed", **PROBABILITY)


@dataclass(frozen=True)
class MisalignAugment(Section):
    """Sections that slip (one alone) or shift (it and all after it) in y/x."""

    schema: ClassVar = (*_TRAINING, "augment", "properties", "misalign")
    enabled: bool = setting(False, "slip and shift sections")
    prob_slip: float = setting(0.05, "a section's chance to slip alone", **PROBABILITY)
    prob_shift: float = setting(0.05, "a section's chance to shift with all after it",
                                **PROBABILITY)
    sigma: float = setting(40, "nm, the standard deviation of a slip or shift",
                           exclusiveMinimum=0)


@dataclass(frozen=True)
class NoiseAugment(Section):
    """Gaussian noise on the normalised [0, 1] intensities."""

    schema: ClassVar = (*_TRAINING, "augment", "properties", "noise")
    enabled: bool = setting(False, "add gaussian noise")
    variance: float = setting(0.001, "the noise's variance", minimum=0)
    p: float = setting(0.5, "the share of cubes given noise", **PROBABILITY)


@dataclass(frozen=True)
class DefectAugment(Section):
    """Missing (blank) and low-contrast sections."""

    schema: ClassVar = (*_TRAINING, "augment", "properties", "defects")
    enabled: bool = setting(False, "blank and fade sections")
    prob_missing: float = setting(0.02, "a section's chance to be blank", **PROBABILITY)
    prob_low_contrast: float = setting(0.02, "a section's chance to lose contrast",
                                       **PROBABILITY)
    contrast_scale: float = setting(0.1, "a faded section's contrast factor",
                                    **PROBABILITY)


@dataclass(frozen=True)
class Augment(Section):
    """Synister's augmentations; each is on when its `enabled` is."""

    schema: ClassVar = (*_TRAINING, "augment")
    mirror_transpose: bool = setting(True, "mirror and transpose in y/x")
    intensity: IntensityAugment = section(IntensityAugment,
                                          "per-section intensity scale and shift")
    deform: DeformAugment = section(
        DeformAugment, "elastic deformation with in-plane rotation, applied to whole batches "
        "on the training device (jitter at control points, nm; the synapse stays at the "
        "centre)")
    misalign: MisalignAugment = section(
        MisalignAugment, "sections that slip (one alone) or shift (it and all after it) in "
        "y/x")
    noise: NoiseAugment = section(NoiseAugment,
                                  "gaussian noise on the normalised [0, 1] intensities")
    defects: DefectAugment = section(DefectAugment, "missing (blank) and low-contrast "
                                     "sections")


@dataclass(frozen=True)
class Loss(Section):
    """The training loss."""

    schema: ClassVar = (*_TRAINING, "loss")
    type: Literal["cross_entropy", "focal"] = setting("cross_entropy", "the loss function")
    gamma: float = setting(2.0, "focal loss exponent", minimum=0)
    class_weights: tuple[float, ...] | None = setting(
        None, "one weight per class, in the order of classes",
        schema={"type": ["array", "null"], "items": {"type": "number", "exclusiveMinimum": 0}})


@dataclass(frozen=True)
class Neither(Section):
    """Synister's extra class, trained on random locations away from every synapse."""

    schema: ClassVar = (*_TRAINING, "neither")
    enabled: bool = setting(False, "train the class 'neither' (list it among classes)")
    min_distance: float = setting(500, "nm from every synapse of the source",
                                  exclusiveMinimum=0)
    locations: int = setting(2000, "random locations (seeded) inside the training raw",
                             minimum=1)


@dataclass(frozen=True)
class InitFrom(Section):
    """Fine-tuning: the checkpoint whose weights a training starts from."""

    schema: ClassVar = (*_TRAINING, "init_from")
    required: ClassVar = ("checkpoint",)
    optional: ClassVar = ("sha256",)
    checkpoint: str = setting(meaning="an ntclass model.pt or a gunpowder checkpoint",
                              schema={"$ref": "#/$defs/path"})
    classes: tuple[str, ...] | None = setting(
        meaning="the class order of its outputs (output_layer keep; an ntclass model.pt "
        "records its own)",
        schema={"type": "array", "items": {"type": "string"}, "minItems": 2,
                "uniqueItems": True})
    output_layer: Literal["keep", "new"] = setting(
        "keep", "keep: its outputs mapped to classes by name; new: a fresh output layer "
        "(when the classes differ)")
    sha256: str | None = None  # the checkpoint's digest, added when training starts


@dataclass(frozen=True)
class Training(Section):
    """One model's training (the `training` section with its `models.<name>.training`
    overrides). save_every, log_every and cache_raw_mb only cut the work: a change
    retrains nothing."""

    schema: ClassVar = _TRAINING[:-1]
    input_shape: tuple[int, int, int] = setting(
        (16, 160, 160), "voxels, z y x, of the cubes the model sees", schema=SHAPE3)
    batch_size: int = setting(8, "cubes per training step", minimum=1)
    iterations: int = setting(500000, "training steps", minimum=1)
    learning_rate: float = setting(0.0001, "Adam's learning rate", exclusiveMinimum=0)
    lr_schedule: Literal["constant", "cosine"] = setting(
        "constant", "cosine decays to 0 at the last iteration")
    seed: int = setting(0, "the seed of the initial weights, the batches and their "
                        "augmentations")
    save_every: int = setting(2000, "iterations between checkpoints, from which a killed "
                              "job resumes", effect=WORK, minimum=1)
    log_every: int = setting(100, "iterations between TensorBoard points and progress "
                             "updates (every step's loss is in the training log)",
                             effect=WORK, minimum=1)
    workers: int = setting(0, "processes preparing batches ahead of the model; above 0 "
                           "their order is not seeded (runs are not reproducible)", minimum=0)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    cache_raw_mb: int = setting(1024, "raw volumes up to this size are held in memory",
                                effect=WORK, minimum=0)
    mixed_precision: bool = setting(True, "bf16 autocast on a GPU (ignored on the CPU)")
    validate_every: int = setting(2000, "iterations between validations on the validation "
                                  "part; 0: none, model.pt is the last model", minimum=0)
    validation_synapses: int = setting(2000, "at most this many validation synapses (a "
                                       "seeded sample)", minimum=1)
    neither: Neither = section(
        Neither, "Synister's optional extra class: list 'neither' among classes and it is "
        "trained on cubes centred on random locations (seeded) inside the training raw, at "
        "least min_distance from every synapse of the source")
    init_from: InitFrom | None = section(
        InitFrom, "fine-tuning: start from the weights of a checkpoint of the same "
        "architecture (an ntclass model.pt or a gunpowder checkpoint); its sha256 is part "
        "of the run's identity", optional=True)
    loss: Loss = section(Loss, "the training loss")
    augment: Augment = section(
        Augment, "Synister's augmentations; each entry is on when its `enabled` is true "
        "(lengths in nm)")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Training):
    """One model's training: its architecture and its training settings, as `from_config`
    builds them (every default from the schema)."""

    architecture: str
    model_params: Mapping[str, Any]
    classes: tuple[str, ...]
    voxel_size: tuple[int, int, int] | None  # None: the one stored with the raw
    intensity_range: tuple[float, float] | None  # None: the dtype's range (8/16-bit ints)
    # filled from the data by resolve_geometry: raw dtype -> [low, high] mapped to [0, 1]
    intensity: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

    MODEL_KEYS: ClassVar = ("architecture", "model_params", "classes", "voxel_size",
                            "intensity_range")

    @classmethod
    def from_config(cls, values: Mapping[str, Any], where: str = "training") -> TrainConfig:
        """From the model's keys (MODEL_KEYS) and its training keys, which may leave keys
        out (or give None, as a job's params give an absent init_from): the schema fills
        them."""
        training = Training.from_partial(
            {k: v for k, v in values.items() if k not in cls.MODEL_KEYS and v is not None},
            where)
        return cls(**{f.name: getattr(training, f.name) for f in fields(Training)},
                   **{k: _frozen(values.get(k)) for k in cls.MODEL_KEYS})

    def digest(self, manifest: str | os.PathLike) -> str:
        """Hash of everything that makes a run: a changed one never resumes a stale one."""
        work = work_keys(Training)
        made = {k: v for k, v in asdict(self).items() if k not in work}
        h = hashlib.sha256(json.dumps(made, sort_keys=True).encode())
        h.update(Path(manifest).read_bytes())
        return h.hexdigest()[:16]
