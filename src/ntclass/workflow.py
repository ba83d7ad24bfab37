"""Glue between Snakemake jobs and the library: logging to the job's log, clear errors,
and the checks Snakemake runs while it reads the config."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

from ntclass.errors import NtclassError, unexpanded


def _redirect_output(log_path: str) -> int:
    """Point this process's stdout and stderr (file descriptors, so subprocesses and C
    libraries too) at the log; return a duplicate of the original stderr."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    original = os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return original


def run_job(log_path: str, step: Callable[[], None], threads: int | None = None) -> None:
    """Run one workflow step with its output in `log_path`.

    Bad input (NtclassError) ends the job with its one sentence on the terminal, once, as
    `ntclass: ...`; the log keeps it as a log record (so that a profile that prints failed
    logs does not repeat the `ntclass:` line). Anything else leaves its traceback in the log
    and one `ntclass:` line pointing there.
    """
    original_stderr = _redirect_output(log_path)
    logging.basicConfig(level=logging.INFO, force=True,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    for noisy in ("gunpowder", "daisy", "numcodecs", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # when the job began, for reading its log (and for the kill tests' timing)
    logging.getLogger("ntclass").info("job started")
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        step()
        _log_peak_memory()
    except NtclassError as e:
        logging.getLogger("ntclass").error("bad input: %s", e)
        _say(original_stderr, f"ntclass: {e}\n")
        sys.exit(1)
    except Exception:
        traceback.print_exc()
        _say(original_stderr, f"ntclass: the job failed; see {log_path}\n")
        sys.exit(1)


PEAK_MEMORY = "peak memory (RSS): %d MB in this process, %d MB in its largest child"


def _log_peak_memory() -> None:
    """What the job needed at most, for sizing `mem_mb` (and the scale benchmark)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    logging.getLogger("ntclass").info(PEAK_MEMORY, own, child)


def _say(fd: int, message: str) -> None:
    """Write to the terminal's stderr (not the log)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(fd, message.encode())


def canonical(value):
    """`value` with every mapping's keys sorted, recursively. Snakemake compares params by
    their text, so reordering keys in a config must not look like a change."""
    if isinstance(value, Mapping):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def demo_outputs(config: Mapping) -> set[str]:
    out = Path(config["demo"]["out_dir"])
    return {str(out / "synapses.csv"), str(out / "volume.zarr"), str(out / "cremi")}


# the section key of each file role of Source.files()
FILE_KEYS = {"table": "table", "raw": "raw_container", "cremi": "directory"}


def files_from_inputs(section: Mapping, inputs) -> dict:
    """A source's config section with its files where the job's inputs are: Snakemake may
    have moved them (the demo's data under a module's prefix, a storage's local copy)."""
    names = set(inputs.keys())
    return {**section, **{key: str(getattr(inputs, role)) for role, key in FILE_KEYS.items()
                          if role in names and key in section}}


def configured_sources(config: Mapping) -> tuple:
    """The labelled source (None in a predict-only run) and each target, as objects."""
    from ntclass.sources.kinds import source_of, target_of

    source = source_of(config["source"]) if "source" in config else None
    targets = {name: target_of(section, f"targets.{name}")
               for name, section in config.get("targets", {}).items()}
    return source, targets


def check_source_paths(config: Mapping) -> None:
    """Stop early when a configured input is neither on disk nor made by the demo rule."""
    from ntclass.sources.kinds import CremiSource

    made_by_demo = {os.path.normpath(p) for p in demo_outputs(config)}
    source, targets = configured_sources(config)
    sections = [("source", source)] if source is not None else []
    sections += [(f"targets.{name}", target) for name, target in targets.items()
                 if hasattr(target, "files")]
    for section, described in sections:
        for key, path in described.files().items():
            if os.path.normpath(path) in made_by_demo or os.path.exists(path):
                continue
            name = FILE_KEYS[key]
            kind = "folder" if key == "cremi" else "file"
            raise NtclassError(f"{kind} '{path}' given as {section}.{name} does not exist"
                               f"{unexpanded(path)}")
    checkpoints = [(f"models.{m}.checkpoint", e["checkpoint"])
                   for m, e in config["models"].items() if "checkpoint" in e]
    checkpoints += [(f"{where}.init_from.checkpoint", section["init_from"]["checkpoint"])
                    for where, section in [("training", config.get("training", {}))] + [
                        (f"models.{m}.training", e.get("training") or {})
                        for m, e in config["models"].items()]
                    if section.get("init_from")]
    for key, path in checkpoints:
        if not os.path.isfile(path):
            raise NtclassError(f"file '{path}' given as {key} does not exist"
                               f"{unexpanded(path)}")
    split = config.get("split", {})
    if split.get("method") == "given" and "assignment" in split and not os.path.isfile(
            split["assignment"]):
        raise NtclassError(f"file '{split['assignment']}' given as split.assignment does not "
                           "exist")
    if isinstance(source, CremiSource) and source.labelled and os.path.isdir(
            source.directory):
        classes = set(config["classes"])
        for entry in sorted(os.scandir(source.directory), key=lambda e: e.name):
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in classes:
                raise NtclassError(
                    f"class folder '{entry.path}' is not one of the configured classes "
                    f"{list(config['classes'])}")


def check_temperature_scaling(config: Mapping) -> None:
    """Temperature scaling and abstention are fitted on a labelled part of the split, named
    as a target."""
    scaling = config["evaluation"]["temperature_scaling"]
    if scaling["enabled"]:
        _check_fit_on(config, "temperature_scaling", scaling["fit_on"])
    abstention = config["evaluation"]["abstention"]
    if abstention["precision"] is not None:
        _check_fit_on(config, "abstention", abstention["fit_on"])


def _check_fit_on(config: Mapping, key: str, name: str) -> None:
    target = config["targets"].get(name)
    if target is None or target["type"] != "split":
        raise NtclassError(
            f"evaluation.{key}.fit_on '{name}' is not a target of type split; "
            f"add one to targets, e.g. {name}: {{type: split, part: validation}}")
