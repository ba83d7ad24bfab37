rule split:
    """Read the synapse source into one table and assign train / validation / test."""
    input:
        **source_inputs(),
        **split_inputs(),
    output:
        manifest="results/split/manifest.csv",
        summary="results/split/summary.csv",
    params:
        source=canonical(config.get("source", {})),
        classes=config["classes"],
        voxel_size=config.get("voxel_size"),
        split=canonical(config["split"]),
    resources:
        mem_mb=config["resources"]["split"]["mem_mb"],
        runtime=config["resources"]["split"]["runtime"],
    log:
        "logs/split.log",
    conda:
        ENV
    script:
        "../workflow_scripts/split.py"
