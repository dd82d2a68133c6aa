"""Drift monitoring: a batch of new data against the reference profile stored in a model bundle.

:func:`monitor` loads the bundle and its ``profile.json`` (:mod:`dpipe.drift`), opens the batch
reading only the columns the saved ops, the model and the label need, checks them before a
cluster starts, and computes every count in ONE Dask computation: the batch is read once, the
fitted pipeline applied, the model's predictions made, and counts taken per partition on the
profile's fixed bins. The statistics are judged against the thresholds of a
:class:`~dpipe.spec.monitor.MonitorSpec`; ``drift.json`` and ``drift.html`` go to ``output``.

::

    bundle + profile.json --plan--> columns checked --one compute--> counts --compare--> drift.json
"""

from dpipe.monitor.batch import read_profile
from dpipe.monitor.judge import STATISTICS, Statistic, crossings, monitor_spec
from dpipe.monitor.page import render_html
from dpipe.monitor.run import DRIFT_HTML, DRIFT_JSON, MonitorResult, monitor, retrain

__all__ = [
    "DRIFT_HTML",
    "DRIFT_JSON",
    "STATISTICS",
    "MonitorResult",
    "Statistic",
    "crossings",
    "monitor",
    "monitor_spec",
    "read_profile",
    "render_html",
    "retrain",
]
