rule evaluate:
    """Synapse- and neuron-level metrics, calibration, the signed edges and the report of
    one model and target."""
    input:
        unpack(evaluation_inputs),
    output:
        metrics="results/evaluation/{model}/{target}/metrics.json",
        report=report(
            "results/evaluation/{model}/{target}/report.txt",
            caption="../report/metrics.rst",
            category="Metrics",
            labels={"model": "{model}", "target": "{target}"},
        ),
        neurons="results/evaluation/{model}/{target}/neurons.csv",
        inputs="results/evaluation/{model}/{target}/inputs.csv",
        edges="results/evaluation/{model}/{target}/edges.csv",
        groups="results/evaluation/{model}/{target}/groups.csv",
        confusion=report(
            "results/evaluation/{model}/{target}/confusion.png",
            caption="../report/confusion.rst",
            category="Confusion matrices",
            labels={"model": "{model}", "target": "{target}"},
        ),
        calibration=report(
            "results/evaluation/{model}/{target}/calibration.png",
            caption="../report/calibration.rst",
            category="Calibration",
            labels={"model": "{model}", "target": "{target}"},
        ),
    log:
        "logs/evaluate/{model}/{target}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{target}.tsv"
    conda:
        ENV
    params:
        classes=config["classes"],
        evaluation=evaluation_params(),
        title=lambda wc: f"ntclass evaluation: model {wc.model}, target {wc.target}",
    script:
        "../workflow_scripts/evaluate.py"


rule flywire_tables:
    """The neuron calls and synapse predictions in FlyWire's column conventions."""
    input:
        predictions="results/predictions/{model}/{target}/predictions.parquet",
        neurons="results/evaluation/{model}/{target}/neurons.csv",
        metrics="results/evaluation/{model}/{target}/metrics.json",
    output:
        neurons="results/evaluation/{model}/{target}/flywire_neurons.csv",
        synapses="results/evaluation/{model}/{target}/flywire_synapses.parquet",
    log:
        "logs/evaluate/{model}/{target}_flywire.log",
    benchmark:
        "results/benchmarks/flywire_tables/{model}/{target}.tsv"
    conda:
        ENV
    params:
        classes=config["classes"],
    script:
        "../workflow_scripts/flywire_tables.py"


rule fit_temperature:
    """One temperature per model, fitted on the predictions of a labelled split part."""
    input:
        predictions=lambda wc: (
            f"results/predictions/{wc.model}/"
            f"{config['evaluation']['temperature_scaling']['fit_on']}/predictions.parquet"
        ),
    output:
        temperature="results/models/{model}/temperature.json",
    log:
        "logs/evaluate/{model}_temperature.log",
    benchmark:
        "results/benchmarks/fit_temperature/{model}.tsv"
    conda:
        ENV
    params:
        classes=config["classes"],
        fit_on=config["evaluation"]["temperature_scaling"]["fit_on"],
    script:
        "../workflow_scripts/fit_temperature.py"


rule fit_abstention:
    """One confidence threshold per model below which neurons are called unclear, fitted on
    the neuron calls of a labelled split part to reach evaluation.abstention.precision.
    """
    input:
        unpack(abstention_inputs),
    output:
        abstention="results/models/{model}/abstention.json",
    log:
        "logs/evaluate/{model}_abstention.log",
    benchmark:
        "results/benchmarks/fit_abstention/{model}.tsv"
    conda:
        ENV
    params:
        classes=config["classes"],
        evaluation=abstention_params(),
    script:
        "../workflow_scripts/fit_abstention.py"


rule compare:
    """One table over all models and targets."""
    input:
        metrics=evaluation_targets(),
    output:
        csv="results/evaluation/comparison.csv",
        html=report(
            "results/evaluation/comparison.html",
            caption="../report/comparison.rst",
            category="Comparison",
        ),
    log:
        "logs/evaluate/compare.log",
    benchmark:
        "results/benchmarks/compare/compare.tsv"
    conda:
        ENV
    params:
        runs=[{"model": m, "target": t} for m in MODELS for t in TARGETS],
        classes=config["classes"],
    script:
        "../workflow_scripts/compare.py"
