checkpoint target_synapses:
    """The synapses of one target, read once in batches, partitioned by shard and sorted
    spatially (a checkpoint: the number of shards follows from the number of synapses).
    """
    input:
        unpack(target_inputs),
    output:
        synapses=directory("results/targets/{target}"),
    log:
        "logs/targets/{target}.log",
    benchmark:
        "results/benchmarks/target_synapses/{target}.tsv"
    conda:
        ENV
    # how the work is cut: resources, which Snakemake's rerun triggers leave out
    resources:
        read_batch_rows=config["prediction"]["read_batch_rows"],
    params:
        target=target_params,
        target_name=lambda wc: wc.target,
        classes=config["classes"],
        voxel_size=config.get("voxel_size"),
        partition=partition_params(),
    script:
        "../workflow_scripts/target_synapses.py"


rule predict_shard:
    """Predict one shard of a target blockwise with daisy."""
    input:
        unpack(target_raw),
        model="results/models/{model}/model.pt",
        synapses="results/targets/{target}",
    output:
        shard="results/predictions/{model}/{target}/shards/{shard}.parquet",
    log:
        "logs/predict/{model}/{target}/{shard}.log",
    benchmark:
        "results/benchmarks/predict_shard/{model}/{target}/{shard}.tsv"
    conda:
        ENV
    threads: config["resources"]["predict"]["threads"]
    resources:
        gpu=config["resources"]["predict"]["gpus"],
        mem_mb=config["resources"]["predict"]["mem_mb"],
        runtime=config["resources"]["predict"]["runtime"],
        # how the work is cut: resources, which Snakemake's rerun triggers leave out
        rows_per_block=config["prediction"]["rows_per_block"],
        batch_size=config["prediction"]["batch_size"],
        workers=config["prediction"]["workers"],
        jpeg_decoder=config["prediction"]["jpeg_decoder"],
    params:
        shard=lambda wc: int(wc.shard),
        classes=config["classes"],
        voxel_size=config.get("voxel_size"),
        intensity_range=target_intensity_range,
        prediction=prediction_params(),
        # daisy's done markers: outside the declared outputs so a killed shard resumes
        work_dir=lambda wc, output: os.path.join(
            prediction_folder(output), "work", wc.shard
        ),
        # finished predictions by location, model and settings: a new release of the
        # target predicts only its new synapses
        cache_dir=lambda wc, output: os.path.join(prediction_folder(output), "cache"),
        # outputs of an earlier prediction of this model and target, removed when a shard
        # starts anew: a rerun that fails leaves none of them looking current
        supersedes=superseded_outputs,
    script:
        "../workflow_scripts/predict_shard.py"


rule merge_predictions:
    """One prediction table per model and target: every synapse exactly once."""
    input:
        shards=shard_paths,
        synapses="results/targets/{target}",
    output:
        parquet="results/predictions/{model}/{target}/predictions.parquet",
    log:
        "logs/predict/{model}/{target}/merge.log",
    benchmark:
        "results/benchmarks/merge_predictions/{model}/{target}.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/merge_predictions.py"


rule prediction_csv:
    """The prediction table as one CSV (asked for by default for targets up to
    prediction.csv_max_synapses synapses)."""
    input:
        parquet="results/predictions/{model}/{target}/predictions.parquet",
    output:
        csv="results/predictions/{model}/{target}/predictions.csv",
    log:
        "logs/predict/{model}/{target}/csv.log",
    benchmark:
        "results/benchmarks/prediction_csv/{model}/{target}.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/prediction_csv.py"


rule mongo_write_back:
    """A model's predictions of a MongoDB target, written into its synapse documents."""
    input:
        predictions="results/predictions/{model}/{target}/predictions.parquet",
    output:
        receipt="results/predictions/{model}/{target}/mongo_write_back.json",
    log:
        "logs/predict/{model}/{target}/mongo_write_back.log",
    benchmark:
        "results/benchmarks/mongo_write_back/{model}/{target}.tsv"
    conda:
        ENV
    params:
        target=lambda wc: canonical(config["targets"][wc.target]),
        target_name=lambda wc: wc.target,
        model=lambda wc: wc.model,
        classes=config["classes"],
    script:
        "../workflow_scripts/mongo_write_back.py"
