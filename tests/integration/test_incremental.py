"""Incremental training runs: only new datums are read, and the merged statistics equal a full refit.

What was read is proven from outside dpipe: the source is read through a filesystem that records
every file it opens (tests/counting_fs.py), in the client and in the workers.
"""

from __future__ import annotations

import json
from pathlib import Path

import deltalake
import pyarrow.parquet as pq
import pytest

import dpipe
from dpipe.bundle import Bundle
from dpipe.errors import DataError, SpecError
from tests.conftest import job_dict
from tests.counting_fs import opened, register
from tests.integration.conftest import arrive
from tests.integration.test_reruns import CountingClient

register()


def spec(events: Path, out: Path, log: Path | None = None, **sections) -> dict:
    source = {"uri": f"opencount://{events}", "format": "parquet", "storage_options": {"log": str(log)}}
    base = job_dict(events.parent, out, source=source if log else {"uri": str(events)}, **sections)
    base["train"] = {**base["train"], "num_boost_round": 8, "early_stopping_rounds": None}
    return base


def states(bundle: str) -> dict:
    return {op.where: op.get_state() for op in Bundle.load(bundle).pipeline.ops}


def test_an_incremental_run_reads_only_the_new_files_and_equals_a_full_refit(months, tmp_path, client, caplog):
    events, later = months
    log = tmp_path / "opens.log"
    # Trained on the newest datum alone, so nothing but it is read at all (the default, `retrain:
    # all`, reads every datum to train on).
    incremental = {"retrain": "window", "last": 1}
    job = dpipe.job_from_dict(spec(events, tmp_path / "model", log, incremental=incremental))
    first = dpipe.run(job, client, progress=False)
    assert first.manifest["incremental"]["action"] == "full" and "parent" not in first.manifest
    log.unlink()

    arrive(later[0], events)
    with caplog.at_level("INFO", logger="dpipe"):
        second = dpipe.run(job, client, progress=False)
    new_file = str(next((events / later[0].name).glob("*.parquet")))
    assert set(opened(log)) == {new_file}, "the earlier files were opened again"
    assert "incremental: 1 new datum(s) since run" in caplog.text
    assert second.manifest["incremental"]["new_datums"] == 1
    assert second.manifest["parent"]["run_id"] == first.manifest["run_id"]
    assert second.rows["read"] == pq.read_metadata(new_file).num_rows
    assert second.manifest["incremental"]["trained_on"]["datums"] == 1

    full = dpipe.run(dpipe.job_from_dict(spec(events, tmp_path / "full")), client, progress=False)
    merged, refit = states(second.bundle_uri), states(full.bundle_uri)
    assert merged["features[4]"] == refit["features[4]"]  # vocabularies: exact
    for where in ("features[1]", "features[3]"):  # moments: up to float rounding
        for key, values in refit[where].items():
            assert merged[where][key] == pytest.approx(values, rel=1e-12)
    for column, value in refit["features[0]"]["values"].items():  # medians: within the sketch's error
        assert merged["features[0]"]["values"][column] == pytest.approx(value, rel=0.02)

    counting = CountingClient(client)
    log.unlink()
    with caplog.at_level("INFO", logger="dpipe"):
        third = dpipe.run(job, counting, progress=False)
    assert counting.computed == 0 and opened(log) == [] and "no new data since run" in caplog.text
    assert third.manifest["run_id"] == second.manifest["run_id"]


def test_retraining_on_all_datums_reads_them_all(months, tmp_path, client):
    events, later = months
    log = tmp_path / "opens.log"
    job = dpipe.job_from_dict(spec(events, tmp_path / "model", log, incremental=True))
    dpipe.run(job, client, progress=False)
    arrive(later[0], events)
    second = dpipe.run(job, client, progress=False)
    trained = second.manifest["incremental"]["trained_on"]
    assert trained["datums"] == 3 and trained["train"] + trained["valid"] == 3 * 5000
    assert second.rows["read"] == 5000  # the fit pass read the new datum only


