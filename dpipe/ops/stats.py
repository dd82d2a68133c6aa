"""Mergeable statistics: computed per partition, merged in a tree, never collecting raw rows."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import numpy as np
import pandas as pd

#: The ``method`` values of :func:`numpy.quantile`.
QuantileMethod: TypeAlias = Literal[
    "inverted_cdf",
    "averaged_inverted_cdf",
    "closest_observation",
    "interpolated_inverted_cdf",
    "hazen",
    "weibull",
    "linear",
    "median_unbiased",
    "normal_unbiased",
    "lower",
    "higher",
    "midpoint",
    "nearest",
]


def _chunk_moments(pdf: pd.DataFrame) -> pd.DataFrame:
    values = pdf.astype("float64")
    n = values.count()
    mean = values.mean()
    m2 = ((values - mean) ** 2).sum()
    return pd.DataFrame({"n": n.astype("float64"), "mean": mean.fillna(0.0), "m2": m2})


def _merge_moments(parts: pd.DataFrame) -> pd.DataFrame:
    # Chan et al.'s parallel variance: numerically stable, unlike sum/sum-of-squares.
    out = {}
    for column, group in parts.groupby(level=0, sort=False):
        # Empty parts carry mean NaN once merged (a combine over all-null partitions); 0 * NaN
        # would poison the total, so only parts that saw values take part.
        group = group[group["n"] > 0]
        n = group["n"].to_numpy()
        total = n.sum()
        if total == 0:
            out[column] = (0.0, np.nan, np.nan)
            continue
        mean = float((n * group["mean"].to_numpy()).sum() / total)
        m2 = float(group["m2"].sum() + (n * (group["mean"].to_numpy() - mean) ** 2).sum())
        out[column] = (float(total), mean, m2)
    return pd.DataFrame.from_dict(out, orient="index", columns=["n", "mean", "m2"])


def moments(df, columns: list[str]):
    """Lazy count, mean and sum of squared deviations (``m2``) of numeric columns, nulls skipped.

    The result (a pandas frame indexed by column) gives ``var = m2 / n`` (population variance).
    """
    meta = pd.DataFrame(
        {"n": pd.Series(dtype="float64"), "mean": pd.Series(dtype="float64"), "m2": pd.Series(dtype="float64")}
    )
    return df[list(columns)].reduction(
        chunk=_chunk_moments,
        combine=_merge_moments,
        aggregate=_merge_moments,
        meta=meta,
    )


def _chunk_min_max(pdf: pd.DataFrame) -> pd.DataFrame:
    values = pdf.astype("float64")
    return pd.DataFrame({"min": values.min(), "max": values.max()})


def _merge_min_max(parts: pd.DataFrame) -> pd.DataFrame:
    grouped = parts.groupby(level=0, sort=False)
    return pd.DataFrame({"min": grouped["min"].min(), "max": grouped["max"].max()})


def min_max(df, columns: list[str]):
    """Lazy minimum and maximum of numeric columns, nulls skipped.

    The result is a pandas frame indexed by column with ``min`` and ``max`` (NaN for a column
    without values).
    """
    meta = pd.DataFrame({"min": pd.Series(dtype="float64"), "max": pd.Series(dtype="float64")})
    return df[list(columns)].reduction(
        chunk=_chunk_min_max, combine=_merge_min_max, aggregate=_merge_min_max, meta=meta
    )


def value_counts(df, column: str):
    """Lazy frequency of every non-null value of ``column``."""
    return df[column].value_counts(dropna=True, split_out=1)


SKETCH_SIZE = 2048


def _compress(values: np.ndarray, weights: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Summarise weighted values by ``size`` evenly spaced (by weight) points."""
    order = np.argsort(values, kind="stable")
    values, weights = values[order], weights[order]
    if len(values) <= size:
        return values, weights
    cum = np.cumsum(weights)
    total = cum[-1]
    targets = (np.arange(size) + 0.5) * total / size
    idx = np.searchsorted(cum, targets)
    return values[idx], np.full(size, total / size)


