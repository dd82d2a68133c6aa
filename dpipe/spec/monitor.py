"""The ``monitor:`` section: when a batch of new data has drifted from a model's training data.

``dpipe monitor BUNDLE --source NEW`` (:mod:`dpipe.monitor`) compares the batch with the reference
profile stored in the bundle (``profile.json``) and crosses a threshold when a statistic passes
its limit; ``null`` turns a statistic off::

    monitor:
      thresholds:
        psi: 0.2               # per feature, population stability index over fixed bins
        js: null               # per feature, Jensen-Shannon distance (base 2, 0..1)
        ks: null               # numeric features, Kolmogorov-Smirnov statistic (0..1)
        missing_rate: 0.1      # per feature, change of the fraction of missing values (absolute)
        unseen_rate: 0.05      # categorical features, fraction of rows with a value the model has no category for
        prediction_psi: 0.2    # the model's predictions, against those on the validation rows
        prediction_js: null
        metric_drop: 0.1       # with labels: relative worsening of a validation metric (0.1 = 10% worse)
      ignore: [date_of_birth]  # features never judged (still reported)
      retrain: jobs/churn.yaml # the training job `dpipe monitor --retrain` runs when a threshold is crossed

Imports neither Dask nor pandas.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from dpipe.spec.base import Strict

Limit = float | None


class ThresholdsSpec(Strict):
    """The limit of each drift statistic; a statistic at or above its limit crosses it."""

    psi: Limit = Field(default=0.2, ge=0)
    js: Limit = Field(default=None, ge=0, le=1)
    ks: Limit = Field(default=None, ge=0, le=1)
    missing_rate: Limit = Field(default=0.1, ge=0, le=1)
    unseen_rate: Limit = Field(default=0.05, ge=0, le=1)
    prediction_psi: Limit = Field(default=0.2, ge=0)
    prediction_js: Limit = Field(default=None, ge=0, le=1)
    metric_drop: Limit = Field(default=0.1, ge=0)

    def active(self) -> dict[str, float]:
        """The statistics that are judged, with their limits."""
        return {name: value for name, value in self.model_dump().items() if value is not None}


class MonitorSpec(Strict):
    """What ``dpipe monitor`` judges, and what it does when a threshold is crossed."""

    thresholds: ThresholdsSpec = Field(default_factory=ThresholdsSpec)
    #: Features reported but never judged (an id-like feature expected to move).
    ignore: list[str] = Field(default_factory=list)
    #: A training job spec (YAML path) to run when a threshold is crossed.
    retrain: str | None = Field(default=None, min_length=1)

    def with_thresholds(self, changes: dict[str, Any]) -> MonitorSpec:
        """A copy with some limits replaced (validated like the YAML)."""
        data = self.model_dump()
        data["thresholds"] = {**data["thresholds"], **changes}
        return MonitorSpec.model_validate(data)
