"""The batch side: counts on a profile's fixed bins, one long frame per partition, summed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dpipe.drift.labels import FAMILIES, label_family
from dpipe.drift.profile import bin_counts
from dpipe.ops.base import plain
from dpipe.ops.encoding import OTHER, lookup, vocab_index

#: Unseen values kept as examples, per categorical feature.
EXAMPLES = 10
SEP = "\x1f"

# Each partition gives one long frame of counts: `key` says what is counted (group, item, field),
# `i` the bin, `value` an unseen category's text (else ""), `n` the count. Every partition lists
# every bin (zeros too), so the summed frame has them all.
_COUNTS_META = {"key": object, "i": "int64", "value": object, "n": "float64"}


def count_key(group: str, item: str, field: str) -> str:
    return SEP.join((group, item, field))


@dataclass(frozen=True)
class _Bins:
    """Counts of a numeric column on a profile's bins and fine bins, and its missing values."""

    group: str
    column: str
    edges: tuple[float, ...]
    ks_edges: tuple[float, ...]

    def count(self, pdf: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
        x = np.asarray(pdf[self.column].to_numpy(dtype="float32", na_value=np.nan), dtype="float64")
        missing = np.isnan(x)
        v = x[~missing]
        return [
            (count_key(self.group, self.column, "missing"), np.array([missing.sum()], dtype="float64")),
            (count_key(self.group, self.column, "bins"), bin_counts(v, None, np.array(self.edges))),
            (count_key(self.group, self.column, "ks"), bin_counts(v, None, np.array(self.ks_edges))),
        ]

    def examples(self, pdf: pd.DataFrame) -> list[tuple[str, pd.Series]]:
        return []


@dataclass(frozen=True)
class _Categories:
    """Counts of a categorical column's fitted categories, and of source values the model has no
    category for (``raw``: the source column, before the feature ops)."""

    column: str
    categories: tuple[Any, ...]
    raw: str | None

    def count(self, pdf: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
        s = pdf[self.column]
        if isinstance(s.dtype, pd.CategoricalDtype) and list(s.dtype.categories) == list(self.categories):
            codes = s.cat.codes.to_numpy()
        else:
            codes = lookup(s, vocab_index(list(self.categories)))
        out = [
            (count_key("feature", self.column, "missing"), np.array([(codes < 0).sum()], dtype="float64")),
            (
                count_key("feature", self.column, "categories"),
                np.bincount(codes[codes >= 0], minlength=len(self.categories)).astype("float64"),
            ),
        ]
        if self.raw is not None:
            out.append(
                (count_key("feature", self.column, "unseen"), np.array([self._unseen(pdf).sum()], dtype="float64"))
            )
        return out

    def _unseen(self, pdf: pd.DataFrame) -> np.ndarray:
        assert self.raw is not None
        raw = pdf[self.raw]
        vocabulary = [c for c in self.categories if c != OTHER]
        return (lookup(raw, vocab_index(vocabulary)) < 0) & raw.notna().to_numpy()

    def examples(self, pdf: pd.DataFrame) -> list[tuple[str, pd.Series]]:
        if self.raw is None:
            return []
        unseen = plain(pdf[self.raw])[self._unseen(pdf)]
        top = unseen.astype(str).value_counts().head(2 * EXAMPLES)
        return [(count_key("feature", self.column, "example"), top)]


@dataclass(frozen=True)
class _Labels:
    """Sums behind the metrics of the predictions against labels (see :data:`METRICS`)."""

    family: str
    prediction: tuple[str, ...]
    label: str

    def count(self, pdf: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
        y = pd.to_numeric(pdf[self.label], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        p = np.column_stack([pdf[c].to_numpy(dtype="float64", na_value=np.nan) for c in self.prediction])
        ok = ~np.isnan(y) & ~np.isnan(p).any(axis=1)
        y, p = y[ok], p[ok]
        sums = FAMILIES[self.family](y, p)
        return [
            (count_key("labels", self.family, name), np.atleast_1d(np.asarray(v, dtype="float64"))) for name, v in sums
        ]

    def examples(self, pdf: pd.DataFrame) -> list[tuple[str, pd.Series]]:
        return []


@dataclass(frozen=True)
class _Counter:
    """The partition function of :func:`current_measures`: every count of one partition."""

    items: tuple[Any, ...]

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        parts = [
            pd.DataFrame({"key": [count_key("rows", "", "rows")], "i": [0], "value": [""], "n": [float(len(pdf))]})
        ]
        for item in self.items:
            for key, counts in item.count(pdf):
                parts.append(
                    pd.DataFrame({"key": key, "i": np.arange(len(counts)), "value": "", "n": counts.astype("float64")})
                )
            for key, top in item.examples(pdf):
                if len(top):
                    parts.append(
                        pd.DataFrame(
                            {"key": key, "i": 0, "value": top.index.astype(object), "n": top.to_numpy("float64")}
                        )
                    )
        return pd.concat(parts, ignore_index=True).astype(_COUNTS_META)


def _sum_counts(parts: pd.DataFrame) -> pd.DataFrame:
    return parts.groupby(["key", "i", "value"], sort=False)["n"].sum().reset_index().astype(_COUNTS_META)


def current_measures(
    frame: Any,
    profile: Mapping[str, Any],
    *,
    prediction: str | Sequence[str] | None = None,
    label: str | None = None,
    objective: str | None = None,
    raw: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Lazy counts of a batch on the profile's fixed bins, in one tree reduction (one pass).

    ``frame`` holds the transformed feature columns and, by name, the ``prediction`` column(s),
    the ``label`` column (with ``objective``, the training objective: metrics are computed) and
    ``raw``: for a categorical feature, the column holding its source values (to count values
    the model has no category for). Keeping them all in one frame keeps the batch read once.
    Returns ``{"counts": lazy DataFrame}``; give its computed value to :func:`compare`.
    """
    items: list[Any] = []
    for name, feature in profile["features"].items():
        if feature["kind"] == "numeric":
            items.append(_Bins("feature", name, tuple(feature["edges"]), tuple(feature["ks_edges"])))
        else:
            items.append(_Categories(name, tuple(feature["categories"]), (raw or {}).get(name)))
    columns = [*profile["features"], *(raw or {}).values()]
    predicted = [prediction] if isinstance(prediction, str) else list(prediction or [])
    reference = (profile.get("prediction") or {}).get("columns", {})
    for c in predicted:
        if c in reference:
            items.append(_Bins("prediction", c, tuple(reference[c]["edges"]), tuple(reference[c]["ks_edges"])))
    family = label_family(objective) if label is not None and objective and predicted else None
    if family is not None and label is not None:
        items.append(_Labels(family, tuple(predicted), label))
        columns.append(label)
    columns += predicted
    counter = _Counter(tuple(items))
    selected = frame[list(dict.fromkeys(columns))]
    meta = pd.DataFrame({k: pd.Series(dtype=v) for k, v in _COUNTS_META.items()})
    return {"counts": selected.reduction(chunk=counter, combine=_sum_counts, aggregate=_sum_counts, meta=meta)}
