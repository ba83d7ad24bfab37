"""Models trained elsewhere: ntclass `model.pt` files and gunpowder checkpoints (Synister,
Catena: a dict holding `model_state_dict`), loaded with `weights_only` into a registered
architecture, with their outputs mapped to the configured classes by name."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ntclass.errors import NtclassError
from ntclass.io import atomic_path
from ntclass.models import build_model
from ntclass.models.modelfile import MODEL_FORMAT, check_complete, model_record
from ntclass.settings import ImportedModel, InitFrom

# Synister's models were all trained on uint8 raw mapped by raw / 255 * 2 - 1: ntclass's
# uint8 mapping (Intensity(0, 255), then [-1, 1]) is the same arithmetic
SYNISTER_INTENSITY = {"uint8": [0.0, 255.0]}


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """The state dict of a checkpoint and, for an ntclass model file, its record (empty
    for a gunpowder checkpoint or a bare state dict). Nothing but tensors and plain types
    is unpickled."""
    _check_is_checkpoint(path)
    check_complete(path, "checkpoint")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise NtclassError(_load_failure(path, e)) from None
    if isinstance(loaded, dict) and loaded.get("format") == MODEL_FORMAT:
        return loaded["state_dict"], loaded
    if isinstance(loaded, dict) and isinstance(loaded.get("model_state_dict"), dict):
        return loaded["model_state_dict"], {}
    if isinstance(loaded, dict) and loaded and all(
            isinstance(v, torch.Tensor) for v in loaded.values()):
        return loaded, {}
    raise NtclassError(f"checkpoint '{path}' is neither an ntclass model file, nor a dict "
                       "holding 'model_state_dict' (as gunpowder's Train node writes it), nor "
                       "a state dict")


# a Git LFS pointer stands in for a large file that was never fetched
LFS_POINTER = b"version https://git-lfs"


def _check_is_checkpoint(path: str | os.PathLike) -> None:
    """Refuse a file that is no PyTorch checkpoint at all (torch.load would name a pickle
    detail, or advise loading it unsafely)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        raise NtclassError(f"checkpoint '{path}' does not exist") from None
    except OSError as e:
        raise NtclassError(f"cannot read checkpoint '{path}': {e.strerror}") from None
    if head.startswith(LFS_POINTER):
        raise NtclassError(f"checkpoint '{path}' is a Git LFS pointer, not the checkpoint "
                           "itself; fetch it (git lfs pull) and give the fetched file")
    # torch.save writes a zip archive; older PyTorch wrote a pickle (protocol 2+: 0x80)
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise NtclassError(f"checkpoint '{path}' is not a PyTorch checkpoint (neither the zip "
                           "archive torch.save writes nor a pickle); give a model.pt or a "
                           "checkpoint written by gunpowder's Train node")


def _load_failure(path: str | os.PathLike, error: Exception) -> str:
    """What made a weights_only load fail, without PyTorch's advice to load unsafely: code
    in the pickle, or else a damaged file (the weights_only detail last)."""
    text = str(error).strip()
    if "Weights only load failed" in text:
        detail = next((line.strip() for line in text.splitlines()
                       if "Unsupported" in line or "WeightsUnpickler error" in line), "")
        return (f"cannot load checkpoint '{path}' with weights_only (tensors and plain types "
                "only): it holds Python objects other than tensors and plain types, which "
                "ntclass never unpickles (they could run code)"
                + (f": {detail}" if detail else ""))
    detail = text.splitlines()[0] if text else type(error).__name__
    return (f"checkpoint '{path}' is damaged: PyTorch cannot read it ({detail}; loaded with "
            "weights_only)")


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (the identity of a checkpoint, whatever its name)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def output_layer(model: torch.nn.Module) -> str:
    """The name of the model's output layer: its last Linear (or 1x1 convolution) module."""
    name = None
    for n, module in model.named_modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv3d):
            name = n
    if name is None:
        raise NtclassError(f"model {type(model).__name__} has no Linear output layer")
    return name


def _first_linear(model: torch.nn.Module) -> str | None:
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            return name
    return None


