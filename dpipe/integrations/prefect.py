"""A dpipe flow as a Prefect flow, its steps as tasks on ``prefect-dask``'s task runner.

::

    from dpipe.integrations.prefect import prefect_flow

    flights = prefect_flow("jobs/flights-flow.yaml", scheduler="tcp://dask:8786")
    flights(vars={"ds": "2013-11-01"})            # or deploy it with a cron schedule

Each step is a Prefect task that the ``DaskTaskRunner`` runs on the cluster ``scheduler`` names
(default: a LocalCluster the runner starts); it runs the step as ``dpipe flow run --step`` does,
and that step's job runs on the same cluster. The cluster's workers run Prefect's tasks, so they
need Prefect (and dpipe) installed, as ``prefect-dask`` requires. A task waits for the tasks of the steps it needs,
as the flow says; a step that fails fails its task, and Prefect does not run what needs it.
Schedules, retries and notifications are Prefect's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import flow as prefect_flow_decorator
from prefect import task
from prefect_dask import DaskTaskRunner

from dpipe.integrations import run_step


@task(name="dpipe-step")
def _step(flow_path: str, name: str, vars: Mapping[str, str], scheduler: str | None, force: bool) -> dict[str, Any]:
    from distributed import get_worker, rejoin, secede

    if scheduler is None:
        scheduler = get_worker().scheduler.address  # the cluster this task runs on
    # The step's job computes on this same cluster: give this worker's thread back while the
    # task only waits for it (training needs a thread on every worker holding data).
    secede()
    try:
        return run_step(flow_path, name, vars=vars, scheduler=scheduler, force=force)
    finally:
        rejoin()


def prefect_flow(
    flow_path: str,
    *,
    scheduler: str | None = None,
    name: str | None = None,
    vars: Mapping[str, str] | None = None,
) -> Any:
    """The dpipe flow at ``flow_path`` as a Prefect flow, checked now, when it is built, with
    ``vars`` (values of ``${NAME}``; a run's own win over them).

    Call the result with ``vars={...}`` and ``force=True`` as needed; it returns each step's
    record by name.
    """
    from dpipe.flow import load_flow

    defaults = dict(vars or {})
    checked = load_flow(flow_path, vars=defaults)
    runner = DaskTaskRunner(address=scheduler) if scheduler else DaskTaskRunner()

    @prefect_flow_decorator(name=name or checked.name, task_runner=runner, log_prints=True)
    def run(vars: dict[str, str] | None = None, force: bool = False) -> dict[str, Any]:
        vars = {**defaults, **(vars or {})}
        load_flow(flow_path, vars=vars)  # the values given are checked before any step runs
        futures: dict[str, Any] = {}
        for step_name, step in checked.steps.items():
            futures[step_name] = _step.with_options(name=f"{checked.name}.{step_name}").submit(
                str(flow_path),
                step_name,
                vars,
                scheduler,
                force,
                wait_for=[futures[need] for need in step.needs],
            )
        return {step_name: future.result() for step_name, future in futures.items()}

    return run