def test_continue_grows_the_previous_booster_with_its_transforms(months, tmp_path, client):
    events, later = months
    job = dpipe.job_from_dict(spec(events, tmp_path / "model", incremental={"retrain": "continue"}))
    first = dpipe.run(job, client, progress=False)
    before = Bundle.load(first.bundle_uri)
    arrive(later[0], events)
    second = dpipe.run(job, client, progress=False)
    after = Bundle.load(second.bundle_uri)
    assert after.booster.num_boosted_rounds() == before.booster.num_boosted_rounds() + 8
    # The old trees keep their meaning: the transforms they were grown with are kept ...
    assert after.pipeline.to_dict()["ops"] == before.pipeline.to_dict()["ops"]
    # ... while the state merged the new datum's statistics, for a later full retrain.
    state = json.loads((Path(second.bundle_uri) / "state.json").read_text())
    assert len(state["datums"]) == 3 and second.manifest["incremental"]["retrain"] == "continue"
    assert second.manifest["incremental"]["trained_on"]["datums"] == 1


def test_a_window_trains_on_the_last_datums(months, tmp_path, client):
    events, later = months
    job = dpipe.job_from_dict(spec(events, tmp_path / "model", incremental={"retrain": "window", "last": 3}))
    dpipe.run(job, client, progress=False)
    for folder in later:
        arrive(folder, events)
    second = dpipe.run(job, client, progress=False)
    trained = second.manifest["incremental"]["trained_on"]
    assert trained["datums"] == 3 and second.manifest["incremental"]["new_datums"] == 2
    assert trained["train"] + trained["valid"] == 3 * 5000


def test_a_changed_datum_refits_from_scratch_or_fails(months, tmp_path, client):
    events, _ = months
    first_file = next(sorted(events.glob("date=*"))[0].glob("*.parquet"))
    job = dpipe.job_from_dict(spec(events, tmp_path / "model", incremental=True))
    dpipe.run(job, client, progress=False)
    table = pq.read_table(first_file)
    pq.write_table(table.slice(0, 1000), first_file)  # rewritten: another size and mtime

    strict = dpipe.job_from_dict(spec(events, tmp_path / "model", incremental={"on_change": "fail"}))
    with pytest.raises(DataError, match=rf"source: datum '.*{first_file.parent.name}.*' changed since run"):
        dpipe.run(strict, client, progress=False)
    refit = dpipe.run(job, client, progress=False)
    assert (
        refit.manifest["incremental"]["action"] == "full"
        and "changed since run" in refit.manifest["incremental"]["reason"]
    )
    assert refit.rows["read"] == 5000 + 1000


def test_ops_that_cannot_be_merged_are_refused_before_reading(months, tmp_path, client):
    events, _ = months
    features = [
        {"op": "dedupe", "key": ["event_id"]},
        {"op": "fill_missing", "columns": ["income"], "strategy": "mean"},
        {"op": "standard_scale", "columns": ["income"]},
    ]
    job = dpipe.job_from_dict(spec(events, tmp_path / "model", features=features, incremental=True))
    with pytest.raises(
        SpecError, match=r"(?s)cannot be fitted from new data alone.*features\[0\] \(dedupe\).*features\[2\]"
    ):
        dpipe.run(job, client, progress=False)
    assert not (tmp_path / "model").exists()


def test_a_new_delta_version_is_read_alone(tmp_path, demo_root, client):
    import pyarrow.dataset as ds

    table = ds.dataset(str(demo_root / "events"), partitioning="hive").to_table()
    lake = str(tmp_path / "lake")
    deltalake.write_deltalake(lake, table.slice(0, 15000))
    job = dpipe.job_from_dict(
        job_dict(demo_root, tmp_path / "model", source={"format": "delta", "uri": lake}, incremental=True)
    )
    dpipe.run(job, client, progress=False)
    deltalake.write_deltalake(lake, table.slice(15000), mode="append")
    second = dpipe.run(job, client, progress=False)
    added = set(deltalake.DeltaTable(lake).file_uris()) - set(deltalake.DeltaTable(lake, version=0).file_uris())
    read = [d["id"] for d in second.manifest["input"]["lineage"]["datums"]]
    assert [r.rsplit("/", 1)[1] for r in read] == [a.rsplit("/", 1)[1] for a in added]
    assert second.rows["read"] == 5000
    full = dpipe.run(
        dpipe.job_from_dict(job_dict(demo_root, tmp_path / "full", source={"format": "delta", "uri": lake})),
        client,
        progress=False,
    )
    assert states(second.bundle_uri)["features[4]"] == states(full.bundle_uri)["features[4]"]


