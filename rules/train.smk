rule train:
    """Train one model on the manifest's train part; model.pt is the best validated one."""
    input:
        unpack(init_checkpoint),
        **raw_inputs(),
        manifest="results/split/manifest.csv",
    output:
        model="results/models/{model}/model.pt",
        last="results/models/{model}/model_last.pt",
        losses="results/models/{model}/training_log.csv",
        validation="results/models/{model}/validation.csv",
    log:
        "logs/train/{model}.log",
    benchmark:
        "results/benchmarks/train/{model}.tsv"
    wildcard_constraints:
        model=one_of(TRAINED),
    conda:
        ENV
    threads: config["resources"]["train"]["threads"]
    # how the work is cut (the WORK settings): resources, which Snakemake's rerun
    # triggers leave out
    resources:
        **training_resources(),
        gpu=config["resources"]["train"]["gpus"],
        mem_mb=config["resources"]["train"]["mem_mb"],
        runtime=config["resources"]["train"]["runtime"],
    params:
        training=training_params,
        # not an output: Snakemake would wipe it, and with it the checkpoints to resume from
        checkpoints=lambda wc, output: os.path.join(
            os.path.dirname(output.model), "checkpoints"
        ),
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
    log:
        "logs/train/{model}_curves.log",
    benchmark:
        "results/benchmarks/training_curves/{model}.tsv"
    conda:
        ENV
    params:
        title=lambda wc: f"model {wc.model}",
    script:
        "../workflow_scripts/training_curves.py"


rule import_model:
    """A model trained elsewhere (an ntclass model.pt or a gunpowder checkpoint) as an
    ntclass model file, its outputs in the order of the configured classes."""
    input:
        checkpoint=lambda wc: local(config["models"][wc.model]["checkpoint"]),
    output:
        model="results/models/{model}/model.pt",
    log:
        "logs/train/{model}_import.log",
    benchmark:
        "results/benchmarks/import_model/{model}.tsv"
    wildcard_constraints:
        model=one_of(IMPORTED),
    conda:
        ENV
    params:
        entry=lambda wc: canonical(config["models"][wc.model]),
        name=lambda wc: wc.model,
        classes=config["classes"],
        voxel_size=config.get("voxel_size"),
    script:
        "../workflow_scripts/import_model.py"
