"""Bad configuration stops snakemake at once with one clear sentence naming the problem."""

from __future__ import annotations

import copy
import shutil

import pytest
from workflow_helpers import ROOT, TINY_CONFIG, snakemake, write_config


def run_with(tmp_path, config):
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", check=False, timeout=120)
    assert result.returncode != 0
    return result.stderr + result.stdout


def with_(path: str, value):
    config = copy.deepcopy(TINY_CONFIG)
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


@pytest.mark.parametrize("config, sentence", [
    (with_("training.iterations", "many"),
     "config key 'training.iterations' is 'many', expected an integer"),
    (with_("prediction.shards", 0), "config key 'prediction.shards' is 0, expected a value >= 1"),
    (with_("split.method", "stratified"),
     "config key 'split.method' is 'stratified', expected one of random, grouped"),
    (with_("trainng", {"iterations": 3}), "config key 'trainng' is unknown"),
    (with_("training.learning_rat", 0.1), "config key 'training.learning_rat' is unknown"),
    (with_("models.tiny.training", {"learning_rate": "fast"}),
     "config key 'models.tiny.training.learning_rate' is 'fast', expected a number"),
    (with_("source", {"type": "cremi", "directory": "no/such/folder"}),
     "folder 'no/such/folder' given as source.directory does not exist"),
    (with_("source.table", "missing.csv"),
     "file 'missing.csv' given as source.table does not exist"),
    (with_("source.table", "$NTCLASS_UNSET_FOLDER/s.csv"),
     "file '$NTCLASS_UNSET_FOLDER/s.csv' given as source.table does not exist (environment "
     "variable NTCLASS_UNSET_FOLDER is not set"),
    (with_("prediction.mem_mb", 2000), "config key 'prediction.mem_mb' has moved to "
     "resources.predict.mem_mb"),
    (with_("split", {"method": "given"}), "config key 'split.assignment' is missing"),
    (with_("evaluation", {"temperature_scaling": {"enabled": True}}),
     "evaluation.temperature_scaling.fit_on 'validation' is not a target of type split; "
     "add one to targets, e.g. validation: {type: split, part: validation}"),
    (with_("split", {"method": "given", "assignment": "old_split.csv"}),
     "file 'old_split.csv' given as split.assignment does not exist"),
    (with_("split.time_limit", 60),
     "config key 'split.time_limit' is replaced by split.node_limit: a wall-clock limit gave "
     "different splits on different machines"),
])
def test_bad_config_is_one_clear_sentence(tmp_path, config, sentence):
    output = run_with(tmp_path, config)
    assert sentence in output
    assert "Traceback" not in output
    assert not (tmp_path / "results").exists()


def test_a_key_given_twice_is_refused(tmp_path):
    """Plain YAML keeps the last of two equal keys: the first model would vanish."""
    write_config(tmp_path, TINY_CONFIG)
    text = (tmp_path / "config.yaml").read_text()
    model = text[text.index("  tiny:"):text.index("targets:")]
    (tmp_path / "config.yaml").write_text(text.replace("targets:", model + "targets:", 1))
    result = snakemake(tmp_path, "-n", check=False, timeout=120)
    said = [line for line in result.stderr.splitlines() if line.startswith("ntclass: ")]
    assert result.returncode != 0 and len(said) == 1, result.stderr[-2000:]
    assert said[0].startswith(f"ntclass: key 'tiny' is given twice in config file "
                              f"'{tmp_path / 'config.yaml'}' (lines ")
    assert not (tmp_path / "results").exists()


def test_class_folder_not_in_config(tmp_path, tiny_demo):
    shutil.copytree(tiny_demo["cremi"], tmp_path / "cremi")
    (tmp_path / "cremi" / "histamine").mkdir()
    config = with_("source", {"type": "cremi", "directory": "cremi"})
    config["classes"] = ["acetylcholine", "gaba", "glutamate", "serotonin"]
    output = run_with(tmp_path, config)
    assert "class folder 'cremi/histamine' is not one of the configured classes" in output


@pytest.mark.parametrize("name", ["config.yaml", "two_models.yaml", "examples/fafb.yaml"])
def test_shipped_configs_are_valid(name):
    import yaml

    from ntclass.config import SCHEMA_PATH, check_config
    config = yaml.safe_load((ROOT / "config" / name).read_text())
    if name == "two_models.yaml":  # used on top of the demo config
        config = {**yaml.safe_load((ROOT / "config/config.yaml").read_text()), **config}
    check_config(config, SCHEMA_PATH)


def test_a_models_override_of_a_section_gets_that_sections_defaults():
    from ntclass.config import SCHEMA_PATH, model_training
    config = copy.deepcopy(TINY_CONFIG)
    config["models"]["tiny"]["training"] = {"augment": {"deform": {"enabled": True}}}
    merged = model_training(config, "tiny", SCHEMA_PATH)
    assert merged["augment"]["deform"]["control_point_spacing"] == [160, 160, 160]
    assert merged["augment"]["mirror_transpose"] is True
    assert merged["augment"]["noise"] == {"enabled": False, "variance": 0.001, "p": 0.5}
    assert merged["iterations"] == TINY_CONFIG["training"]["iterations"]


def test_config_paths_expand_home_and_variables_as_a_shell_does(monkeypatch, tmp_path):
    from ntclass.config import expand_paths

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NTCLASS_DATA", "/lab/data")
    config = {"source": {"table": "~/synapses.csv", "raw_container": "gs://bucket/$NOT_ME"},
              "targets": {"t": {"directory": "$NTCLASS_DATA/cremi"}},
              "models": {"m": {"checkpoint": "${NTCLASS_DATA}/model.pt",
                               "training": {"init_from": {"checkpoint": "~/start.pt"}}}},
              "split": {"assignment": "~/split.csv"}, "evaluation": {"neuron_table": "n.csv"}}
    expand_paths(config)
    assert config["source"] == {"table": f"{tmp_path}/synapses.csv",
                                "raw_container": "gs://bucket/$NOT_ME"}
    assert config["targets"]["t"]["directory"] == "/lab/data/cremi"
    assert config["models"]["m"]["checkpoint"] == "/lab/data/model.pt"
    assert config["models"]["m"]["training"]["init_from"]["checkpoint"] == f"{tmp_path}/start.pt"
    assert config["split"]["assignment"] == f"{tmp_path}/split.csv"
    assert config["evaluation"]["neuron_table"] == "n.csv"
