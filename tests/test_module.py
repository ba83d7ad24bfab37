"""ntclass inside a lab's own workflow, as a Snakemake module: with a prefix on the demo
(with a lab rule reading ntclass's neuron calls), and without one on absolute paths."""

from __future__ import annotations

import copy
import subprocess
import textwrap
from pathlib import Path

import pandas as pd
import yaml
from workflow_helpers import ROOT, SNAKEMAKE, SNAKEMAKE_ENV, TINY_CONFIG

QUICK = {**TINY_CONFIG["training"], "iterations": 20, "save_every": 10, "log_every": 10,
         "validate_every": 10}


def lab_workflow(folder: Path, ntclass_config: dict, prefix: str | None) -> None:
    """A lab's Snakefile that uses ntclass as a module: its own target (ntclass's `all` and
    a lab rule reading ntclass's neuron calls of every model and target) is the default."""
    prefix_line = f'prefix: "{prefix}"' if prefix else ""
    (folder / "Snakefile").write_text(textwrap.dedent(f'''\
        configfile: "config.yaml"


        module ntclass:
            snakefile:
                "{ROOT / "Snakefile"}"
            config:
                config["ntclass"]
            {prefix_line}


        use rule * from ntclass as ntclass_*


        rule lab_all:
            default_target: True
            input:
                "lab/called_neurons.tsv",
                rules.ntclass_all.input,


        rule lab_called_neurons:
            input:
                neurons=expand(
                    rules.ntclass_evaluate.output.neurons,
                    model=list(config["ntclass"]["models"]),
                    target=list(config["ntclass"]["targets"]),
                ),
            output:
                "lab/called_neurons.tsv",
            run:
                import pandas as pd

                counts = pd.concat(pd.read_csv(p) for p in input.neurons)
                counts = counts["predicted_nt"].value_counts().sort_index()
                counts.to_csv(output[0], sep="\\t")
        '''))
    (folder / "config.yaml").write_text(yaml.safe_dump({"ntclass": ntclass_config}))


def run_lab(folder: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([SNAKEMAKE, "--cores", "2", *args], cwd=folder,
                            env=SNAKEMAKE_ENV, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_with_a_prefix_the_demo_runs_under_it_beside_the_lab_rule(tmp_path):
    config = copy.deepcopy(TINY_CONFIG) | {"training": QUICK}
    lab_workflow(tmp_path, config, prefix="nt")
    run_lab(tmp_path)
    nt = tmp_path / "nt"
    # ntclass wrote everything under the prefix, the demo's data included
    assert (nt / "data/demo/synapses.csv").is_file()
    assert (nt / "results/evaluation/tiny/test/metrics.json").is_file()
    assert (nt / "logs/split.log").is_file()
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {"Snakefile", "config.yaml", "nt", "lab", ".snakemake"}, written
    # the lab's rule read ntclass's neuron calls
    neurons = pd.read_csv(nt / "results/evaluation/tiny/test/neurons.csv")
    counts = pd.read_csv(tmp_path / "lab/called_neurons.tsv", sep="\t", index_col=0)
    assert counts["count"].to_dict() == neurons["predicted_nt"].value_counts().to_dict()
    # the training state lies under the prefix too (a param, not an output)
    assert (nt / "results/models/tiny/checkpoints").is_dir()


def test_without_a_prefix_a_predict_only_config_reads_absolute_paths(two_model_run,
                                                                     tmp_path):
    table = pd.read_csv(two_model_run / "data/demo/synapses.csv").drop(columns="nt")
    table.to_csv(tmp_path / "unlabelled.csv", index=False)
    config = {"classes": TINY_CONFIG["classes"],
              "models": {"given": {"checkpoint": str(two_model_run
                                                     / "results/models/a/model.pt")}},
              "targets": {"brain": {"type": "table", "table": str(tmp_path / "unlabelled.csv"),
                                    "raw_container": str(two_model_run
                                                         / "data/demo/volume.zarr"),
                                    "raw_dataset": "volumes/raw/s0"}},
              "view": {"enabled": False}}
    lab = tmp_path / "lab_project"
    lab.mkdir()
    lab_workflow(lab, config, prefix=None)
    run_lab(lab)
    predictions = pd.read_parquet(lab / "results/predictions/given/brain/predictions.parquet")
    assert sorted(predictions["synapse_id"]) == sorted(table["synapse_id"])
    assert (lab / "lab/called_neurons.tsv").is_file()
