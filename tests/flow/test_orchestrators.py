"""dpipe under Apache Airflow and Prefect, for real: each installed into a virtual environment of
its own (tests/venvs.py) that sees dpipe; a DAG run by `airflow dags test`, a Prefect flow run under
Prefect's local test harness, both on a real `dask scheduler` and workers."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow.dataset as ds
import yaml

from tests.conftest import ROOT
from tests.venvs import orchestrator_python


def _daily_flow(tmp_path: Path, events: Path) -> Path:
    """Two steps over one day of events, the day being the run's logical date (``${ds}``)."""
    flow = {
        "name": "daily",
        "steps": {
            "features": {
                "job": {
                    "kind": "features",
                    "source": {"uri": str(events), "filters": [["date", "==", "${ds}"]]},
                    "output": {"format": "delta", "uri": f"{tmp_path}/lake/${{ds_nodash}}", "mode": "overwrite"},
                }
            },
            "train": {
                "job": {
                    "source": {"uri": "${steps.features.output}", "format": "delta"},
                    "features": [{"op": "categorical", "columns": ["country", "device", "plan"]}],
                    "label": {"column": "converted"},
                    "train": {"num_boost_round": 5, "exclude": ["date"]},
                    "output": {"uri": f"{tmp_path}/model-${{ds_nodash}}"},
                }
            },
        },
    }
    path = tmp_path / "daily.yaml"
    path.write_text(yaml.safe_dump(flow, sort_keys=False))
    return path


def _env(tmp_path: Path, **more: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **more}


def _rows(table: Path) -> int:
    from deltalake import DeltaTable

    return DeltaTable(str(table)).to_pyarrow_dataset().count_rows()


DAG = """
from datetime import datetime

from airflow.sdk import DAG

from dpipe.integrations.airflow import DpipeOperator, flow_tasks

with DAG("dpipe_daily", schedule="@daily", start_date=datetime(2024, 1, 1), catchup=False) as dag:
    steps = flow_tasks({flow!r}, scheduler={scheduler!r})
    # One job on its own, the logical date in its spec as ${{ds}} (and a templated variable).
    one = DpipeOperator(task_id="one_job", spec={job!r}, scheduler={scheduler!r}, vars={{"day": "{{{{ ds_nodash }}}}"}})
    steps["train"] >> one
"""


def test_a_flow_and_a_job_as_an_airflow_dag(demo_root, tmp_path, remote_scheduler):
    python = orchestrator_python("airflow")
    flow = _daily_flow(tmp_path, demo_root / "events")
    job = tmp_path / "one.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "kind": "features",
                "source": {"uri": str(demo_root / "events"), "filters": [["date", "==", "${ds}"]]},
                "output": {"uri": f"{tmp_path}/one-${{day}}"},
            }
        )
    )
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "daily.py").write_text(DAG.format(flow=str(flow), job=str(job), scheduler=remote_scheduler))
    # The example DAG of the flights flow is checked too (parsed, its tasks wired as the flow's needs).
    (dags / "flights_flow.py").write_text((ROOT / "jobs" / "dags" / "flights_flow.py").read_text())
    env = _env(
        tmp_path,
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        DPIPE_FLIGHTS_FLOW=str(ROOT / "jobs" / "flights-flow.yaml"),
    )
    airflow = [str(python), "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=300)
    listed = subprocess.run(
        [str(python), "-c", CHECK_DAGS], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    wiring = json.loads(listed.stdout.strip().splitlines()[-1])
    assert wiring["errors"] == {}, "\n".join(wiring["errors"].values())
    assert wiring["dpipe_flights"] == {
        "features": [],
        "train": ["features"],
        "promote": ["features", "train"],
        "score": ["features", "promote"],
        "monitor": ["features", "promote"],
    }
    done = subprocess.run(
        [*airflow, "dags", "test", "dpipe_daily", "2024-01-02"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert _rows(tmp_path / "lake" / "20240102") == 5000  # that day only: ${ds} reached the spec
    assert (tmp_path / "model-20240102" / "manifest.json").exists()
    assert ds.dataset(tmp_path / "one-20240102").count_rows() == 5000
    state = json.loads((tmp_path / ".dpipe" / "flows" / "daily" / "state.json").read_text())
    assert {n: s["status"] for n, s in state["steps"].items()} == {"features": "succeeded", "train": "succeeded"}


CHECK_DAGS = """
import json
from airflow.dag_processing.dagbag import DagBag

bag = DagBag()  # the DAGs folder of $AIRFLOW__CORE__DAGS_FOLDER
flights = bag.get_dag("dpipe_flights")
wiring = {t.task_id: sorted(t.upstream_task_ids) for t in flights.tasks}
print(json.dumps({"errors": bag.import_errors, "dpipe_flights": wiring}))
"""


PREFECT = """
import json, sys
from prefect.testing.utilities import prefect_test_harness

from dpipe.integrations.prefect import prefect_flow

if __name__ == "__main__":
    # No scheduler: the task runner starts a LocalCluster (its workers must import Prefect, so
    # it runs from this environment), and the steps' jobs run on that same cluster.
    daily = prefect_flow(sys.argv[1], vars={"ds": "2024-01-01", "ds_nodash": "20240101"})
    with prefect_test_harness(server_startup_timeout=120):
        out = daily(vars={"ds": "2024-01-03", "ds_nodash": "20240103"})
    print(json.dumps({name: step["status"] for name, step in out.items()}))
"""


def test_a_flow_as_a_prefect_flow_on_prefect_dasks_task_runner(demo_root, tmp_path):
    python = orchestrator_python("prefect")
    flow = _daily_flow(tmp_path, demo_root / "events")
    script = tmp_path / "run_prefect.py"
    script.write_text(PREFECT)
    env = _env(tmp_path, PREFECT_HOME=str(tmp_path / "prefect"), ds="unused-by-the-flow")
    done = subprocess.run(
        [str(python), str(script), str(flow)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"features": "succeeded", "train": "succeeded"}
    assert _rows(tmp_path / "lake" / "20240103") == 5000
    assert (tmp_path / "model-20240103" / "manifest.json").exists()
