"""Spec models of the categorical encoders (:mod:`dpipe.ops.encoding`, :mod:`dpipe.ops.target`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from dpipe.spec.base import Strict
from dpipe.spec.features.base import ColumnList, unique


class Categorical(Strict):
    """Encode string/integer columns as categories learned at fit time.

    Categories seen fewer than ``min_frequency`` times, beyond ``max_categories`` most frequent,
    or unseen at fit time become missing (XGBoost routes missing values down a learned branch),
    so prediction on new data never fails on a new value; with ``unknown: bucket`` they all go to one
    out-of-vocabulary category instead (``"__other__"``, or code ``len(vocabulary)``).
    ``encoding: category`` feeds XGBoost's native categorical support; ``encoding: ordinal``
    emits float codes (-1 is never used: unknown is NaN).

    Example: ``{op: categorical, columns: [country, device], min_frequency: 10}``
    """

    op: Literal["categorical"]
    columns: ColumnList
    min_frequency: int = Field(default=1, ge=1)
    max_categories: int | None = Field(default=None, ge=1)
    encoding: Literal["category", "ordinal"] = "category"
    unknown: Literal["missing", "bucket"] = "missing"

    _check_unique = field_validator("columns")(unique)


class OneHot(Strict):
    """One 0/1 float column per frequent value of a low-cardinality column.

    The vocabulary (at most ``max_categories`` values seen at least ``min_frequency`` times) is
    learned at fit time; columns are named ``{column}_{value}`` in sorted value order, and with
    ``other: true`` a ``{column}_other`` column flags values outside it (unseen or rare). A missing
    value sets no column. The source column is replaced by its indicator columns.

    Example: ``{op: one_hot, columns: [origin], max_categories: 10}``
    """

    op: Literal["one_hot"]
    columns: ColumnList
    min_frequency: int = Field(default=1, ge=1)
    max_categories: int = Field(default=20, ge=1, le=1000)
    other: bool = True

    _check_unique = field_validator("columns")(unique)


class HashBucket(Strict):
    """Hash values into ``n_buckets`` buckets (a stable hash of their text), for columns with too
    many values for a vocabulary.

    Example: ``{op: hash_bucket, columns: [user_agent], n_buckets: 1024}``
    """

    op: Literal["hash_bucket"]
    columns: ColumnList
    n_buckets: int = Field(default=1024, ge=2)
    encoding: Literal["category", "ordinal"] = "category"

    _check_unique = field_validator("columns")(unique)


class TargetEncode(Strict):
    """Replace a category by the smoothed mean of the label over the training rows.

    ``encoded = (sum_label + smooth * prior) / (count + smooth)``. Training rows get out-of-fold
    values (statistics of the other ``folds`` folds only), so no row sees its own label; validation
    rows and prediction use the statistics of all training rows. Unseen or missing values get the
    prior (the label mean). Binary and regression labels only.

    Example: ``{op: target_encode, columns: [dest], smooth: 20}``
    """

    op: Literal["target_encode"]
    columns: ColumnList
    smooth: float = Field(default=10.0, ge=0.0)
    folds: int = Field(default=5, ge=2, le=10)

    _check_unique = field_validator("columns")(unique)
