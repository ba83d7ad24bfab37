"""The model file format (`model.pt`): what training saves and prediction loads.

A plain dict of built-in types and tensors, so that it loads with `weights_only=True`
(no pickled code runs). Prediction imports this module, never the training code.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence

import torch

from ntclass.errors import NtclassError
from ntclass.models import build_model

MODEL_FORMAT = "ntclass-model/1"


def check_complete(path: str | os.PathLike, what: str) -> None:
    """Refuse a torch.save zip archive that lost its end: a copy or download cut short, or a
    write killed midway. torch.load would blame weights_only, which points the wrong way."""
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    # a zip archive ends with its central directory; without it the archive is incomplete
    if is_zip and not zipfile.is_zipfile(path):
        size = os.path.getsize(path)
        raise NtclassError(f"{what} '{path}' is damaged or incomplete: a zip archive of "
                           f"{size:,} bytes without the central directory an intact one ends "
                           "with (a copy, download or write cut short?); copy it again")


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def model_record(model: torch.nn.Module, *, architecture: str, model_params: dict,
                 classes: Sequence[str], input_shape: Sequence[int],
                 voxel_size: Sequence[int], intensity: dict, iteration: int,
                 crop: str) -> dict:
    """What `model.pt` holds: plain types and tensors only, loadable with weights_only."""
    return {
        "format": MODEL_FORMAT,
        "architecture": architecture,
        "model_params": model_params,
        "classes": list(classes),
        "input_shape": list(input_shape),
        "voxel_size": list(voxel_size),
        "intensity": dict(intensity),
        "iteration": int(iteration),
        "crop": crop,  # where its cubes sit around their synapse (volumes.CROPS)
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def load_model(path: str | os.PathLike, classes: Sequence[str] | None = None,
               device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a model.pt safely (weights_only); check it matches the expected classes."""
    check_complete(path, "model checkpoint")
    try:
        record = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise NtclassError(f"cannot load model checkpoint '{path}': {e}") from None
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        raise NtclassError(f"'{path}' is not an ntclass model checkpoint ({MODEL_FORMAT})")
    if classes is not None and list(classes) != list(record["classes"]):
        raise NtclassError(f"model '{path}' was trained on classes {record['classes']}, "
                           f"but the config lists {list(classes)}")
    model = build_model(record["architecture"], record["input_shape"], len(record["classes"]),
                        **record["model_params"])
    try:
        model.load_state_dict(record["state_dict"])
    except RuntimeError as e:
        raise NtclassError(f"model checkpoint '{path}' does not fit architecture "
                           f"'{record['architecture']}': {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    return model, record
