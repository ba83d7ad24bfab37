rule train:
    """Train one model on the manifest's train part; model.pt is the best validated one."""
    input:
        manifest="results/split/manifest.csv",
        **raw_inputs(),
    output:
        model="results/models/{model}/model.pt",
        last="results/models/{model}/model_last.pt",
        losses="results/models/{model}/training_log.csv",
        validation="results/models/{model}/validation.csv",
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


rule training_curves:
    """Loss and validation curves of one model, for the report."""
    input:
        losses="results/models/{model}/training_log.csv",
        validation="results/models/{model}/validation.csv",
    output:
        png=report(
            "results/models/{model}/training_curves.png",
            caption="../report/training.rst",
            category="Training",
            labels={"model": "{model}"},
        ),
    params:
        title=lambda wc: f"model {wc.model}",
    log:
        "logs/train/{model}_curves.log",
    conda:
        ENV
    script:
        "../workflow_scripts/training_curves.py"
