"""Spec models of the scaling ops (:mod:`dpipe.ops.scaling`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from dpipe.spec.base import Strict
from dpipe.spec.features.base import ColumnList, bounds, unique


class StandardScale(Strict):
    """Center to mean 0 and scale to standard deviation 1 (population std, like scikit-learn).

    Example: ``{op: standard_scale, columns: [age, income]}``
    """

    op: Literal["standard_scale"]
    columns: ColumnList
    with_mean: bool = True
    with_std: bool = True

    _check_unique = field_validator("columns")(unique)


class MinMaxScale(Strict):
    """Scale to ``feature_range`` with the training rows' min and max (as scikit-learn).

    Example: ``{op: minmax_scale, columns: [age], feature_range: [0, 1]}``
    """

    op: Literal["minmax_scale"]
    columns: ColumnList
    feature_range: list[float] = Field(default_factory=lambda: [0.0, 1.0])

    _check_unique = field_validator("columns")(unique)

    @field_validator("feature_range")
    @classmethod
    def _check_range(cls, pair):
        return bounds(pair, "feature_range", float("-inf"), float("inf"))


class RobustScale(Strict):
    """``(x - median) / IQR`` with quantiles of the training rows (as scikit-learn's RobustScaler).

    Example: ``{op: robust_scale, columns: [income], quantile_range: [25, 75]}``
    """

    op: Literal["robust_scale"]
    columns: ColumnList
    quantile_range: list[float] = Field(default_factory=lambda: [25.0, 75.0])
    with_centering: bool = True
    with_scaling: bool = True

    _check_unique = field_validator("columns")(unique)

    @field_validator("quantile_range")
    @classmethod
    def _check_range(cls, pair):
        return bounds(pair, "quantile_range", 0.0, 100.0)