def _chunk_sketch(series: pd.Series) -> pd.DataFrame:
    # Unit weights: `_compress` without the stable argsort and the gathers it needs (a plain sort
    # is 2.5x faster on 130k floats); the points are the same, for equal values are equal.
    # NumPy floats are sorted as they are (float32 sorts twice as fast as float64, and widening
    # the picked points changes no value), missing values last, never copied out first.
    values = series.to_numpy()
    if values.dtype.kind != "f":
        values = series.to_numpy(dtype="float64", na_value=np.nan)
    values = np.sort(values)
    n = int(np.searchsorted(values, np.nan)) if len(values) and np.isnan(values[-1]) else len(values)
    if n <= SKETCH_SIZE:
        return pd.DataFrame({"value": values[:n].astype("float64"), "weight": np.ones(n)})
    # The order statistics of ranks just above each target: ``searchsorted(arange(1, n + 1),
    # targets)`` without its n-long array.
    targets = (np.arange(SKETCH_SIZE) + 0.5) * n / SKETCH_SIZE
    idx = np.ceil(targets).astype(np.intp) - 1
    return pd.DataFrame({"value": values[idx].astype("float64"), "weight": np.full(SKETCH_SIZE, n / SKETCH_SIZE)})


def _merge_sketch(parts: pd.DataFrame) -> pd.DataFrame:
    v, w = _compress(parts["value"].to_numpy(), parts["weight"].to_numpy(), SKETCH_SIZE)
    return pd.DataFrame({"value": v, "weight": w})


def quantile_sketch(df, column: str):
    """Lazy weighted-sample sketch of ``column`` (at most 2048 points, exact below that).

    Each partition keeps evenly spaced order statistics; merges re-compress, so the rank error
    stays within about 1/2048 of the data whatever the number of partitions.
    """
    meta = pd.DataFrame({"value": pd.Series(dtype="float64"), "weight": pd.Series(dtype="float64")})
    return df[column].reduction(chunk=_chunk_sketch, combine=_merge_sketch, aggregate=_merge_sketch, meta=meta)


def quantile_sketches(df, columns: list[str]):
    """Lazy :func:`quantile_sketch` of each of ``columns`` in ONE reduction (a task per partition,
    not one per partition and column); :func:`split_sketches` gives each column's sketch."""
    meta = pd.DataFrame(
        {"column": pd.Series(dtype=object), "value": pd.Series(dtype="float64"), "weight": pd.Series(dtype="float64")}
    )
    return df[list(columns)].reduction(
        chunk=_chunk_sketches, combine=_merge_sketches, aggregate=_merge_sketches, meta=meta
    )


def split_sketches(sketches: pd.DataFrame, columns: list[str]) -> dict[str, pd.DataFrame]:
    """Each column's sketch (``value``, ``weight``) of computed :func:`quantile_sketches`."""
    empty = pd.DataFrame({"value": pd.Series(dtype="float64"), "weight": pd.Series(dtype="float64")})
    groups = {c: g[["value", "weight"]].reset_index(drop=True) for c, g in sketches.groupby("column", sort=False)}
    return {c: groups.get(c, empty) for c in columns}


def _chunk_sketches(pdf: pd.DataFrame) -> pd.DataFrame:
    parts = [_chunk_sketch(pdf[c]).assign(column=c) for c in pdf.columns]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["column", "value", "weight"])


def _merge_sketches(parts: pd.DataFrame) -> pd.DataFrame:
    merged = [_merge_sketch(g).assign(column=c) for c, g in parts.groupby("column", sort=False)]
    return pd.concat(merged, ignore_index=True) if merged else parts


def sketch_quantile(sketch: pd.DataFrame, q: float, *, method: QuantileMethod = "linear") -> float | None:
    """The ``q`` quantile of a computed sketch, computed like ``numpy.quantile(..., method=method)``.

    ``method`` is exact while the sketch holds every value (fewer than 2048 of them); past that,
    every method reads the same interpolated sketch (the difference is below its rank error).
    """
    if sketch.empty:
        return None
    values = sketch["value"].to_numpy()
    weights = sketch["weight"].to_numpy()
    if np.all(weights == 1.0):
        return float(np.quantile(values, q, method=method))
    # Each point stands for `weight` rows centred on its position in the cumulative weight.
    centres = (np.cumsum(weights) - weights / 2) / weights.sum()
    return float(np.interp(q, centres, values))


