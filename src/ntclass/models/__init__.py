"""Models: the registry of architectures by name (each a module of `architectures/` that
registers itself), the model file (`modelfile`) and foreign checkpoints (`checkpoints`)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence

import torch

from ntclass.errors import NtclassError

_REGISTRY: dict[str, Callable[..., torch.nn.Module]] = {}


def register(name: str):
    """Class decorator: make an architecture available as `architecture: <name>`."""

    def wrap(cls):
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    package = importlib.import_module(f"{__name__}.architectures")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


def architectures() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def build_model(architecture: str, input_shape: Sequence[int], n_classes: int,
                **params) -> torch.nn.Module:
    """Instantiate a registered architecture for cubes of `input_shape` (z, y, x voxels)."""
    _load_all()
    if architecture not in _REGISTRY:
        raise NtclassError(f"model architecture '{architecture}' is unknown; "
                           f"expected one of {sorted(_REGISTRY)}")
    try:
        return _REGISTRY[architecture](input_shape=tuple(input_shape), n_classes=n_classes,
                                       **params)
    except TypeError as e:
        raise NtclassError(f"model architecture '{architecture}': {e}") from None
