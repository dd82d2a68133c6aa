"""Flows: dpipe jobs as the steps of one pipeline (``dpipe flow validate|run|show``).

:func:`load_flow` checks a ``flow.yaml`` as a whole (:mod:`dpipe.flow.graph`); :func:`run_flow`
runs its steps on one cluster, each as its own ``dpipe run`` with retries, a timeout and a log
(:mod:`dpipe.flow.engine`), and raises the flow's alerts (:mod:`dpipe.flow.alerts`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dpipe.flow.graph import Flow, Step, load_flow
from dpipe.lazy import lazy_names

if TYPE_CHECKING:
    from dpipe.flow.engine import FlowResult, StepResult, run_flow

__getattr__ = lazy_names(
    __name__, {"FlowResult": "dpipe.flow.engine", "StepResult": "dpipe.flow.engine", "run_flow": "dpipe.flow.engine"}
)

__all__ = ["Flow", "FlowResult", "Step", "StepResult", "load_flow", "run_flow"]


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
