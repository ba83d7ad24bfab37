"""The `ntclass` command: small helpers around the workflow's outputs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ntclass.errors import NtclassError


def summary(evaluation_dir: str) -> int:
    """Print synapse- and neuron-level accuracy of every model and target evaluated."""
    files = sorted(Path(evaluation_dir).glob("*/*/metrics.json"))
    if not files:
        raise NtclassError(f"no metrics.json under '{evaluation_dir}'; run the workflow first")
    print(f"{'model':<16}{'target':<14}{'synapses':>9}{'accuracy':>10}{'x chance':>10}"
          f"{'neurons':>9}{'neuron acc':>12}")
    for path in files:
        m = json.loads(path.read_text())
        syn, neu = m["synapse"], m["neuron"]
        acc = syn["accuracy"]
        ratio = f"{acc / m['chance']:.1f}" if acc is not None else "n/a"
        acc_s = f"{acc:.3f}" if acc is not None else "n/a"
        nacc = f"{neu['accuracy']:.3f}" if neu["accuracy"] is not None else "n/a"
        print(f"{path.parent.parent.name:<16}{path.parent.name:<14}{syn['n']:>9}{acc_s:>10}"
              f"{ratio:>10}{neu['n']:>9}{nacc:>12}")
    return 0


def costs(benchmark_dir: str, only: str | None) -> int:
    """Print each stage's jobs, time and largest peak memory from Snakemake's benchmarks."""
    from ntclass.costs import print_costs, stage_costs

    print_costs(stage_costs(benchmark_dir, only))
    return 0


def mongo_import(table: str, uri: str | None, database: str, replace: bool) -> int:
    from ntclass.sources.mongo import import_table, redact_uri
    from ntclass.sources.synapses import read_table_file

    n = import_table(read_table_file(table), uri, database, replace=replace)
    where = redact_uri(uri) if uri else "$NTCLASS_MONGO_URI"
    print(f"imported {n} synapses from {table} into {where}, database {database}")
    return 0


def import_split(legacy: str, out: str) -> int:
    from ntclass.io import write_csv
    from ntclass.split.legacy import read_legacy_split

    table = read_legacy_split(legacy)
    write_csv(table, out)
    counts = ", ".join(f"{n} {part}" for part, n in table["split"].value_counts().items())
    print(f"wrote {out}: {counts}; use it with split: {{method: given, assignment: {out}}}")
    return 0


def evaluate(predictions: str, config_path: str | None, classes: str | None, out: str,
             temperature: str | None, abstention: str | None = None) -> int:
    """The workflow's evaluation of an existing prediction table (CSV or Parquet)."""
    import yaml

    from ntclass.config import evaluation_settings
    from ntclass.evaluate.metrics import (
        EvaluationOutputs,
        check_prediction_table,
        evaluate_predictions,
    )
    from ntclass.provenance import config_sha256

    config = {}
    if config_path:
        with open(config_path) as f:
            config = yaml.safe_load(f) or {}
    names = classes.split(",") if classes else config.get("classes")
    if not names:
        raise NtclassError("give the class names (the probability columns), with --classes "
                           "a,b,c or --config a config file that lists classes")
    settings = evaluation_settings(config.get("evaluation", {}))
    if settings.abstention.precision is not None and not abstention:
        raise NtclassError("evaluation.abstention.precision is set, but ntclass evaluate "
                           "fits no threshold: give the abstention.json the workflow fitted "
                           "with --abstention, or leave precision out")
    check_prediction_table(predictions, names)
    Path(out).mkdir(parents=True, exist_ok=True)
    metrics = evaluate_predictions(predictions, classes=names, settings=settings,
                                   title=f"ntclass evaluation: {predictions}",
                                   outputs=EvaluationOutputs.in_folder(out),
                                   temperature_path=temperature,
                                   abstention_path=abstention,
                                   config_digest=config_sha256(config) if config else None)
    syn, neu = metrics["synapse"], metrics["neuron"]
    print(f"{syn['n']} labelled synapses, accuracy {syn['accuracy']}; {neu['n']} neurons, "
          f"accuracy {neu['accuracy']}; written to {out}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ntclass", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="print the accuracy of every evaluated model")
    p.add_argument("evaluation_dir", nargs="?", default="results/evaluation")
    p = sub.add_parser("costs", help="print what each stage cost: jobs, wall and CPU time, "
                       "the largest job's peak memory (from results/benchmarks)")
    p.add_argument("benchmark_dir", nargs="?", default="results/benchmarks")
    p.add_argument("--only", help="only the jobs of this model or target")
    p = sub.add_parser("mongo-import", help="import a synapse table into MongoDB "
                       "(Synister's schema); the password comes from NTCLASS_MONGO_PASSWORD")
    p.add_argument("table", help="CSV or Parquet: synapse_id, z, y, x (nm), nt, pre_id, ...")
    p.add_argument("--uri", help="MongoDB address without password (default: "
                   "NTCLASS_MONGO_URI)")
    p.add_argument("--database", required=True)
    p.add_argument("--replace", action="store_true", help="overwrite existing collections")
    p = sub.add_parser("import-split", help="convert a split pickled by an older tool "
                       "(part -> synapse ids) into a split file for split.method 'given'; "
                       "nothing but plain lists, dicts and strings is unpickled")
    p.add_argument("legacy", help="the .pkl file")
    p.add_argument("out", help="the CSV to write: synapse_id, split")
    p = sub.add_parser("evaluate", help="evaluate an existing prediction table (CSV or "
                       "Parquet: synapse_id, pre_id, post_id, nt, a probability column per "
                       "class) as the workflow does")
    p.add_argument("predictions")
    p.add_argument("--config", help="a config file: its classes and evaluation section")
    p.add_argument("--classes", help="the probability columns, comma-separated (instead of "
                   "the config's classes)")
    p.add_argument("--out", default="evaluation", help="output folder (default: evaluation)")
    p.add_argument("--temperature", help="a temperature.json fitted by the workflow")
    p.add_argument("--abstention", help="an abstention.json fitted by the workflow "
                   "(evaluation.abstention)")
    p = sub.add_parser("view", help="serve a finished project's neuroglancer view (the "
                       "annotations, segment properties and local raw) on this machine, "
                       "with neuroglancer's own client, and print the URL to open")
    p.add_argument("project", nargs="?", default=".", help="the project folder (default: .)")
    p.add_argument("--model", help="the model of the view (needed when there are several)")
    p.add_argument("--target", help="the target of the view (needed when there are several)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000, help="the files' port: that of "
                   "view.served_at (default 9000; 0: any free port)")
    p.add_argument("--client-port", type=int, default=0,
                   help="the neuroglancer client's port (default: any free port)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    try:
        if args.command == "summary":
            return summary(args.evaluation_dir)
        if args.command == "costs":
            return costs(args.benchmark_dir, args.only)
        if args.command == "mongo-import":
            return mongo_import(args.table, args.uri, args.database, args.replace)
        if args.command == "import-split":
            return import_split(args.legacy, args.out)
        if args.command == "view":
            from ntclass.view.serve import serve
            return serve(args.project, args.model, args.target, args.host, args.port,
                         args.client_port, args.verbose)
        if args.command == "evaluate":
            return evaluate(args.predictions, args.config, args.classes, args.out,
                            args.temperature, args.abstention)
    except NtclassError as e:
        print(f"ntclass: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
