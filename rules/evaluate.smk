rule evaluate:
    """Synapse- and neuron-level metrics and the text report of one model and target."""
    input:
        predictions="results/predictions/{model}/{target}/predictions.csv",
    output:
        metrics="results/evaluation/{model}/{target}/metrics.json",
        report="results/evaluation/{model}/{target}/report.txt",
        neurons="results/evaluation/{model}/{target}/neurons.csv",
    params:
        classes=config["classes"],
        evaluation=canonical(config["evaluation"]),
        title=lambda wc: f"ntclass evaluation: model {wc.model}, target {wc.target}",
    log:
        "logs/evaluate/{model}/{target}.log",
    conda:
        ENV
    script:
        "../workflow_scripts/evaluate.py"
