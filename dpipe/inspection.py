"""``dpipe inspect``: a fitted pipeline as a table, one row per step.

The renderer knows no op: it reads each step's spec and JSON state as saved in ``pipeline.json``
and summarises any state made of nested dicts, lists, numbers and strings. State keyed by the
step's columns (``{"mean": {"age": 40.1}, "scale": {"age": 12.0}}``) is shown per column
(``age: mean=40.1, scale=12``); lists as ``15 categories: US, GB, ...``. Every line is cut to the
terminal width, so a new op's state never breaks the layout.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from typing import Any

from dpipe.bundle import MANIFEST, PIPELINE, read_files
from dpipe.errors import BundleError

ELLIPSIS = "..."
ITEM_WIDTH = 24  # the most one list item or string may take before it is cut
VERSION_LIBRARIES = ("dpipe", "dask", "distributed", "pandas", "pyarrow", "xgboost", "python")


def read_bundle_json(uri: str, storage_options: dict | None = None) -> tuple[dict, dict]:
    """Return ``(pipeline, manifest)`` of the bundle at ``uri``, as saved (no op is built)."""
    raw = read_files(uri, storage_options, (PIPELINE, MANIFEST))
    problem: str | None
    try:
        pipeline, manifest = json.loads(raw[PIPELINE]), json.loads(raw[MANIFEST])
    except ValueError as exc:
        problem = str(exc).splitlines()[0][:300]
    else:
        ok = isinstance(pipeline, dict) and isinstance(pipeline.get("ops"), list)
        problem = None if ok else f"{PIPELINE} has no list of `ops`"
    if problem:
        raise BundleError(
            f"bundle: {uri!r} is corrupt: {problem}",
            hint="write it again with `dpipe run`; do not edit the files of a bundle",
        )
    return pipeline, manifest if isinstance(manifest, dict) else {}


# -- values -----------------------------------------------------------------------------------
def cut(text: str, width: int) -> str:
    """``text`` if it fits in ``width`` characters, else its start and ``...``."""
    width = max(width, len(ELLIPSIS))
    return text if len(text) <= width else text[: width - len(ELLIPSIS)].rstrip(".") + ELLIPSIS


def scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return cut(value, ITEM_WIDTH) if value else "''"
    return cut(str(value), ITEM_WIDTH)


def summarize(value: Any, width: int) -> str:
    """Compact text of any JSON value in at most ``width`` characters."""
    if isinstance(value, list):
        return _items(f"{len(value)} items", [summarize(v, ITEM_WIDTH) for v in value], width)
    if isinstance(value, dict):
        return cut(", ".join(_entry(k, v, width) for k, v in value.items()), width)
    return cut(scalar(value), width)


def _entry(key: str, value: Any, width: int) -> str:
    if isinstance(value, list):
        return _items(f"{len(value)} {key}", [summarize(v, ITEM_WIDTH) for v in value], width)
    if isinstance(value, dict):
        return f"{key}={{{summarize(value, width)}}}"
    return f"{key}={scalar(value)}"


def _items(label: str, items: list[str], width: int) -> str:
    """``label: a, b, c, ...`` with as many items as fit in ``width``."""
    if not items:
        return f"{label}: []"
    text = f"{label}:"
    for i, item in enumerate(items):
        more = i < len(items) - 1
        candidate = f"{text}{',' if i else ''} {item}"
        if len(candidate) + (len(", " + ELLIPSIS) if more else 0) > width and i > 0:
            return f"{text}, {ELLIPSIS}"
        text = candidate
    return text


def state_lines(state: Any, columns: list[str], width: int) -> list[str]:
    """One line per column for state keyed by the step's columns; other values on one line."""
    if state is None or state == {}:
        return ["-"]
    if not isinstance(state, dict):
        return [summarize(state, width)]
    known = set(columns)
    per_column = {k: v for k, v in state.items() if isinstance(v, dict) and v and (not known or set(v) <= known)}
    lines = []
    others = {k: v for k, v in state.items() if k not in per_column}
    if others:
        lines.append(cut(", ".join(_entry(k, v, width) for k, v in others.items()), width))
    names = [c for c in columns if any(c in v for v in per_column.values())]
    names += sorted({c for v in per_column.values() for c in v} - set(names), key=str)
    for name in names:
        prefix = f"{name}: "
        room = width - len(prefix)
        entries = [_entry(k, v[name], room) for k, v in per_column.items() if name in v]
        lines.append(cut(prefix + ", ".join(entries), width))
    return lines


