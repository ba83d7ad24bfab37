rule split:
    """Read the synapse source into one table and assign train / validation / test."""
    input:
        **source_inputs(),
    output:
        manifest="results/split/manifest.csv",
        summary="results/split/summary.csv",
    params:
        source=config["source"],
        classes=config["classes"],
        voxel_size=config["voxel_size"],
        split=config["split"],
    log:
        "logs/split.log",
    conda:
        ENV
    script:
        "../workflow_scripts/split.py"