# -- merging computed statistics ---------------------------------------------------------------
# What an incremental run needs: the statistics of earlier rows (saved, computed) merged with
# those of new rows give what one fit over all of them gives: exactly for counts, sums and
# moments (up to float rounding), within the sketch's rank error for quantiles.
def merge_moments(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Merge computed :func:`moments` (Chan et al.'s parallel update, as the fit's own tree does)."""
    return _merge_moments(pd.concat(parts))


def merge_min_max(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Merge computed :func:`min_max`."""
    return _merge_min_max(pd.concat(parts))


def merge_sketch(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Merge computed :func:`quantile_sketch` (re-compressed to at most 2048 points)."""
    return _merge_sketch(pd.concat(parts, ignore_index=True))


def merge_sums(parts: list[Any]) -> Any:
    """Merge computed counts or sums indexed by value (``value_counts``, group-by ``sum``/``count``/``size``)."""
    return _by_index(parts, "sum")


def merge_minimum(parts: list[Any]) -> Any:
    """Merge computed group-by minimums."""
    return _by_index(parts, "min")


def merge_maximum(parts: list[Any]) -> Any:
    """Merge computed group-by maximums."""
    return _by_index(parts, "max")


def _by_index(parts: list[Any], how: str) -> Any:
    kept = [p for p in parts if len(p)] or parts[:1]
    # Categorical indexes of two runs have other categories: merge them as plain values.
    kept = [p.set_axis(_plain_index(p.index)) for p in kept]
    joined = pd.concat(kept)
    levels = list(range(joined.index.nlevels))
    merged = getattr(joined.groupby(level=levels if len(levels) > 1 else 0, sort=False, dropna=False), how)()
    return merged.rename(parts[0].name) if isinstance(merged, pd.Series) else merged


def _plain_index(index: pd.Index) -> pd.Index:
    if isinstance(index, pd.MultiIndex):
        return pd.MultiIndex.from_arrays(
            [_plain_index(index.get_level_values(i)) for i in range(index.nlevels)], names=index.names
        )
    if isinstance(index.dtype, pd.CategoricalDtype):
        return pd.Index(index.astype(index.dtype.categories.dtype), name=index.name)
    return index


# -- statistics of filled values, from those of the values before the fill ---------------------
# A fill replaces each missing value of a column by one constant. What a scaler then learns from
# the filled column follows from what it would learn from the column before the fill, the number
# of missing values and the constant, so a scaler after a fill needs no pass of its own
# (:meth:`dpipe.pipeline.FeaturePipeline.fit` fits both in one).
def missing(df, columns: list[str]):
    """Lazy number of missing values of each column (a Series indexed by column)."""
    return df[list(columns)].isna().sum()


def _filled_moments(stat: pd.DataFrame, fills: dict[str, tuple[float, float]]) -> pd.DataFrame:
    # Chan et al.'s update with a group of `count` values equal to the constant (its m2 is 0).
    out = stat.copy()
    for column, (value, count) in fills.items():
        if column in out.index and count > 0:
            parts = pd.DataFrame(
                {
                    "n": [out.loc[column, "n"], count],
                    "mean": [out.loc[column, "mean"], value],
                    "m2": [out.loc[column, "m2"], 0.0],
                },
                index=[column, column],
            )
            out.loc[column] = _merge_moments(parts).loc[column]
    return out


def _filled_min_max(stat: pd.DataFrame, fills: dict[str, tuple[float, float]]) -> pd.DataFrame:
    out = stat.copy()
    for column, (value, count) in fills.items():
        if column in out.index and count > 0:
            out.loc[column, "min"] = np.fmin(out.loc[column, "min"], value)
            out.loc[column, "max"] = np.fmax(out.loc[column, "max"], value)
    return out


def _filled_sketch(stat: pd.DataFrame, value: float, count: float) -> pd.DataFrame:
    if count <= 0:
        return stat
    total = stat["weight"].sum() + count
    if total <= SKETCH_SIZE:
        # Still exact: the constant as that many unit-weight values, as a sketch of the filled
        # column would hold them.
        extra = pd.DataFrame({"value": np.full(int(count), value), "weight": np.ones(int(count))})
    else:
        extra = pd.DataFrame({"value": [value], "weight": [float(count)]})
    return _merge_sketch(pd.concat([stat, extra], ignore_index=True))


def filled(merge: Any, key: str, stat: Any, fills: dict[str, tuple[float, float]]) -> Any:
    """A computed statistic of columns before a fill made into the same statistic of the filled
    columns; ``fills`` maps a filled column to (the constant as the column stores it, the number
    of values filled). ``merge`` is the statistic's merge function (an op's ``merges``), which
    names its kind; ``key`` is its name (``sketch:income``). Returns ``None`` for a kind it cannot
    adjust."""
    if merge is merge_moments:
        return _filled_moments(stat, fills)
    if merge is merge_min_max:
        return _filled_min_max(stat, fills)
    if merge is merge_sketch:
        column = key.split(":", 1)[1] if ":" in key else None
        if column not in fills:
            return stat
        return _filled_sketch(stat, *fills[column])
    return None


def can_fill(merge: Any) -> bool:
    """Whether :func:`filled` adjusts statistics merged by ``merge``."""
    return merge is merge_moments or merge is merge_min_max or merge is merge_sketch
