rule train:
    """Train one model on the manifest's train part."""
    input:
        manifest="results/split/manifest.csv",
        **raw_inputs(),
    output:
        model="results/models/{model}/model.pt",
        losses="results/models/{model}/training_log.csv",
    params:
        training=training_params,
        # not an output: Snakemake would wipe it, and with it the checkpoints to resume from
        checkpoints=lambda wc: f"results/models/{wc.model}/checkpoints",
    threads: 2
    log:
        "logs/train/{model}.log",
    conda:
        ENV
    script:
        "../workflow_scripts/train.py"