# -- steps ------------------------------------------------------------------------------------
def step_columns(entry: dict) -> tuple[list[str], list[str]]:
    """Input and output columns of a saved step; from the op when this dpipe knows it."""
    spec = entry.get("spec") or {}
    declared = [str(c) for c in spec.get("columns") or []]
    try:
        from dpipe.ops import build_op
        from dpipe.spec import OP_MODELS

        op = build_op(OP_MODELS[spec["op"]].model_validate(spec), entry.get("where", "?"))
        inputs, outputs = op.input_columns(), op.output_columns()
    except Exception:  # noqa: BLE001 - an op this dpipe cannot build is shown from its spec alone
        inputs, outputs = set(declared), set(declared)
        if isinstance(spec.get("name"), str):
            outputs = {spec["name"]}

    def ordered(names: set[str]) -> list[str]:
        return [c for c in declared if c in names] + sorted(names - set(declared), key=str)

    return ordered(inputs), ordered(outputs)


def columns_text(inputs: list[str], outputs: list[str]) -> str:
    if inputs == outputs:
        return ", ".join(inputs) or "-"
    return f"{', '.join(inputs) or '-'} -> {', '.join(outputs) or '(rows)'}"


def render(pipeline: dict, manifest: dict, *, uri: str, width: int | None = None) -> str:
    """The header and the step table of ``dpipe inspect``, each line at most ``width`` wide.

    Examples
    --------
    >>> pipeline, manifest = read_bundle_json("runs/quickstart")
    >>> print(render(pipeline, manifest, uri="runs/quickstart", width=100))
    """
    width = max(width or shutil.get_terminal_size((100, 24)).columns, 40)
    header = [f"bundle: {uri}" + (f"  (job {manifest['job']!r})" if manifest.get("job") else "")]
    versions = manifest.get("versions") or pipeline.get("versions") or {}
    shown = [f"{k} {versions[k]}" for k in VERSION_LIBRARIES if k in versions]
    header.append("versions: " + (", ".join(shown) if shown else "unknown"))
    model_input = pipeline.get("model_input") or manifest.get("features") or {}
    features = list(model_input.get("features", []))
    categorical = set(model_input.get("categorical", []))
    header.append(f"features ({len(features)}):")
    for kind, names in (
        ("numeric", [f for f in features if f not in categorical]),
        ("categorical", [f for f in features if f in categorical]),
    ):
        if names:
            header.append(f"  {kind} ({len(names)}): " + ", ".join(names))
    phases = manifest.get("fit_phases")
    if phases is not None:
        passes = [f"{i}) {', '.join(p) if p else '(row counts only)'}" for i, p in enumerate(phases, 1)]
        header.append(f"fit passes ({len(phases)}): " + "  ".join(passes))
    # The header is wrapped, not cut: every feature name is worth seeing.
    lines = [
        part for line in header for part in textwrap.wrap(line, width, subsequent_indent="    ", break_on_hyphens=False)
    ]

    rows = []
    for entry in pipeline["ops"]:
        spec = entry.get("spec") or {}
        inputs, outputs = step_columns(entry)
        rows.append(
            (
                str(entry.get("where", "?")),
                str(spec.get("op", "?")),
                columns_text(inputs, outputs),
                entry.get("state"),
                list(dict.fromkeys(inputs + outputs)),
            )
        )
    head = ("step", "op", "columns", "fitted state")
    w_where = max([len(head[0])] + [len(r[0]) for r in rows])
    w_op = max([len(head[1])] + [len(r[1]) for r in rows])
    w_cols = min(max([len(head[2])] + [len(r[2]) for r in rows]), max(12, width // 4))
    w_state = max(width - w_where - w_op - w_cols - 6, 16)
    lines.append("")
    fmt = f"{{:<{w_where}}}  {{:<{w_op}}}  {{:<{w_cols}}}  {{}}"
    lines.append(cut(fmt.format(*head).rstrip(), width))
    if not rows:
        lines.append("(no feature steps: the model reads the source columns as they are)")
    for where, op, cols, state, columns in rows:
        for i, text in enumerate(state_lines(state, columns, w_state)):
            cells = (where, op, cut(cols, w_cols)) if i == 0 else ("", "", "")
            # Cut again: on a very narrow terminal even the first three cells do not fit.
            lines.append(cut(fmt.format(*cells, text).rstrip(), width))
    return "\n".join(lines)
