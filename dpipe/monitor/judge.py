"""The thresholds judged: where each statistic of a drift report is read, and what crosses."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dpipe.spec.monitor import MonitorSpec, ThresholdsSpec


@dataclass(frozen=True)
class Statistic:
    """Where a threshold of :class:`~dpipe.spec.monitor.ThresholdsSpec` reads its values in a
    drift report: ``section`` (``features``, ``prediction`` or ``metrics``) and ``field``."""

    section: str
    field: str
    #: Judge the size of a signed change (the missing rate may fall as well as rise).
    absolute: bool = False

    def values(self, report: Mapping[str, Any], ignore: set[str]) -> Iterator[tuple[str, float]]:
        if self.section == "features":
            table = report["features"]
        elif self.section == "prediction":
            table = (report.get("prediction") or {}).get("columns", {})
        else:
            table = report.get("metrics") or {}
        for name, stats in table.items():
            value = stats.get(self.field)
            if value is not None and name not in ignore:
                yield name, abs(value) if self.absolute else value


#: Every threshold by its spec key (tests check this covers :class:`ThresholdsSpec`).
STATISTICS: dict[str, Statistic] = {
    "psi": Statistic("features", "psi"),
    "js": Statistic("features", "js"),
    "ks": Statistic("features", "ks"),
    "missing_rate": Statistic("features", "missing_rate_change", absolute=True),
    "unseen_rate": Statistic("features", "unseen_rate"),
    "prediction_psi": Statistic("prediction", "psi"),
    "prediction_js": Statistic("prediction", "js"),
    "metric_drop": Statistic("metrics", "drop"),
}


def crossings(report: Mapping[str, Any], spec: MonitorSpec) -> list[dict[str, Any]]:
    """Every statistic above its limit: ``{statistic, name, value, threshold}``, worst first."""
    ignore = set(spec.ignore)
    found = [
        {"statistic": stat, "name": name, "value": value, "threshold": limit}
        for stat, limit in spec.thresholds.active().items()
        for name, value in STATISTICS[stat].values(report, ignore)
        if value > limit
    ]
    return sorted(found, key=lambda c: c["value"] / c["threshold"] if c["threshold"] else float("inf"), reverse=True)


def monitor_spec(thresholds: Any = None, saved: Mapping[str, Any] | None = None) -> MonitorSpec:
    """The monitor settings: ``saved`` (a job's ``monitor:`` section) with ``thresholds`` over it.

    ``thresholds`` is a :class:`MonitorSpec`, a :class:`ThresholdsSpec`, a mapping of a whole
    ``monitor:`` section (``{"thresholds": ..., "ignore": ...}``) or of limits (``{"psi": 0.3}``).
    """
    if isinstance(thresholds, MonitorSpec):
        return thresholds
    base = _validated(dict(saved or {}), "monitor")
    if thresholds is None:
        return base
    if isinstance(thresholds, ThresholdsSpec):
        return base.model_copy(update={"thresholds": thresholds})
    given = dict(thresholds)
    if set(given) & set(MonitorSpec.model_fields):
        return _validated(given, "monitor")
    return _validated({**base.model_dump(), "thresholds": {**base.thresholds.model_dump(), **given}}, "thresholds")


def _validated(data: dict[str, Any], origin: str) -> MonitorSpec:
    from pydantic import ValidationError

    from dpipe.spec.load import spec_error_from

    try:
        return MonitorSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_error_from(exc, origin, MonitorSpec) from None
