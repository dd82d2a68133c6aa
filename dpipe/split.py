"""The split: which side (train, validation, test) and which cross-validation fold each row is on.

A :class:`Splitter` is resolved from the ``split:`` section once per run (:func:`resolve`: a time
split by fractions of the time range measures the range first) and then decides every row alone,
in its partition, so the same row lands on the same side on every run whatever the file order:

- ``random``: a SplitMix64 mix of the row's hash (its ``key`` columns) and the seed, read as a
  number ``u`` in [0, 1): test when ``u < test_fraction``, validation when below
  ``test_fraction + valid_fraction``, else train. Without a test side this is the split dpipe
  always made, so earlier models are reproduced bit for bit.
- ``group``: the same, hashing the group ``key`` alone: a group never straddles two sides.
- ``time``: ``column < valid_from`` trains, ``valid_from <= column < test_from`` validates, the rest
  tests. Rows without a time have no side and are dropped (counted as ``dropped_missing_time``).

Folds (``folds: k``) divide the training rows: by hash (random, group: ``fold i`` validates on
``cv == i``), or by time into ``k + 1`` equal periods (an expanding window: fold ``i`` trains on
periods ``0..i`` and validates on period ``i + 1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from dpipe.columns import CV_FOLD, SIDE, TEST, TRAIN, VALID
from dpipe.errors import ColumnError, DataError

#: The side of a row without a value in the time column: dropped before the fit.
NO_SIDE = -1
SIDE_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}


@dataclass(frozen=True)
class Splitter:
    """The resolved ``split:`` section (time cuts as timestamps, fold boundaries measured)."""

    by: str = "random"
    key: tuple[str, ...] = ()
    valid_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0
    column: str | None = None
    valid_from: pd.Timestamp | None = None
    test_from: pd.Timestamp | None = None
    folds: int | None = None
    #: ``by: time`` with folds: the ``k`` inner boundaries of the ``k + 1`` training periods.
    fold_edges: tuple[pd.Timestamp, ...] = ()
    #: ``by: time`` by fractions, or time folds: set once :func:`resolve` measured the range.
    needs_range: bool = False

    @classmethod
    def from_spec(cls, spec: Any, key: list[str]) -> Splitter:
        """From a validated :class:`~dpipe.spec.SplitSpec`; ``key``: the hashed columns."""
        return cls(
            by=spec.by,
            key=tuple(key),
            valid_fraction=spec.valid_fraction or 0.0,
            test_fraction=spec.test_fraction,
            seed=spec.seed,
            column=spec.column,
            valid_from=None if spec.valid_from is None else pd.Timestamp(spec.valid_from),
            test_from=None if spec.test_from is None else pd.Timestamp(spec.test_from),
            folds=spec.folds,
            needs_range=spec.needs_range,
        )

    @property
    def has_test(self) -> bool:
        return self.test_fraction > 0 or self.test_from is not None

    @property
    def inputs(self) -> set[str]:
        return {self.column} if self.by == "time" and self.column else set(self.key)

    def check_column(self, meta: pd.DataFrame) -> None:
        """A time split's column must be a date-time (checked on the schema, before any read)."""
        if self.by != "time":
            return
        assert self.column is not None
        if self.column not in meta.columns:
            raise ColumnError(
                f"split.column: {self.column!r} not found in the source; available: {list(meta.columns)}",
                hint="name the date-time column to split on",
            )
        if not pd.api.types.is_datetime64_any_dtype(meta[self.column].dtype):
            raise ColumnError(
                f"split.column: {self.column!r} is {meta[self.column].dtype}, not a date-time",
                hint="split on a timestamp column of the source (the split is made before the feature ops)",
            )

    # -- per row ---------------------------------------------------------------------------
    def mixed(self, pdf: pd.DataFrame) -> np.ndarray:
        """The row hash of the key columns, mixed with the seed (uniform 64-bit numbers)."""
        key = pdf[list(self.key)]
        # pandas hashes the bits of a value, so 5 (int64) and 5.0 (float64) differ; pyarrow gives an
        # integer column float64 in a file where it has a missing value. Hash numbers as float64.
        key = key.astype({c: "float64" for c in key.columns if pd.api.types.is_numeric_dtype(key[c].dtype)})
        return mix(pd.util.hash_pandas_object(key, index=False).to_numpy(), self.seed)

    def sides(self, pdf: pd.DataFrame, mixed: np.ndarray | None) -> dict[str, np.ndarray]:
        """The side of every row (``SIDE``) and, with folds, its fold (``CV_FOLD``)."""
        if self.by == "time":
            return self._by_time(pdf)
        assert mixed is not None
        u = (mixed >> np.uint64(11)).astype("float64") / float(1 << 53)
        side = np.where(
            u < self.test_fraction, TEST, np.where(u < self.test_fraction + self.valid_fraction, VALID, TRAIN)
        ).astype("int8")
        out = {SIDE: side}
        if self.folds:
            # Bits of a second mix: independent of the ones that chose the side.
            out[CV_FOLD] = (mix(mixed, self.seed + 1) % np.uint64(self.folds)).astype("int8")
        return out

    def _by_time(self, pdf: pd.DataFrame) -> dict[str, np.ndarray]:
        t = pdf[self.column]
        side = np.full(len(pdf), TRAIN, dtype="int8")
        if self.valid_from is not None:
            side[(t >= _like(self.valid_from, t)).to_numpy(dtype=bool, na_value=False)] = VALID
        if self.test_from is not None:
            side[(t >= _like(self.test_from, t)).to_numpy(dtype=bool, na_value=False)] = TEST
        side[t.isna().to_numpy()] = NO_SIDE
        out = {SIDE: side}
        if self.folds:
            utc = getattr(t.dtype, "tz", None) is not None
            values = (t.dt.tz_convert("UTC").dt.tz_localize(None) if utc else t).to_numpy(dtype="datetime64[ns]")
            cuts = [_like(e, t) for e in self.fold_edges]
            edges = np.array(
                [c.tz_convert("UTC").tz_localize(None) if utc else c for c in cuts], dtype="datetime64[ns]"
            )
            out[CV_FOLD] = np.searchsorted(edges, values, side="right").astype("int8")
        return out

    # -- describing ------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What the manifest records: the resolved split, with its time cuts."""
        out: dict[str, Any] = {"by": self.by}
        if self.by == "time":
            out.update(
                column=self.column,
                valid_from=_text(self.valid_from),
                test_from=_text(self.test_from),
            )
            if self.fold_edges:
                out["fold_edges"] = [_text(e) for e in self.fold_edges]
        else:
            out.update(key=list(self.key), valid_fraction=self.valid_fraction, test_fraction=self.test_fraction)
        if self.folds:
            out["folds"] = self.folds
        return out