def check_fits(state: Mapping[str, torch.Tensor], model: torch.nn.Module, path,
               architecture: str, skip: str | None = None,
               shape_key: str = "input_shape") -> None:
    """Refuse, naming the first mismatching tensor, a state dict that does not fit `model`
    (tensors whose names start with `skip` are not compared). Where the mismatch is the
    width of the first fully connected layer, the cause is the cube shape (`shape_key`):
    the features it flattens grow with it."""
    expected = model.state_dict()
    first = _first_linear(model)
    for name, tensor in expected.items():
        if skip and name.startswith(skip + "."):
            continue
        if name not in state:
            raise NtclassError(f"checkpoint '{path}' does not fit architecture "
                               f"'{architecture}' with the configured params: it has no tensor "
                               f"'{name}' (shape {list(tensor.shape)} in the model)")
        got, want = tuple(state[name].shape), tuple(tensor.shape)
        if got != want and name == f"{first}.weight" and got[0] == want[0]:
            # every layer before it fits: the features it flattens differ in number
            raise NtclassError(
                f"checkpoint '{path}' was trained on cubes of another shape: its first fully "
                f"connected layer ('{first}') takes {got[1]} features, and the model for the "
                f"configured {shape_key} takes {want[1]}; give the {shape_key} it was "
                "trained on")
        if got != want:
            raise NtclassError(f"checkpoint '{path}' does not fit architecture "
                               f"'{architecture}' with the configured params: tensor '{name}' "
                               f"has shape {list(state[name].shape)} in the checkpoint and "
                               f"{list(tensor.shape)} in the model")
    extra = [n for n in state if n not in expected and not (skip and n.startswith(skip + "."))]
    if extra:
        raise NtclassError(f"checkpoint '{path}' does not fit architecture '{architecture}' "
                           f"with the configured params: its tensor '{extra[0]}' has no place "
                           "in the model")


def check_output_count(state: Mapping[str, torch.Tensor], layer: str, n_classes: int,
                       path, classes_key: str) -> None:
    """The checkpoint's output layer has one output per class of its class order."""
    weight = state.get(f"{layer}.weight")
    if weight is not None and weight.shape[0] != n_classes:
        raise NtclassError(f"checkpoint '{path}' has {weight.shape[0]} outputs, but its "
                           f"class order ({classes_key}) names {n_classes}; list the "
                           "checkpoint's classes in the order of its outputs")


def map_outputs(state: dict, layer: str, model_classes: Sequence[str],
                classes: Sequence[str], absent: str, path,
                classes_key: str = "checkpoint_classes",
                unlisted_hint: str = "add it to classes (in any position)") -> dict:
    """`state` with the rows of its output layer in the order of `classes`, found by name
    in `model_classes`. A class the model lacks is refused, or with `absent: zero` gets a
    row whose logit is -inf (probability exactly 0). Outputs the config does not list are
    refused: dropping them would change the others' probabilities."""
    model_classes, classes = list(model_classes), list(classes)
    unlisted = [c for c in model_classes if c not in classes]
    if unlisted:
        raise NtclassError(f"checkpoint '{path}' has an output for class '{unlisted[0]}', "
                           f"which is not among the configured classes {classes}; "
                           f"{unlisted_hint}")
    missing = [c for c in classes if c not in model_classes]
    if missing and absent != "zero":
        raise NtclassError(f"the configured class '{missing[0]}' is not among the outputs "
                           f"{model_classes} of checkpoint '{path}'; remove it from classes, "
                           "or set absent_classes: zero to give it probability 0")
    check_output_count(state, layer, len(model_classes), path, classes_key)
    weight, bias = state[f"{layer}.weight"], state.get(f"{layer}.bias")
    if missing and bias is None:
        raise NtclassError(f"checkpoint '{path}': absent_classes: zero needs an output layer "
                           "with a bias")
    rows = []
    for c in classes:
        if c in model_classes:
            i = model_classes.index(c)
            rows.append((weight[i], None if bias is None else bias[i]))
        else:
            rows.append((torch.zeros_like(weight[0]),
                         torch.tensor(float("-inf"), dtype=bias.dtype)))
    out = dict(state)
    out[f"{layer}.weight"] = torch.stack([w for w, _ in rows])
    if bias is not None:
        out[f"{layer}.bias"] = torch.stack([b for _, b in rows])
    return out


