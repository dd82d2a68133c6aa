"""What a report shows of one bundle, read once: its JSON files, the model's importance, lineage.

:func:`load_view` reads a committed bundle from any fsspec URL; :func:`view_of` builds the same
from a training run's objects before the bundle is committed (the run writes ``report.html`` into
its staged output). A file an older bundle lacks (``evaluation.json``) or one that cannot be read
is left out and named in :attr:`BundleView.missing`: the report says what it could not show.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dpipe.bundle import MANIFEST, METRICS, MODEL, PIPELINE, read_files
from dpipe.errors import BundleError, DpipeError
from dpipe.evaluation import EVALUATION
from dpipe.io.fs import resolve, storage_errors
from dpipe.spec.base import redact_url

_logger = logging.getLogger(__name__)
#: A tuned run's trials (written by :func:`dpipe.stages.write`).
TUNING = "tuning.json"
#: XGBoost importance types shown, as ``Booster.get_score`` names them.
IMPORTANCE_TYPES = ("total_gain", "total_cover")


@dataclass(frozen=True)
class BundleView:
    """The parts of a bundle a report draws; ``None`` where the bundle has no such part."""

    uri: str
    manifest: Mapping[str, Any]
    metrics: Mapping[str, Any] | None = None
    pipeline: Mapping[str, Any] | None = None
    evaluation: Mapping[str, Any] | None = None
    #: ``{"total_gain": {feature: value}, "total_cover": {...}}`` from the booster.
    importance: Mapping[str, Mapping[str, float]] | None = None
    #: The tree of :func:`dpipe.lineage.lineage_tree`, for a committed bundle.
    lineage: Mapping[str, Any] | None = None
    #: ``tuning.json`` of a tuned run: the study, the best trial, every trial.
    tuning: Mapping[str, Any] | None = None
    #: One sentence per part that could not be shown, and why.
    missing: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return str(self.manifest.get("job") or self.uri.rstrip("/").rsplit("/", 1)[-1])

    @property
    def objective(self) -> str | None:
        spec = self.manifest.get("spec") or {}
        return (spec.get("train") or {}).get("objective") or (self.evaluation or {}).get("objective")


def load_view(uri: str, storage_options: dict | None = None, *, lineage: bool = True) -> BundleView:
    """Read what the report needs of the committed bundle at ``uri``.

    Raises :class:`~dpipe.errors.BundleError` when ``uri`` is not a bundle (no manifest);
    every other file may be missing or unreadable, and is then named in ``missing``.
    """
    shown = redact_url(uri)
    manifest = _json(read_files(uri, storage_options, (MANIFEST,))[MANIFEST], MANIFEST, shown)
    fs, path = resolve(uri, storage_options, where="report")
    path = path.rstrip("/")
    missing: list[str] = []

    def optional(name: str, why_missing: str) -> bytes | None:
        with storage_errors("report", shown):
            try:
                return fs.cat_file(f"{path}/{name}")
            except FileNotFoundError:
                missing.append(f"{name}: not in this bundle; {why_missing}")
                return None

    parts: dict[str, Any] = {}
    for name, why in (
        (METRICS, "no learning curves or training metrics"),
        (PIPELINE, "no fitted feature pipeline"),
        (
            EVALUATION,
            "no ROC, precision-recall, calibration, confusion matrix or per-slice metrics (the bundle was"
            " written by a dpipe without evaluation; train it again to get them)",
        ),
    ):
        raw = optional(name, why)
        if raw is not None:
            try:
                parts[name] = _json(raw, name, shown)
            except BundleError as exc:
                missing.append(f"{name}: unreadable ({exc.message})")
    tuning = None
    with storage_errors("report", shown):
        if fs.exists(f"{path}/{TUNING}"):  # only a tuned run has one: its absence is not a gap
            tuning = _json(fs.cat_file(f"{path}/{TUNING}"), TUNING, shown)
    model = optional(MODEL, "no feature importance")
    importance = None
    if model is not None:
        try:
            importance = importance_of(_booster(model))
        except Exception as exc:  # noqa: BLE001 - a model this XGBoost cannot load: say so, show the rest
            missing.append(f"{MODEL}: cannot be loaded ({type(exc).__name__}: {str(exc)[:200]}); no feature importance")
    tree = None
    if lineage:
        from dpipe.lineage import lineage_tree

        try:
            tree = lineage_tree(uri, storage_options=storage_options, format="bundle")
        except DpipeError as exc:
            _logger.debug("report: no lineage tree for %s: %s", shown, exc)
    return BundleView(
        uri=shown,
        manifest=manifest,
        metrics=parts.get(METRICS),
        pipeline=parts.get(PIPELINE),
        evaluation=parts.get(EVALUATION),
        importance=importance,
        lineage=tree,
        tuning=tuning,
        missing=tuple(missing),
    )


def view_of(
    uri: str,
    *,
    manifest: Mapping[str, Any],
    metrics: Mapping[str, Any] | None,
    pipeline: Mapping[str, Any] | None,
    evaluation: Mapping[str, Any] | None = None,
    booster: Any = None,
    tuning: Mapping[str, Any] | None = None,
) -> BundleView:
    """The view of a bundle still being written (a training run's report), from its objects."""
    missing = [] if evaluation is not None else [f"{EVALUATION}: this run evaluated nothing"]
    return BundleView(
        uri=redact_url(uri),
        manifest=manifest,
        metrics=metrics,
        pipeline=pipeline,
        evaluation=evaluation,
        importance=importance_of(booster) if booster is not None else None,
        tuning=tuning,
        missing=tuple(missing),
    )


def importance_of(booster: Any) -> dict[str, dict[str, float]]:
    """Total gain and total cover per feature, as XGBoost reports them (features never split on
    are absent)."""
    return {
        kind: {str(k): float(v) for k, v in booster.get_score(importance_type=kind).items()}
        for kind in IMPORTANCE_TYPES
    }


def _booster(raw: bytes) -> Any:
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    return booster


def _json(raw: bytes, name: str, uri: str) -> Any:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise BundleError(
            f"report: {name} of {uri!r} is not valid JSON ({str(exc).splitlines()[0][:200]})",
            hint="write the bundle again with `dpipe run`; do not edit the files of a bundle",
        ) from exc
    if not isinstance(value, dict):
        raise BundleError(f"report: {name} of {uri!r} is not a JSON object")
    return value
