checkpoint annotation_plan:
    """The jobs of the annotation layer: its levels and quotas, each index's sharding and
    the row ranges of the map jobs, from one streaming scan of the predictions."""
    input:
        predictions="results/predictions/{model}/{target}/predictions.parquet",
    output:
        plan=f"{JOBS}/plan.json",
    log:
        "logs/view/{model}/{target}/annotation_plan.log",
    benchmark:
        "results/benchmarks/annotation_plan/{model}/{target}.tsv"
    conda:
        ENV
    params:
        classes=config["classes"],
        limit=config["view"]["limit"],
        rows_per_part=config["view"]["synapses_per_job"],
        sharded_above=config["view"]["sharded_above"],
        minishard_keys=config["view"]["keys_per_minishard"],
        shard_bytes=int(config["view"]["shard_mb"] * 1e6),
    script:
        "../workflow_scripts/annotation_plan.py"


rule annotation_map:
    """One row range of the predictions, each annotation encoded once and filed under
    (index, shard)."""
    input:
        predictions="results/predictions/{model}/{target}/predictions.parquet",
        plan=f"{JOBS}/plan.json",
    output:
        part=f"{JOBS}/parts/{{part}}.parquet",
    log:
        "logs/view/{model}/{target}/annotation_map/{part}.log",
    benchmark:
        "results/benchmarks/annotation_map/{model}/{target}/{part}.tsv"
    wildcard_constraints:
        part=r"\d+",
    conda:
        ENV
    script:
        "../workflow_scripts/annotation_map.py"


rule annotation_reduce:
    """One shard of one index of the annotation layer, written whole from every part."""
    input:
        plan=f"{JOBS}/plan.json",
        parts=annotation_parts,
        overflow=annotation_overflow_in,
    output:
        shard=directory(f"{JOBS}/shards/{{index}}/{{shard}}"),
        overflow=f"{JOBS}/overflow/{{index}}/{{shard}}.parquet",
    log:
        "logs/view/{model}/{target}/annotation_reduce/{index}/{shard}.log",
    benchmark:
        "results/benchmarks/annotation_reduce/{model}/{target}/{index}/{shard}.tsv"
    wildcard_constraints:
        index=r"\d+",
    conda:
        ENV
    params:
        index=lambda wc: int(wc.index),
        shard=lambda wc: int(wc.shard),
    script:
        "../workflow_scripts/annotation_reduce.py"


rule neuroglancer:
    """The synapse predictions as neuroglancer annotations (the reduced shards linked under
    one folder), the neuron calls as segment properties and a state (JSON and URL) showing
    both over the raw."""
    input:
        unpack(view_raw_input),
        predictions="results/predictions/{model}/{target}/predictions.parquet",
        neurons="results/evaluation/{model}/{target}/neurons.csv",
        metrics="results/evaluation/{model}/{target}/metrics.json",
        plan=f"{JOBS}/plan.json",
        shards=annotation_shards,
    output:
        annotations=directory("results/view/{model}/{target}/annotations"),
        segments=directory("results/view/{model}/{target}/segment_properties"),
        state="results/view/{model}/{target}/state.json",
        url="results/view/{model}/{target}/state_url.txt",
        page=report(
            "results/view/{model}/{target}/state.html",
            caption="../report/view.rst",
            category="Neuroglancer",
            labels={"model": "{model}", "target": "{target}"},
        ),
    log:
        "logs/view/{model}/{target}.log",
    benchmark:
        "results/benchmarks/neuroglancer/{model}/{target}.tsv"
    conda:
        ENV
    params:
        classes=config["classes"],
        view=config["view"],
        raw=view_raw,
        voxel_size=config.get("voxel_size"),
        name=lambda wc: f"{wc.model} {wc.target}",
        model=lambda wc: wc.model,
        target=lambda wc: wc.target,
    script:
        "../workflow_scripts/neuroglancer.py"