def import_model(checkpoint: str, entry: ImportedModel, classes: Sequence[str],
                 voxel_size: Sequence[int] | None, out: str | os.PathLike) -> dict:
    """Write an ntclass model file for the model entry `entry` (config `models.<name>`)
    that names `checkpoint`: its weights, outputs in the order of `classes`."""
    state, record = read_checkpoint(checkpoint)
    described = _described(entry, record, checkpoint)
    if described["voxel_size"] is None:
        described["voxel_size"] = list(voxel_size) if voxel_size else None
    if described["voxel_size"] is None:
        raise NtclassError(f"model checkpoint '{checkpoint}': give its voxel_size (nm, z y "
                           "x) in the model entry or at the top of the config")
    model = build_model(described["architecture"], described["input_shape"],
                        len(described["classes"]), **described["params"])
    layer = output_layer(model)
    check_output_count(state, layer, len(described["classes"]), checkpoint,
                       "checkpoint_classes")
    check_fits(state, model, checkpoint, described["architecture"])
    state = map_outputs(state, layer, described["classes"], classes,
                        entry.absent_classes, checkpoint)
    model = build_model(described["architecture"], described["input_shape"], len(classes),
                        **described["params"])
    model.load_state_dict(state)
    imported = model_record(
        model, architecture=described["architecture"], model_params=described["params"],
        classes=classes, input_shape=described["input_shape"],
        voxel_size=described["voxel_size"], intensity=described["intensity"],
        iteration=int(record.get("iteration", 0)), crop=described["crop"])
    imported["source"] = {"checkpoint": str(checkpoint), "sha256": file_digest(checkpoint),
                          "classes": list(described["classes"])}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(imported, tmp)
    return imported


def _described(entry: ImportedModel, record: Mapping, path) -> dict:
    """Architecture, params, input shape, class order, voxel size and intensity mapping
    of a checkpoint: from its own record (ntclass) or from the config (gunpowder). Where
    both say something, they must agree."""
    keys = {"architecture": "architecture", "params": "model_params",
            "input_shape": "input_shape", "checkpoint_classes": "classes",
            "voxel_size": "voxel_size"}
    out: dict = {}
    for key, record_key in keys.items():
        given, stored = getattr(entry, key), record.get(record_key)
        if key == "params" and given == {} and stored is not None:
            given = None  # the schema's default {} says nothing
        if given is not None and stored is not None and _plain(given) != _plain(stored):
            raise NtclassError(f"model checkpoint '{path}' was saved with {key} {stored}, but "
                               f"the model entry gives {given}; leave it out")
        value = given if given is not None else stored
        if value is None and key not in ("voxel_size",):
            raise NtclassError(f"model checkpoint '{path}' does not record its {key}; give "
                               f"{key} in its model entry")
        out[key] = value
    out["classes"] = out.pop("checkpoint_classes")
    out["intensity"] = dict(record.get("intensity") or SYNISTER_INTENSITY)
    # an ntclass file records its crop (older ones: ntclass's); a gunpowder checkpoint was
    # trained by Synister's (or a trainer the entry names)
    out["crop"] = entry.crop or record.get("crop") or ("ntclass" if record else "synister")
    return out


def _plain(value):
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def init_weights(model: torch.nn.Module, init: InitFrom, classes: Sequence[str],
                 architecture: str) -> str:
    """Load the weights of `init` (config `training.init_from`) into `model`, for
    fine-tuning. With `output_layer: new` the model keeps its fresh (seeded) output layer;
    with `keep` the checkpoint's outputs are mapped to `classes` by name. Returns the
    checkpoint's sha256."""
    path = init.checkpoint
    state, record = read_checkpoint(path)
    layer = output_layer(model)
    if init.output_layer == "new":
        check_fits(state, model, path, architecture, skip=layer,
                   shape_key="training.input_shape")
        fresh = model.state_dict()
        state = {**{k: v for k, v in state.items() if not k.startswith(layer + ".")},
                 **{k: v for k, v in fresh.items() if k.startswith(layer + ".")}}
    else:
        model_classes = init.classes or record.get("classes")
        if not model_classes:
            raise NtclassError(f"training.init_from checkpoint '{path}' does not record its "
                               "class order; give training.init_from.classes, or "
                               "output_layer: new")
        state = map_outputs(
            state, layer, model_classes, classes, "refuse", path,
            classes_key="training.init_from.classes",
            unlisted_hint="to fine-tune on fewer classes, set training.init_from."
                          "output_layer: new (a fresh output layer for the classes)")
        check_fits(state, model, path, architecture, shape_key="training.input_shape")
    model.load_state_dict(state)
    return file_digest(path)
