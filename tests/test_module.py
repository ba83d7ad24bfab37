"""ntclass inside a lab's own workflow, as a Snakemake module: in each of its three forms (no
prefix, `prefix:`, `replace_prefix:`) on the demo, with a lab rule reading ntclass's neuron
calls; and without a prefix on a predict-only config of absolute paths."""

from __future__ import annotations

import copy
import subprocess
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_helpers import ROOT, SNAKEMAKE, SNAKEMAKE_ENV, TINY_CONFIG

# ntclass in the three forms a Snakemake module takes, side by side in one lab workflow
FORMS = {
    "plain": "",
    "prefixed": 'prefix: "nt"',
    # folders moved apart, so that nothing can assume one common root for ntclass's files
    "replaced": 'replace_prefix: {"results/": "nt_results/", "logs/": "nt_logs/", '
                '"data/": "nt_data/"}',
}
# where each form's results, logs and demo data land
PLACES = {"plain": ("results", "logs", "data"), "prefixed": ("nt/results", "nt/logs", "nt/data"),
          "replaced": ("nt_results", "nt_logs", "nt_data")}


def lab_workflow(folder: Path, ntclass_config: dict, forms: dict[str, str]) -> None:
    """A lab's Snakefile that uses ntclass as a module once per form (the key: its name,
    the value: its prefix line): its own target (each module's `all` and a lab rule reading
    that module's neuron calls of every model and target) is the default."""
    text = 'configfile: "config.yaml"\n\n'
    for name, prefix_line in forms.items():
        text += textwrap.dedent(f'''

            module {name}:
                snakefile:
                    "{ROOT / "Snakefile"}"
                config:
                    config["ntclass"]
                {prefix_line}


            use rule * from {name} as {name}_*


            rule lab_{name}_neurons:
                input:
                    neurons=expand(
                        rules.{name}_evaluate.output.neurons,
                        model=list(config["ntclass"]["models"]),
                        target=list(config["ntclass"]["targets"]),
                    ),
                output:
                    "lab/{name}_called_neurons.tsv",
                run:
                    import pandas as pd

                    counts = pd.concat(pd.read_csv(p) for p in input.neurons)
                    counts = counts["predicted_nt"].value_counts().sort_index()
                    counts.to_csv(output[0], sep="\\t")
            ''')
    text += textwrap.dedent(f'''

        rule lab_all:
            default_target: True
            input:
                {"".join(f'"lab/{n}_called_neurons.tsv", rules.{n}_all.input, ' for n in forms)}
        ''')
    (folder / "Snakefile").write_text(text)
    (folder / "config.yaml").write_text(yaml.safe_dump({"ntclass": ntclass_config}))


