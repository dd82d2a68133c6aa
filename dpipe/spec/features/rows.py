"""Spec models of the row filter and derived columns (:mod:`dpipe.ops.rows`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from dpipe.expr import check_expression
from dpipe.spec.base import Strict
from dpipe.spec.features.base import not_reserved_name


class FilterRows(Strict):
    """Keep the rows where an expression is true (missing counts as false).

    Example: ``{op: filter, expr: "amount > 0 and country != 'XX'"}``
    """

    op: Literal["filter"]
    expr: str = Field(min_length=1)

    _check_expr = field_validator("expr")(check_expression)


class Derive(Strict):
    """Add (or replace) a column computed from an expression over other columns.

    Example: ``{op: derive, name: ratio, expr: "debt / (income + 1)"}``
    """

    op: Literal["derive"]
    name: str = Field(min_length=1)
    expr: str = Field(min_length=1)

    _check_expr = field_validator("expr")(check_expression)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        return not_reserved_name(name)
