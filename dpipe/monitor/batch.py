"""The batch: opened reading only what is needed, checked before a cluster starts, and the one
lazy computation of every count (features, predictions, labels) over it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

from dpipe import drift
from dpipe.bundle import Bundle
from dpipe.columns import LABEL
from dpipe.errors import BundleError, ColumnError, SpecError
from dpipe.expr import Expression
from dpipe.io import open_source
from dpipe.io.fs import resolve, storage_errors
from dpipe.plan import table_opener
from dpipe.spec.base import redact_url
from dpipe.train import predict_frame

#: Prefix of the copies of categorical source columns carried through the feature ops.
_RAW = "__dpipe_raw__"


def read_profile(bundle: str, storage_options: dict | None = None) -> dict[str, Any]:
    """The bundle's ``profile.json`` (:mod:`dpipe.drift`)."""
    fs, path = resolve(bundle, storage_options, where="bundle")
    target = f"{path.rstrip('/')}/{drift.PROFILE}"
    with storage_errors("bundle", bundle):
        try:
            raw = fs.cat_file(target)
        except FileNotFoundError:
            raise BundleError(
                f"bundle: {redact_url(bundle)!r} has no {drift.PROFILE}: no reference profile to monitor against",
                hint="train the model again with this dpipe version: training runs store the reference profile",
            ) from None
    try:
        profile = json.loads(raw)
        if profile.get("version") != drift.PROFILE_VERSION:
            raise ValueError(f"profile version {profile.get('version')!r}, expected {drift.PROFILE_VERSION}")
        return dict(profile)
    except (ValueError, AttributeError) as exc:
        raise BundleError(
            f"bundle: {drift.PROFILE} of {redact_url(bundle)!r} cannot be used: {exc}",
            hint="train the model again with this dpipe version",
        ) from exc


@dataclass(frozen=True)
class Batch:
    source: Any
    measures: dict[str, Any]
    #: What was done about labels, in words (for the log and the report).
    labels: str
    objective: str | None


def _label_of(b: Bundle) -> tuple[str | None, str | None, set[str] | None]:
    """The job's label (column, expression, the columns it reads), ``None`` for a joined label."""
    label = (b.manifest.get("spec") or {}).get("label") or {}
    if label.get("join"):
        return None, None, None
    if label.get("column"):
        return label["column"], None, {label["column"]}
    if label.get("expr"):
        return None, label["expr"], set(Expression(label["expr"], where="label.expr").columns)
    return None, None, None


def plan_batch(b: Bundle, profile: dict, spec: Any, labels: bool | None, storage_options: dict | None) -> Batch:
    """Open the batch reading only what is needed, check it, and build the one lazy computation."""
    b.pipeline.bind(table_opener(storage_options))
    src = open_source(spec, where="source")
    available = list(src.frame.columns)
    needed = b.pipeline.required_columns(b.model_input.features)
    missing = sorted(c for c in needed if c not in available)
    if missing:
        raise ColumnError(
            f"source: the model needs column(s) {missing} that {redact_url(spec.uri)!r} does not provide;"
            f" available: {available}",
            hint="monitor data with the columns the model was trained on",
        )
    column, expr, label_inputs = _label_of(b)
    objective = (b.manifest.get("spec") or {}).get("train", {}).get("objective")
    use_labels, said = False, "labels: not used"
    if labels is not False:
        absent = sorted(label_inputs - set(available)) if label_inputs is not None else None
        if labels and absent is None:
            raise SpecError(
                "labels: the job's label comes from another table (`label.join`); it cannot be read from the batch",
                hint="monitor without labels",
            )
        if labels and absent:
            raise ColumnError(
                f"labels: the label needs column(s) {absent} that {redact_url(spec.uri)!r} does not provide",
                hint="give a batch with the label's columns, or monitor without labels",
            )
        use_labels = absent == []
        said = "labels: from the job's label" if use_labels else "labels: none in the batch (drift only)"
    read = set(needed) | (label_inputs or set() if use_labels else set())
    columns = [c for c in available if c in read]
    if len(columns) < len(available):
        src = open_source(spec, where="source", columns=columns)
    raw = {c: _RAW + c for c in _vocabularies(b) if c in needed}
    prepare = _Prepare(tuple(raw.items()), column, expr, use_labels)
    rows = src.combined()
    frame = rows.map_partitions(prepare, meta=prepare(rows._meta))
    meta = b.pipeline.describe(frame._meta)
    _check_types(b, meta, spec.uri)
    # A `select` op keeps only its columns (and dpipe's internal ones): no raw copy, no unseen rate.
    raw = {c: r for c, r in raw.items() if r in meta.columns}
    keep = [*b.model_input.features, *raw.values(), *([LABEL] if use_labels else [])]
    scored = predict_frame(b.booster, b.pipeline.transform(frame), b.model_input, keep)
    predicted = [c for c in scored.columns if c not in keep]
    clash = sorted(set(b.model_input.features) & {"prediction", *predicted})
    if clash:
        raise ColumnError(f"monitor: feature(s) {clash} have the names of prediction columns", hint="rename them")
    measures = drift.current_measures(
        scored,
        profile,
        prediction=predicted,
        label=LABEL if use_labels else None,
        objective=objective,
        raw=raw,
    )
    return Batch(src, measures, said, objective)


def _vocabularies(b: Bundle) -> list[str]:
    """The categorical features whose categories are values of their source column: a column
    that a `categorical` op (or no op) last wrote. A hash bucket or a code computed otherwise has
    categories that are not source values, so a source value outside them is not "unseen"."""
    from dpipe.ops.encoding import Categorical

    written: dict[str, bool] = {}
    for op in b.pipeline.ops:
        for column in op.output_columns():
            written[column] = isinstance(op, Categorical)
    return [c for c in b.model_input.categorical if written.get(c, True)]


def _check_types(b: Bundle, meta: pd.DataFrame, uri: str) -> None:
    numbers = [c for c in b.model_input.features if c not in b.model_input.categorical]
    bad = {c: str(meta[c].dtype) for c in numbers if not pd.api.types.is_numeric_dtype(meta[c].dtype)}
    if bad:
        raise ColumnError(
            f"source: feature column(s) {bad} of {redact_url(uri)!r} are not numeric; the model was trained on numbers",
            hint="monitor data with the same column types the model was trained on",
        )


@dataclass(frozen=True)
class _Prepare:
    """Copies the categorical source columns (for unseen values) and adds the label, if used;
    unlike training, rows without a label are kept (they count for drift)."""

    #: Dask's key prefix for its tasks (its repr would make keys too long to spill to disk).
    __name__ = "dpipe-monitor-rows"

    raw: tuple[tuple[str, str], ...]
    column: str | None
    expr: str | None
    labels: bool

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = pdf.assign(**{copy: pdf[c] for c, copy in self.raw})
        if not self.labels:
            return out
        if self.column:
            y = pdf[self.column]
            y = y.astype("float32") if pd.api.types.is_bool_dtype(y.dtype) else y
            y = pd.to_numeric(y, errors="coerce").astype("float32")
        else:
            assert self.expr is not None
            e = Expression(self.expr, where="label.expr")
            y = pd.Series(e.evaluate(pdf), index=pdf.index).astype("float32")
            y = y.mask(pdf[sorted(e.columns)].isna().any(axis=1))
        out[LABEL] = y
        return out