def mix(h: np.ndarray, seed: int) -> np.ndarray:
    """SplitMix64 finaliser over ``hash + seed``: pandas' row hash ignores its key for numbers."""
    z = h + np.uint64((seed * 0x9E3779B97F4A7C15) % (1 << 64))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _like(ts: pd.Timestamp, column: pd.Series) -> pd.Timestamp:
    """``ts`` comparable with ``column``: a naive cut on a zoned column means that zone's clock."""
    tz = getattr(column.dtype, "tz", None)
    if tz is not None and ts.tzinfo is None:
        return ts.tz_localize(tz)
    if tz is None and ts.tzinfo is not None:
        return ts.tz_convert("UTC").tz_localize(None)
    return ts


def _aligned(ts: pd.Timestamp, ref: pd.Timestamp) -> pd.Timestamp:
    """``ts`` comparable with ``ref`` (as :func:`_like` does for a column)."""
    if ref.tzinfo is not None and ts.tzinfo is None:
        return ts.tz_localize(ref.tzinfo)
    if ref.tzinfo is None and ts.tzinfo is not None:
        return ts.tz_convert("UTC").tz_localize(None)
    return ts


def _text(ts: pd.Timestamp | None) -> str | None:
    return None if ts is None else ts.isoformat()


# -- resolving fractions of the time range -----------------------------------------------------
def range_measures(splitter: Splitter, frame: Any) -> dict[str, Any]:
    """Lazy min and max of the time column (only a split by fractions of the range needs them)."""
    if not splitter.needs_range:
        return {}
    t = frame[splitter.column]
    return {"min": t.min(), "max": t.max()}


def resolve(splitter: Splitter, values: Mapping[str, Any]) -> Splitter:
    """Turn fractions of the time range (and time folds) into timestamps, from the measured range."""
    if not splitter.needs_range:
        return splitter
    lo, hi = values["min"], values["max"]
    if pd.isna(lo) or pd.isna(hi) or lo == hi:
        raise DataError(
            f"split.column: {splitter.column!r} has no time range to split (earliest {lo}, latest {hi})",
            hint="split on a column with more than one point in time, or use `by: random`",
        )
    lo, hi = pd.Timestamp(lo), pd.Timestamp(hi)
    span = hi - lo

    def at(fraction: float) -> pd.Timestamp:
        return lo + span * fraction

    test_from = splitter.test_from
    if splitter.test_fraction:
        test_from = at(1.0 - splitter.test_fraction)
    valid_from = splitter.valid_from
    if valid_from is None and not splitter.folds:
        valid_from = at(1.0 - splitter.test_fraction - splitter.valid_fraction)
    edges: tuple[pd.Timestamp, ...] = ()
    if splitter.folds:
        end = _aligned(test_from, lo) if test_from is not None else hi
        k = splitter.folds
        edges = tuple(lo + (end - lo) * (j / (k + 1)) for j in range(1, k + 1))
    return replace(splitter, valid_from=valid_from, test_from=test_from, fold_edges=edges, needs_range=False)
