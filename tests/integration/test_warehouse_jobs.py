"""Whole jobs across lakes and warehouses: a Delta source with its label in PostgreSQL, scoring a
DuckDB query into PostgreSQL, a features job's quarantine, and a bad password through the CLI."""

from __future__ import annotations

import json

import adbc_driver_postgresql.dbapi as pgdb
import deltalake
import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import yaml

import dpipe
from dpipe import cli
from tests.conftest import job_dict


@pytest.fixture
def events(demo_root) -> pd.DataFrame:
    frame = pd.read_parquet(demo_root / "events")
    frame["date"] = frame["date"].astype(str)
    return frame


def test_delta_source_with_its_label_in_postgres_then_scoring_duckdb_into_postgres(
    events, demo_root, tmp_path, postgres, client
):
    lake = str(tmp_path / "lake" / "events")
    features_only = events.drop(columns=["converted"])
    deltalake.write_deltalake(lake, pa.Table.from_pandas(features_only, preserve_index=False), partition_by=["date"])
    outcomes = pa.Table.from_pandas(events[["event_id", "converted"]], preserve_index=False)
    with pgdb.connect(postgres.uri) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS outcomes")
        cur.adbc_ingest("outcomes", outcomes, mode="create")
        conn.commit()

    spec = job_dict(
        demo_root,
        tmp_path / "bundle",
        source={"format": "delta", "uri": lake},
        label={
            "column": "converted",
            "join": {"source": {"format": "postgresql", "uri": postgres.uri, "table": "outcomes"}, "on": ["event_id"]},
        },
        train={"num_boost_round": 5},
    )
    result = dpipe.run(dpipe.job_from_dict(spec), client, progress=False)
    assert result.rows["read"] == len(events) and result.metrics["valid"]["auc"] > 0.6
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["input"]["lineage"]["kind"] == "delta" and manifest["input"]["lineage"]["version"] == 0
    label_table = manifest["tables"]["label.join"]["lineage"]
    assert label_table["kind"] == "postgresql" and "outcomes" in label_table["query"]
    assert postgres.password not in json.dumps(manifest)  # the URL's password is redacted

    warehouse = tmp_path / "shop.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        con.register("events_frame", features_only)
        con.execute("CREATE TABLE events AS SELECT * FROM events_frame")
    source = {"format": "duckdb", "uri": str(warehouse), "query": "SELECT * FROM events WHERE date >= '2024-01-03'"}
    sink = {"format": "postgresql", "uri": postgres.uri, "table": "scores", "mode": "append"}
    scored = dpipe.predict(str(tmp_path / "bundle"), source, sink, client=client, progress=False)
    expected = int((features_only["date"] >= "2024-01-03").sum())
    assert scored.rows == expected and scored.output["kind"] == "postgresql"
    assert int(postgres.sql("SELECT count(*) FROM scores")) == expected
    assert postgres.sql("SELECT min(prediction) >= 0 AND max(prediction) <= 1 FROM scores") == "t"
    again = dpipe.predict(str(tmp_path / "bundle"), source, sink, client=client, progress=False)
    assert again.output["duplicate"] and int(postgres.sql("SELECT count(*) FROM scores")) == expected
    committed = json.loads(postgres.sql("SELECT metadata FROM _dpipe_commits WHERE target = 'scores'"))
    assert committed["manifest"]["input"]["lineage"]["kind"] == "duckdb"


def test_features_job_quarantines_to_its_quarantine_uri(events, demo_root, tmp_path, client):
    out, side = tmp_path / "features", tmp_path / "quarantine"
    job = dpipe.job_from_dict(
        {
            "kind": "features",
            "source": {"uri": str(demo_root / "events")},
            "checks": [{"check": "range", "column": "age", "max": 60, "action": "quarantine"}],
            "quarantine": {"uri": str(side), "max_fraction": 0.9},
            "features": [{"op": "standard_scale", "columns": ["income"]}],
            "output": {"uri": str(out)},
        }
    )
    result = dpipe.run(job, client, progress=False)
    too_old = int((events["age"] > 60).sum())
    assert too_old and result.rows["quarantined"] == too_old
    assert result.rows["written"] == len(events) - too_old
    quarantined = ds.dataset(str(side / "quarantine"), format="parquet").to_table().to_pandas()
    assert len(quarantined) == too_old and (quarantined["age"] > 60).all()
    assert json.loads((side / "manifest.json").read_text())["quality"]["quarantined_rows"] == too_old


