"""The conda environment files list the packages of pyproject.toml at the versions of the lock."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml
from workflow_helpers import ROOT

ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))
# moto and rangehttpserver: test servers; playwright drives the browser tests; snakefmt
# formats the rule files; pytest-xdist runs the suite in parallel
TEST_ONLY = {"pytest", "pytest-xdist", "ruff", "moto[server]", "rangehttpserver", "playwright",
             "snakefmt"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalise(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0])


def project_packages(extra: str | None = None) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + (project["optional-dependencies"][extra] if extra
                                        else [])
    return {requirement_name(r) for r in wanted}


# the GPU rules' env carries the `gpu` extra; the lock pins the part of it that runs on the
# CPU (nvImageCodec's CPU-only backend, tested in CI)
EXTRAS = {"cluster-cuda.yaml": "gpu"}
LOCKED_EXTRA = {"nvidia-nvimgcodec-cu12"}


def locked_versions() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[normalise(name)] = version
    return pins


def env_pins(path) -> dict[str, str]:
    dependencies = yaml.safe_load(path.read_text())["dependencies"]
    pip = next(d["pip"] for d in dependencies if isinstance(d, dict) and "pip" in d)
    pins = {}
    for entry in pip:
        if entry.startswith("-"):
            continue  # pip options (-e .., index URLs)
        name, _, version = entry.partition("==")
        assert version, f"{path.name}: '{entry}' is not pinned with =="
        pins[normalise(name)] = version
    return pins


def test_there_is_a_workstation_and_a_cuda_cluster_env():
    assert {p.name for p in ENV_FILES} >= {"workstation.yaml", "cluster-cuda.yaml"}


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_lists_the_project_packages_at_the_locked_versions(path):
    pins = env_pins(path)
    assert set(pins) == project_packages(EXTRAS.get(path.name))
    locked = locked_versions()
    assert {name: locked[name] for name in pins if name in locked} == {
        name: pins[name] for name in pins if name in locked}
    assert set(pins) - set(locked) <= project_packages("gpu")  # GPU-only wheels


def test_lock_pins_every_project_package_and_only_test_tools_besides():
    assert set(locked_versions()) - project_packages() == TEST_ONLY | LOCKED_EXTRA
    assert LOCKED_EXTRA <= project_packages("gpu")
    assert project_packages() <= set(locked_versions())


def test_envs_install_the_project_itself():
    for path in ENV_FILES:
        assert "-e .." in path.read_text(), path.name
