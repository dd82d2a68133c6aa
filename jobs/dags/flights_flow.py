"""jobs/flights-flow.yaml as an Apache Airflow DAG: one task per step, wired as the flow's needs.

Put this file (or a copy) in Airflow's DAGs folder, in an environment with dpipe and
``pip install "dpipe[airflow]"``. The steps run on the Dask cluster at ``$DPIPE_SCHEDULER``
(default: each task starts a LocalCluster of its own); ``$DPIPE_FLIGHTS_FLOW`` names another
copy of the flow. The run's logical date is ``${ds}`` in the flow's jobs.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG

from dpipe.integrations.airflow import flow_tasks

FLOW = os.environ.get("DPIPE_FLIGHTS_FLOW", str(Path(__file__).resolve().parents[1] / "flights-flow.yaml"))

with DAG(
    dag_id="dpipe_flights",
    description="NYC flights: features, training, promotion, scoring and monitoring with dpipe",
    schedule="@monthly",
    start_date=datetime(2013, 11, 1),
    catchup=False,
    tags=["dpipe"],
) as dag:
    flow_tasks(FLOW, scheduler=os.environ.get("DPIPE_SCHEDULER"), retries=1, retry_delay=timedelta(minutes=5))
