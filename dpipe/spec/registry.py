"""The ``registry:`` key: a model registry on any fsspec URL, and its promotion gate.

::

    registry:
      uri: s3://ml/registry            # a local folder or any fsspec URL
      storage_options: {}              # credentials, endpoint (values are secrets)
      name: churn                      # optional: the model a training run registers as
      aliases: [challenger]            # optional: aliases the new version takes on registration
      gate:                            # optional: what `promote` must see to move `champion`
        metric: auc                    # compared on the same rows for candidate and champion
        margin: 0.002                  # the candidate must beat the champion by more than this
        direction: maximize            # default from the metric: auc maximize, logloss minimize
        source: {uri: data/holdout}    # the evaluation rows (a source entry)

Names of models and aliases are checked here (:data:`NAME_PATTERN`) so that a spec with a bad name
fails when it loads; :mod:`dpipe.registry` applies the same checks to names given in Python or on
the command line.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from dpipe.spec.base import Strict
from dpipe.spec.source import SourceSpec

#: A model or alias name: letters, digits, ``_``, ``-`` and ``.`` (not first), at most 128 characters.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Alias names that mean something else: a version number, or ``latest`` (the highest version).
RESERVED_ALIASES = ("latest",)

#: The direction of the metrics a gate knows by name (XGBoost's ``eval_metric`` names).
METRIC_DIRECTIONS: dict[str, Literal["maximize", "minimize"]] = {
    "auc": "maximize",
    "aucpr": "maximize",
    "pre": "maximize",
    "map": "maximize",
    "ndcg": "maximize",
    "accuracy": "maximize",
    "precision": "maximize",
    "recall": "maximize",
    "f1": "maximize",
    "r2": "maximize",
    "logloss": "minimize",
    "mlogloss": "minimize",
    "error": "minimize",
    "merror": "minimize",
    "rmse": "minimize",
    "rmsle": "minimize",
    "mae": "minimize",
    "mape": "minimize",
    "mphe": "minimize",
    "poisson-nloglik": "minimize",
    "gamma-nloglik": "minimize",
    "tweedie-nloglik": "minimize",
}


def name_problem(value: str, what: str = "name") -> str | None:
    """Why ``value`` cannot be a model (``what="name"``) or alias (``what="alias"``) name, or ``None``."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value) or ".." in value:
        return (
            f"{what} {value!r} has characters that are not allowed; use letters, digits, '_', '-' and '.'"
            " (not first), at most 128 characters"
        )
    if what == "alias" and (value.isdigit() or value in RESERVED_ALIASES):
        return f"alias {value!r} is reserved (a version number, or `latest`: the highest version); choose another"
    return None


def default_direction(metric: str) -> Literal["maximize", "minimize"] | None:
    """The direction of a metric known by name (``auc``: maximize; ``logloss``, ``error@0.6``: minimize)."""
    return METRIC_DIRECTIONS.get(metric.split("@", 1)[0].lower())


class GateSpec(Strict):
    """What :meth:`dpipe.registry.Registry.promote` must see to move an alias.

    The candidate and the current holder of the alias are scored on the same rows (``source``);
    the alias moves only when the candidate's ``metric`` is better by more than ``margin`` in
    ``direction``. With no current holder the candidate is promoted.
    """

    metric: str = Field(min_length=1)
    margin: float = Field(default=0.0, ge=0.0)
    direction: Literal["maximize", "minimize"] | None = Field(default=None, validate_default=True)
    #: The evaluation rows (any source entry). Python callers may give ``scores`` instead.
    source: SourceSpec | None = None

    @field_validator("direction")
    @classmethod
    def _direction_from_metric(cls, direction: str | None, info: ValidationInfo) -> str | None:
        if direction is not None:
            return direction
        metric = info.data.get("metric")
        if metric is None:  # the metric's own error is reported
            return None
        known = default_direction(metric)
        if known is None:
            raise ValueError(
                f"`direction` (maximize or minimize) is required for metric {metric!r}; it is known by name"
                f" only for {sorted(METRIC_DIRECTIONS)}"
            )
        return known


class RegistrySpec(Strict):
    """A model registry: where it is, and optionally how a job's runs enter it (see the module docstring)."""

    uri: str = Field(min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    #: The model name a training run's bundle is registered as (none: runs are not registered).
    name: str | None = None
    #: Aliases the new version takes when it is registered (e.g. ``challenger``).
    aliases: list[str] = Field(default_factory=list)
    gate: GateSpec | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str | None) -> str | None:
        problem = None if name is None else name_problem(name, "name")
        if problem:
            raise ValueError(problem)
        return name

    @field_validator("aliases")
    @classmethod
    def _check_aliases(cls, aliases: list[str]) -> list[str]:
        problems = [p for p in (name_problem(a, "alias") for a in aliases) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return aliases