def run_lab(folder: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([SNAKEMAKE, "--cores", "2", *args], cwd=folder,
                            env=SNAKEMAKE_ENV, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def planned(folder: Path) -> dict[str, int]:
    """The jobs a dry run of the lab workflow would execute, by rule."""
    out = run_lab(folder, "-n", "--quiet", "rules").stdout
    return {p[0]: int(p[1]) for p in (line.split() for line in out.splitlines())
            if len(p) == 2 and p[1].isdigit() and p[0] not in ("job", "total")}


def demo_config(checkpoint: Path) -> dict:
    """The demo's tiny config predicting with a given model (the shared run's model a):
    every form's predictions can then be compared, and no module pays for training."""
    config = copy.deepcopy(TINY_CONFIG)
    config["models"] = {"given": {"checkpoint": str(checkpoint)}}
    config["prediction"].update({"shards": 1, "csv": False})
    config["view"] = {"enabled": True}
    return config


@pytest.fixture(scope="module")
def three_forms(two_model_run, tmp_path_factory) -> Path:
    """The lab workflow with ntclass as a module in all three forms, run to the end."""
    folder = tmp_path_factory.mktemp("lab_three_forms")
    lab_workflow(folder, demo_config(two_model_run / "results/models/a/model.pt"), FORMS)
    run_lab(folder)
    return folder


def test_each_form_writes_everything_where_its_prefix_puts_it(three_forms):
    written = {p.name for p in three_forms.iterdir()}
    assert written == {"Snakefile", "config.yaml", "lab", ".snakemake", "results", "logs",
                       "data", "nt", "nt_results", "nt_logs", "nt_data"}, written
    for form, (results, logs, data) in PLACES.items():
        assert (three_forms / data / "demo/synapses.csv").is_file(), form
        assert (three_forms / logs / "split.log").is_file(), form
        assert (three_forms / results / "benchmarks/split/split.tsv").is_file(), form
        # files that are no outputs (paths in params) follow the prefix too
        assert (three_forms / results / "predictions/given/test/cache").is_dir(), form
        assert (three_forms / results / "predictions/given/test/work/0").is_dir(), form
        # the view shows the form's own demo volume
        state = (three_forms / results / "view/given/test/state.json").read_text()
        assert f"127.0.0.1:9000/{data}/demo/volume.zarr/" in state, form
        neurons = pd.read_csv(three_forms / results / "evaluation/given/test/neurons.csv")
        counts = pd.read_csv(three_forms / f"lab/{form}_called_neurons.tsv", sep="\t",
                             index_col=0)
        assert counts["count"].to_dict() == neurons["predicted_nt"].value_counts().to_dict()
    caches = {str(p.relative_to(three_forms)) for p in three_forms.rglob("cache")}
    assert caches == {f"{r}/predictions/given/test/cache" for r, _, _ in PLACES.values()}


def test_the_three_forms_predict_the_same(three_forms):
    def predictions(results: str) -> pd.DataFrame:
        table = pd.read_parquet(three_forms / results / "predictions/given/test/"
                                "predictions.parquet")
        return table.sort_values("synapse_id").reset_index(drop=True)

    plain = predictions("results")
    assert len(plain) > 0
    for results, _, _ in (PLACES["prefixed"], PLACES["replaced"]):
        pd.testing.assert_frame_equal(predictions(results), plain, check_exact=True)


def test_under_each_prefix_how_the_work_is_cut_plans_no_job(three_forms):
    """Exact reruns hold in a module: threads, memory, workers, block and batch sizes
    change no result; a setting that does still plans what depends on it."""
    original = yaml.safe_load((three_forms / "config.yaml").read_text())
    try:
        work_cut = copy.deepcopy(original)
        work_cut["ntclass"]["prediction"].update(
            {"workers": 2, "rows_per_block": 7, "batch_size": 5, "read_batch_rows": 11})
        work_cut["ntclass"]["resources"] = {"train": {"threads": 1, "mem_mb": 999},
                                            "predict": {"threads": 1, "mem_mb": 1234}}
        (three_forms / "config.yaml").write_text(yaml.safe_dump(work_cut))
        assert planned(three_forms) == {}
        evaluation = copy.deepcopy(original)
        evaluation["ntclass"].setdefault("evaluation", {})["min_synapses"] = 2
        (three_forms / "config.yaml").write_text(yaml.safe_dump(evaluation))
        assert planned(three_forms) == {
            **{f"{form}_{rule}": 1 for form in FORMS
               for rule in ("evaluate", "compare", "neuroglancer")},
            **{f"lab_{form}_neurons": 1 for form in FORMS}, "lab_all": 1}
    finally:
        (three_forms / "config.yaml").write_text(yaml.safe_dump(original))


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
    lab_workflow(lab, config, {"ntclass": ""})
    run_lab(lab)
    predictions = pd.read_parquet(lab / "results/predictions/given/brain/predictions.parquet")
    assert sorted(predictions["synapse_id"]) == sorted(table["synapse_id"])
    assert (lab / "lab/ntclass_called_neurons.tsv").is_file()