def test_a_wrong_password_is_one_message_without_it_and_no_table(events, demo_root, tmp_path, postgres, capsys):
    wrong = postgres.uri.replace(f":{postgres.password}@", ":not-the-password@")
    spec = {
        "kind": "features",
        "source": {"uri": str(demo_root / "events")},
        "output": {"format": "postgresql", "uri": wrong, "table": "never_created"},
        "cluster": {"n_workers": 1, "threads_per_worker": 1},
    }
    path = tmp_path / "features.yaml"
    path.write_text(yaml.safe_dump(spec))
    code = cli.main(["run", str(path)])
    err = capsys.readouterr().err
    assert code != 0 and "not-the-password" not in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("dpipe: error:")]
    assert postgres.sql("SELECT to_regclass('never_created') IS NULL") == "t"


def test_a_failed_features_job_leaves_no_quarantine_staging(demo_root, tmp_path, client):
    side = tmp_path / "quarantine"
    job = dpipe.job_from_dict(
        {
            "kind": "features",
            "source": {"uri": str(demo_root / "events")},
            "checks": [{"check": "range", "column": "age", "max": 60, "action": "quarantine"}],
            "quarantine": {"uri": str(side), "max_fraction": 0.001},  # exceeded: the run fails
            "output": {"uri": str(tmp_path / "features")},
        }
    )
    with pytest.raises(dpipe.DataError, match="quarantine"):
        dpipe.run(job, client, progress=False)
    assert not side.exists() and not (tmp_path / "features").exists()
    assert [p.name for p in tmp_path.iterdir() if ".dpipe-" in p.name] == []


def test_a_postgres_source_defaults_to_one_range_per_planned_worker_thread(events, tmp_path, postgres):
    with pgdb.connect(postgres.uri) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS threads_events")
        cur.adbc_ingest("threads_events", pa.Table.from_pandas(events.iloc[:3000], preserve_index=False), mode="create")
        conn.commit()
    job = dpipe.job_from_dict(
        {
            "kind": "features",
            "source": {
                "format": "postgresql",
                "uri": postgres.uri,
                "table": "threads_events",
                "partition_on": "event_id",
            },
            "output": {"uri": str(tmp_path / "out")},
            "cluster": {"n_workers": 3, "threads_per_worker": 1},
        }
    )
    result = dpipe.run(job, progress=False)
    assert result.rows["written"] == 3000
    assert len(result.manifest["input"]["files"]) == 3  # one range per worker thread of the planned cluster


def test_a_live_database_source_needs_a_txn_to_commit_a_retry_once(events, tmp_path, postgres, client, caplog):
    with pgdb.connect(postgres.uri) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS live_events")
        cur.adbc_ingest("live_events", pa.Table.from_pandas(events.iloc[:500], preserve_index=False), mode="create")
        conn.commit()
    lake = str(tmp_path / "lake")
    spec = {
        "kind": "features",
        "source": {"format": "postgresql", "uri": postgres.uri, "table": "live_events"},
        "output": {"format": "delta", "uri": lake, "mode": "append"},
    }
    with caplog.at_level("INFO", logger="dpipe"):
        first = dpipe.run(dpipe.job_from_dict(spec), client, progress=False)
    assert "rows carry no version" in caplog.text
    # The password is in the source's URL: it reaches neither the manifest nor the table's commit.
    history = json.dumps(deltalake.DeltaTable(lake).history(), default=str)
    assert postgres.password not in json.dumps(first.manifest) and postgres.password not in history
    pinned = {**spec, "txn": "live-events-2024-06-01"}
    for _ in range(2):  # the scheduler's retry of one run: committed once
        dpipe.run(dpipe.job_from_dict(pinned), client, progress=False)
    assert len(deltalake.DeltaTable(lake).to_pandas()) == 1000
