rule neuroglancer:
    """The synapse predictions as neuroglancer annotations, the neuron calls as segment
    properties and a state (JSON and URL) showing both over the raw."""
    input:
        unpack(view_raw_input),
        predictions="results/predictions/{model}/{target}/predictions.parquet",
        neurons="results/evaluation/{model}/{target}/neurons.csv",
        metrics="results/evaluation/{model}/{target}/metrics.json",
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
