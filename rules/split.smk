rule split:
    """Read the synapse source into one table and assign train / validation / test."""
    input:
        **source_inputs(),
        **split_inputs(),
    output:
        manifest="results/split/manifest.csv",
        summary="results/split/summary.csv",
    log:
        "logs/split.log",
    benchmark:
        "results/benchmarks/split/split.tsv"
    conda:
        ENV
    resources:
        mem_mb=config["resources"]["split"]["mem_mb"],
        runtime=config["resources"]["split"]["runtime"],
    params:
        source=canonical(config.get("source", {})),
        classes=config["classes"],
        voxel_size=config.get("voxel_size"),
        split=canonical(config["split"]),
    script:
        "../workflow_scripts/split.py"
