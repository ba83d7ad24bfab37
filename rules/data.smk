import os


rule demo_data:
    """The synthetic demo dataset in both layouts: zarr volume + table, CREMI folders."""
    output:
        table=f"{config['demo']['out_dir']}/synapses.csv",
        volume=directory(f"{config['demo']['out_dir']}/volume.zarr"),
        cremi=directory(f"{config['demo']['out_dir']}/cremi"),
    log:
        "logs/demo_data.log",
    benchmark:
        "results/benchmarks/demo_data/demo_data.tsv"
    conda:
        ENV
    params:
        demo=canonical(config["demo"]),
        classes=config["classes"],
        out_dir=lambda wc, output: os.path.dirname(output.table),
    script:
        "../workflow_scripts/demo_data.py"
