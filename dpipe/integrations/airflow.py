"""dpipe under Apache Airflow: an operator for one job or one flow step, and a flow as tasks.

::

    from airflow.sdk import DAG
    from dpipe.integrations.airflow import DpipeOperator, flow_tasks

    with DAG("flights", schedule="@monthly", start_date=datetime(2013, 1, 1), catchup=False):
        # one task per step of the flow, wired as the flow's `needs`
        tasks = flow_tasks("jobs/flights-flow.yaml", scheduler="tcp://dask:8786")
        # or a single job, the run's logical date in its spec as ${ds}
        DpipeOperator(task_id="score", spec="jobs/score.yaml")

The run's dates are the variables ``${ds}``, ``${ds_nodash}``, ``${ts}``,
``${data_interval_start}`` and ``${data_interval_end}`` of the job or flow (``vars=`` adds
more, and is templated). The job runs in a child process (``dpipe run``), on the Dask cluster
``scheduler`` names (default: the spec's ``cluster.address``, else a LocalCluster of its own);
its log lines become the task's. Retries and alerts are Airflow's: set them on the task.
Airflow removed its Dask executor: dpipe runs *from* a task, on the cluster it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dpipe.integrations import run_job, run_step

try:  # Airflow 3
    from airflow.sdk import BaseOperator
except ImportError:  # pragma: no cover - Airflow 2
    from airflow.models import BaseOperator

#: The Airflow context values a spec can read as ``${NAME}``, with the values a DAG file's flow
#: is checked with when it is parsed (the run's own are known only when a task runs).
DATE_VARS = {
    "ds": "1970-01-01",
    "ds_nodash": "19700101",
    "ts": "1970-01-01T00:00:00+00:00",
    "data_interval_start": "1970-01-01T00:00:00+00:00",
    "data_interval_end": "1970-01-02T00:00:00+00:00",
}


def date_vars(context: Mapping[str, Any]) -> dict[str, str]:
    """The run's dates as variables (those the context has: a manual run may have no logical date)."""
    out = {}
    for name in DATE_VARS:
        value = context.get(name)
        if value is not None:
            out[name] = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return out


class DpipeOperator(BaseOperator):
    """Run a dpipe job spec, or one step of a flow spec (``step=``), as an Airflow task.

    The task's return value (its XCom) is the job's result: ``dpipe run --json``'s object, or
    the step's record (status, output, rows, log). A failure raises with dpipe's own message.
    """

    template_fields = ("spec", "step", "vars", "scheduler")
    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        spec: str,
        step: str | None = None,
        vars: Mapping[str, str] | None = None,
        scheduler: str | None = None,
        force: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.step = step
        self.vars = dict(vars or {})
        self.scheduler = scheduler
        self.force = force

    def execute(self, context: Any) -> dict[str, Any]:
        values = {**date_vars(context), **{k: str(v) for k, v in self.vars.items()}}
        if self.step is None:
            return run_job(self.spec, vars=values, scheduler=self.scheduler, force=self.force, log=self.log.info)
        return run_step(
            self.spec, self.step, vars=values, scheduler=self.scheduler, force=self.force, log=self.log.info
        )


def flow_tasks(
    flow_path: str,
    *,
    scheduler: str | None = None,
    vars: Mapping[str, str] | None = None,
    prefix: str = "",
    **task_kwargs: Any,
) -> dict[str, DpipeOperator]:
    """One :class:`DpipeOperator` per step of the flow, in the current DAG, each downstream of the
    steps it needs. ``task_kwargs`` (``retries``, ``retry_delay``...) apply to every task. The
    flow is checked here, when the DAG file is parsed, with sample dates (:data:`DATE_VARS`)."""
    from dpipe.flow import load_flow

    flow = load_flow(flow_path, vars={**DATE_VARS, **(vars or {})})
    tasks: dict[str, DpipeOperator] = {}
    for name, step in flow.steps.items():
        tasks[name] = DpipeOperator(
            task_id=f"{prefix}{name}",
            spec=str(flow_path),
            step=name,
            vars=dict(vars or {}),
            scheduler=scheduler,
            **task_kwargs,
        )
        for need in step.needs:
            tasks[need] >> tasks[name]
    return tasks
