"""A bundle's metrics on rows it never saw: the promotion gate's evaluation source.

:func:`score_bundle` labels the source as the bundle's job did, applies exactly the saved
transforms, scores the rows and computes the job's metrics exactly (:mod:`dpipe.metrics`), in one
pass. Scoring two bundles on the same source gives them the same rows, so their scores compare.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dpipe import cluster as _cluster
from dpipe import metrics
from dpipe.bundle import Bundle
from dpipe.errors import ColumnError, DataError, SpecError
from dpipe.plan import table_opener
from dpipe.progress import Reporter
from dpipe.spec.source import BaseSourceSpec, source_of
from dpipe.split import Splitter
from dpipe.train import Labeler, Labels, predict_frame


def score_bundle(
    bundle_uri: str,
    source: str | Mapping[str, Any] | BaseSourceSpec,
    *,
    storage_options: dict | None = None,
    client: Any = None,
    scheduler: str | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, float | None]:
    """The metrics of the bundle at ``bundle_uri`` on ``source`` (a path, URL or source entry).

    ``names`` default to the metrics the bundle was validated with (its ``train.eval_metric``).
    Rows without a label are left out, as training leaves them out.

    Examples
    --------
    >>> score_bundle("registry/churn/versions/3", "lake/holdout")
    {'logloss': 0.43, 'auc': 0.79}
    """
    from dpipe.runner import prediction_source

    b = Bundle.load(bundle_uri, storage_options)
    labeler = _labeler(b, bundle_uri)
    spec = source_of(source)
    opened = prediction_source(b, spec, [], storage_options, also=sorted(labeler.label_inputs), where="the label")
    objective = str(((b.manifest.get("spec") or {}).get("train") or {}).get("objective", "binary:logistic"))
    chosen = [n for n in (names or b.metrics.get("valid", {})) if metrics.lookup(n) is not None]
    metrics.check(chosen, objective, where="score")
    labeled = opened.frame.map_partitions(Labels(labeler), meta=Labels(labeler)(opened.frame._meta))
    preds = predict_frame(b.booster, b.pipeline.transform(labeled), b.model_input, ["label"])
    lazy = {"rows": preds["label"].count(), "metrics": metrics.measures(preds, chosen, objective=objective)}
    with _cluster.connect(None, client=client, address=scheduler) as connected:
        (values,) = Reporter(progress=False).compute(connected)(lazy)
    if int(values["rows"]) == 0:
        raise DataError(
            f"score: {spec.uri!r} has no labeled rows to score {bundle_uri!r} on",
            hint="name an evaluation source with the label's columns filled in",
        )
    return metrics.finish(values["metrics"], chosen)


def _labeler(b: Bundle, uri: str) -> Labeler:
    """The bundle's job's label, without its split (every labeled row is scored)."""
    label = (b.manifest.get("spec") or {}).get("label") or {}
    if label.get("join"):
        raise SpecError(
            f"score: the label of {uri!r} comes from a joined table (`label.join`), which scoring does not read",
            hint="score on a source that holds the label column itself",
        )
    if not (label.get("column") or label.get("expr")):
        raise ColumnError(f"score: the manifest of {uri!r} names no label", hint="score a bundle written by dpipe run")
    b.pipeline.bind(table_opener())
    return Labeler(column=label.get("column"), expr=label.get("expr"), splitter=Splitter())
