"""``dpipe register`` and ``dpipe registry list|show|promote|diff``.

The registry's URL comes from ``--registry`` or ``$DPIPE_REGISTRY``. Imports are lazy: every
``dpipe`` command loads this module to build its parser.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from dpipe.cli import json_object
from dpipe.errors import SpecError

Handler = Callable[[argparse.Namespace], int | None]


def add_commands(sub, add_common: Callable[[argparse.ArgumentParser], None]) -> dict[str, Handler]:
    """Add ``register`` and ``registry`` to the ``dpipe`` parser; their handlers by command name."""
    p = sub.add_parser("register", help="copy a model bundle into the registry as a new, immutable version")
    p.add_argument("bundle", help="model bundle (the `output.uri` of a run)")
    p.add_argument("--name", required=True, help="the model's name in the registry, e.g. churn")
    p.add_argument("--alias", dest="aliases", action="append", default=[], metavar="ALIAS", help="(repeatable)")
    p.add_argument(
        "--bundle-storage-options", metavar="JSON", help="fsspec options of the bundle (default: the registry's)"
    )
    _add_registry(p)
    p.add_argument("--json", action="store_true", help="print the new version as JSON")
    add_common(p)

    p = sub.add_parser("registry", help="the model registry: list, show, promote, diff")
    verbs = p.add_subparsers(dest="registry_command", required=True, metavar="ACTION")

    q = verbs.add_parser("list", help="list the models, or the versions of one with their aliases")
    q.add_argument("name", nargs="?", help="a model name (default: list the models)")
    _add_registry(q)
    q.add_argument("--json", action="store_true")
    add_common(q)

    q = verbs.add_parser("show", help="print one version: its record, metrics and aliases")
    q.add_argument("name")
    q.add_argument("version", nargs="?", default="latest", help="a number, an alias or latest (default)")
    _add_registry(q)
    q.add_argument("--json", action="store_true")
    add_common(q)

    q = verbs.add_parser("promote", help="move an alias to a version, through a gate unless --no-gate")
    q.add_argument("name")
    q.add_argument("version", help="a version number (or an alias)")
    q.add_argument("--alias", default="champion", help="the alias to move (default: champion)")
    q.add_argument("--no-gate", action="store_true", help="move the alias without comparing the versions")
    q.add_argument("--metric", help="gate: the metric compared, e.g. auc or logloss")
    q.add_argument("--margin", type=float, default=0.0, help="gate: how much better the candidate must be")
    q.add_argument("--direction", choices=["maximize", "minimize"], help="gate: default from the metric's name")
    q.add_argument("--source", help="gate: the evaluation rows: a path or URL, or a source entry (YAML file)")
    _add_registry(q)
    q.add_argument("--json", action="store_true", help="print the decision as JSON")
    add_common(q)

    q = verbs.add_parser("diff", help="what differs between two versions: metrics, params, features, rows, spec")
    q.add_argument("name")
    q.add_argument("a", help="a version number or an alias")
    q.add_argument("b", help="a version number or an alias")
    _add_registry(q)
    q.add_argument("--json", action="store_true")
    add_common(q)
    return {"register": _register, "registry": _registry}


def _add_registry(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", metavar="URL", help="the registry (default: $DPIPE_REGISTRY)")
    p.add_argument("--storage-options", metavar="JSON", help="fsspec options of the registry as JSON")


def _open(args):
    from dpipe.registry import Registry, registry_uri

    return Registry(registry_uri(args.registry), json_object(args.storage_options, "--storage-options"))


def _register(args) -> int:
    reg = _open(args)
    options = json_object(args.bundle_storage_options, "--bundle-storage-options")
    version = reg.register(
        args.bundle,
        args.name,
        storage_options=reg.storage_options if options is None else options,
        aliases=args.aliases,
    )
    if args.json:
        print(json.dumps(version.to_dict(), indent=2, default=str))
    else:
        aliases = f" ({', '.join(version.aliases)})" if version.aliases else ""
        print(f"registered {version.ref}{aliases}: {version.uri}")
    return 0


def _registry(args) -> int | None:
    return _ACTIONS[args.registry_command](args)


def _list(args) -> int:
    reg = _open(args)
    if args.name is None:
        names = reg.names()
        if args.json:
            print(json.dumps(names))
        else:
            print("\n".join(names) if names else f"no models in {reg.shown}")
        return 0
    versions = reg.versions(args.name)
    if args.json:
        print(json.dumps([v.to_dict() for v in versions], indent=2, default=str))
        return 0
    print(f"{'version':>7}  {'registered':<25} {'run':<10} {'metrics (valid)':<36} aliases")
    for v in versions:
        print(
            f"{v.number:>7}  {str(v.record.get('registered_at'))[:25]:<25} {str(v.record.get('run_id'))[:8]:<10}"
            f" {_metrics_text(v.metrics.get('valid')):<36} {', '.join(v.aliases)}"
        )
    return 0


def _show(args) -> int:
    reg = _open(args)
    v = reg.show(args.name, args.version)
    if args.json:
        print(json.dumps(v.to_dict(), indent=2, default=str))
        return 0
    r = v.record
    by = r.get("registered_by") or {}
    print(f"{v.ref}: {v.uri}")
    print(f"  aliases: {', '.join(v.aliases) or 'none'}")
    print(f"  source: {r.get('source')}  (job {r.get('job')!r}, run {r.get('run_id')}, dpipe {r.get('dpipe_version')})")
    print(f"  registered: {r.get('registered_at')} by {by.get('user')}@{by.get('host')}")
    for split in ("train", "valid", "test"):
        if isinstance(v.metrics.get(split), dict):
            print(f"  {split}: {_metrics_text(v.metrics[split])}")
    print(f"  rows: {json.dumps(r.get('rows'), default=str)}")
    print(f"  features ({len(r.get('features') or [])}): {', '.join(r.get('features') or [])}")
    print(f"  files: {len(r.get('files') or {})} ({sum(f['size'] for f in (r.get('files') or {}).values())} bytes)")
    return 0


def _promote(args) -> int:
    reg = _open(args)
    gate, scores = _gate(args, reg)
    decision = reg.promote(args.name, args.version, args.alias, gate=gate, scores=scores)
    if args.json:
        print(json.dumps(decision.to_dict(), indent=2))
    else:
        verb = "promoted" if decision.promoted else "not promoted"
        print(f"{args.name} version {decision.candidate} {verb} to {decision.alias!r}: {decision.reason}")
    return 0


def _gate(args, reg) -> tuple[dict[str, Any] | None, Any]:
    given = [f for f, v in (("--metric", args.metric), ("--source", args.source), ("--direction", args.direction)) if v]
    if args.no_gate:
        if given or args.margin:
            raise SpecError(f"promote: --no-gate moves the alias unconditionally; drop {given or ['--margin']}")
        return None, None
    if not args.metric or not args.source:
        raise SpecError(
            "promote: a gated promotion needs --metric and --source (the evaluation rows)",
            hint="e.g. --metric auc --margin 0.002 --source data/holdout, or --no-gate for an unconditional move",
        )
    gate: dict[str, Any] = {"metric": args.metric, "margin": args.margin}
    if args.direction:
        gate["direction"] = args.direction
    source = _source(args.source)
    score_bundle = _score_bundle()
    options = reg.storage_options or None

    def scores(bundle_uri: str) -> dict[str, float | None]:
        return score_bundle(bundle_uri, source, storage_options=options)

    return gate, scores


def _score_bundle() -> Callable[..., dict[str, float | None]]:
    """:func:`dpipe.scoring.score_bundle`: a bundle's metrics on a source (imported when a gate needs it)."""
    from dpipe.scoring import score_bundle

    return score_bundle


def _source(text: str):
    """A source entry from a YAML file, or a path/URL (its format from the suffix)."""
    from dpipe.spec.source import source_spec

    if text.endswith((".yaml", ".yml")):
        from dpipe.spec.load import load_entry

        return load_entry(text, "source")
    return source_spec({"uri": text}, where="--source")


def _diff(args) -> int:
    from dpipe.registry.diff import format_diff

    d = _open(args).diff(args.name, args.a, args.b)
    print(json.dumps(d, indent=2, default=str) if args.json else format_diff(d))
    return 0


def _metrics_text(metrics: Any) -> str:
    if not isinstance(metrics, dict):
        return "-"
    return ", ".join(f"{k}={v:.5f}" for k, v in metrics.items() if isinstance(v, (int, float)))


_ACTIONS: dict[str, Handler] = {"list": _list, "show": _show, "promote": _promote, "diff": _diff}