def test_rows_added_to_a_postgres_table_are_read_alone_and_delivered_once(demo_root, tmp_path, postgres, client):
    """A watermark column: training reads only the rows above the mark and matches a full refit;
    a features job from the same table into DuckDB appends each new row once."""
    import adbc_driver_postgresql.dbapi as pgdb
    import duckdb
    import pandas as pd
    import pyarrow as pa

    frame = pd.read_parquet(demo_root / "events")
    frame["date"] = frame["date"].astype(str)
    table = "incremental_events"

    def load(rows: pd.DataFrame, mode: str) -> None:
        with pgdb.connect(postgres.uri) as conn, conn.cursor() as cur:
            if mode == "create":
                cur.execute(f"DROP TABLE IF EXISTS {table}")
            cur.adbc_ingest(table, pa.Table.from_pandas(rows, preserve_index=False), mode=mode)
            conn.commit()

    load(frame.iloc[:15000], "create")
    source = {"format": "postgresql", "uri": postgres.uri, "table": table, "watermark": "event_id"}
    job = dpipe.job_from_dict(job_dict(demo_root, tmp_path / "model", source=source, incremental=True))
    first = dpipe.run(job, client, progress=False)
    assert first.rows["read"] == 15000
    load(frame.iloc[15000:], "append")
    second = dpipe.run(job, client, progress=False)
    assert second.rows["read"] == 5000 and second.manifest["incremental"]["new_datums"] == 1
    assert '"event_id" >' in second.manifest["input"]["lineage"]["query"]
    full_job = job_dict(demo_root, tmp_path / "full", source={**source, "watermark": None})
    full = dpipe.run(dpipe.job_from_dict(full_job), client, progress=False)
    assert states(second.bundle_uri)["features[4]"] == states(full.bundle_uri)["features[4]"]
    merged, refit = states(second.bundle_uri)["features[3]"], states(full.bundle_uri)["features[3]"]
    assert merged["mean"] == pytest.approx(refit["mean"]) and merged["scale"] == pytest.approx(refit["scale"])

    load(frame.iloc[:15000], "create")
    warehouse = tmp_path / "warehouse.duckdb"
    features = {
        "kind": "features",
        "name": "events-to-duckdb",
        "source": source,
        "columns": ["event_id", "income"],
        "output": {"format": "duckdb", "uri": str(warehouse), "table": "events", "mode": "append"},
        "incremental": True,
    }
    spec = dpipe.job_from_dict(features)
    assert dpipe.run(spec, client, progress=False).rows["written"] == 15000
    load(frame.iloc[15000:], "append")
    assert dpipe.run(spec, client, progress=False).rows["written"] == 5000
    assert dpipe.run(spec, client, progress=False).skipped
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT event_id FROM events").fetchall()]
    assert sorted(ids) == sorted(frame["event_id"].tolist())


def test_validate_names_what_cannot_be_incremental_without_reading_data(tmp_path, capsys):
    from dpipe import cli

    spec = job_dict(tmp_path, tmp_path / "model", features=[{"op": "dedupe", "key": ["event_id"]}], incremental=True)
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(spec))
    assert cli.main(["validate", str(path), "--offline"]) == 2
    assert "features[0] (dedupe): it compares rows of every datum" in capsys.readouterr().err


def test_a_database_source_needs_a_watermark_to_be_incremental(tmp_path, capsys):
    from dpipe import cli

    source = {"format": "postgresql", "uri": "postgresql://me@127.0.0.1:1/db", "table": "events"}
    spec = job_dict(tmp_path, tmp_path / "model", source=source, incremental=True)
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(spec))
    assert cli.main(["validate", str(path), "--offline"]) == 2
    assert "above a `watermark` column" in capsys.readouterr().err
