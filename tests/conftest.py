"""Shared fixtures: a tiny demo dataset written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ntclass.demo import DemoSpec, write_demo

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("acetylcholine", "gaba", "glutamate", "serotonin")
TINY = DemoSpec(classes=CLASSES, shape=(32, 512, 512), neurons_per_class=6,
                synapses_per_neuron=(3, 6), hemilineages_per_class=2, seed=3)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> dict[str, str]:
    """volume.zarr, synapses.csv and cremi/ of a small 4-class demo dataset."""
    out = tmp_path_factory.mktemp("demo")
    return write_demo(out, TINY)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
