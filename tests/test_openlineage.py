"""OpenLineage run events: START, COMPLETE and FAIL received by a real HTTP server on 127.0.0.1, the
file transport's files, and an endpoint that is down costing one warning, never the run."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dask.dataframe as dd
import pandas as pd
import pytest
from pydantic import ValidationError

from dpipe.errors import DataError
from dpipe.io import ParquetFolderSink, open_source
from dpipe.openlineage import dataset_name, run_events
from dpipe.spec.base import redact
from dpipe.spec.lineage import LineageSpec
from tests.conftest import free_port


@pytest.fixture(autouse=True)
def _no_openlineage_environment(monkeypatch):
    """openlineage-python obeys OPENLINEAGE_DISABLED and OPENLINEAGE_CONFIG: not the developer's here."""
    for name in ("OPENLINEAGE_DISABLED", "OPENLINEAGE_CONFIG"):
        monkeypatch.delenv(name, raising=False)


class _Collector(BaseHTTPRequestHandler):
    """Stores every POSTed event (and its headers) on the server; answers 201 as Marquez does."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append({"path": self.path, "headers": dict(self.headers), "event": json.loads(body)})
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def lineage_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def http(server, **keys) -> LineageSpec:
    url = f"http://127.0.0.1:{server.server_address[1]}"
    return LineageSpec.model_validate({"openlineage": {"transport": "http", "url": url, **keys}})


@pytest.fixture
def source_folder(tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    frame = pd.DataFrame({"event_id": range(6), "income": [1.0, 2.0, None, 4.0, 5.0, 6.0]})
    frame.iloc[:3].to_parquet(folder / "part-0.parquet", index=False)
    frame.iloc[3:].to_parquet(folder / "part-1.parquet", index=False)
    return folder


def written_folder(tmp_path):
    """A real Parquet-folder commit, and what it wrote."""
    frame = dd.from_pandas(pd.DataFrame({"event_id": range(4), "prediction": [0.1, 0.2, 0.3, 0.4]}), npartitions=2)
    with ParquetFolderSink(str(tmp_path / "scores")) as sink:
        sink.write(frame, compute=lambda t: t.compute(scheduler="sync"))
        return sink.commit(metadata={"manifest": {"kind": "predict"}}), frame._meta


def test_http_server_receives_start_and_complete_with_inputs_and_outputs(lineage_server, source_folder, tmp_path):
    opened = open_source({"uri": str(source_folder)})
    run_id = uuid.uuid4().hex
    with run_events(http(lineage_server, api_key="k3y-secret"), job="scoring", run_id=run_id, kind="predict") as ev:
        ev.start([opened], [{"format": "parquet", "uri": str(tmp_path / "scores")}])
        written, meta = written_folder(tmp_path)
        ev.complete(outputs=[{**written.lineage(), "schema": meta}], facets={"dpipe": {"spec_hash": "ab12"}})
    assert ev.sent == ["START", "COMPLETE"]

    got = lineage_server.received
    assert [r["event"]["eventType"] for r in got] == ["START", "COMPLETE"]
    assert {r["path"] for r in got} == {"/api/v1/lineage"}
    assert got[0]["headers"]["Authorization"] == "Bearer k3y-secret"
    start, complete = (r["event"] for r in got)
    assert start["run"]["runId"] == complete["run"]["runId"] == str(uuid.UUID(run_id))
    assert complete["job"]["namespace"] == "dpipe" and complete["job"]["name"] == "scoring"
    assert complete["job"]["facets"]["jobType"]["jobType"] == "PREDICT"
    assert complete["run"]["facets"]["dpipe"]["spec_hash"] == "ab12"
    assert complete["run"]["facets"]["processing_engine"]["name"] == "dpipe"

    (read,) = complete["inputs"]
    assert (read["namespace"], read["name"]) == ("file", str(source_folder))
    assert [f["name"] for f in read["facets"]["schema"]["fields"]] == ["event_id", "income"]
    assert read["facets"]["version"]["datasetVersion"]  # a folder's version: its files' versions
    assert read["inputFacets"]["inputStatistics"]["fileCount"] == 2
    (out,) = complete["outputs"]
    assert (out["namespace"], out["name"]) == ("file", str(tmp_path / "scores"))
    assert start["outputs"][0]["name"] == out["name"]  # the sink spec at START names what COMPLETE wrote
    assert out["outputFacets"]["outputStatistics"]["rowCount"] == 4
    assert [f["name"] for f in out["facets"]["schema"]["fields"]] == ["event_id", "prediction"]


def test_an_error_inside_the_run_sends_fail_with_its_message_and_is_raised(lineage_server, source_folder):
    with (
        pytest.raises(DataError, match="no rows left"),
        run_events(http(lineage_server), job="train-a", run_id=uuid.uuid4().hex, kind="train") as ev,
    ):
        ev.start([{"uri": str(source_folder), "format": "parquet"}])
        raise DataError("source: no rows left after filtering postgresql://me:hunter2@db/x")
    events = [r["event"] for r in lineage_server.received]
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    error = events[1]["run"]["facets"]["errorMessage"]
    assert "no rows left" in error["message"] and error["programmingLanguage"] == "PYTHON"
    assert "hunter2" not in json.dumps(events)  # a URL's password never leaves the run
    assert events[1]["inputs"][0]["name"] == str(source_folder)  # FAIL says what the run was reading


def test_an_error_after_complete_sends_no_fail(lineage_server):
    with pytest.raises(OSError), run_events(http(lineage_server), job="j", run_id=uuid.uuid4().hex, kind="train") as ev:
        ev.complete()
        raise OSError("the log could not be flushed")
    assert [r["event"]["eventType"] for r in lineage_server.received] == ["COMPLETE"]


def test_an_interrupted_run_sends_abort(lineage_server):
    with (
        pytest.raises(KeyboardInterrupt),
        run_events(http(lineage_server), job="j", run_id=uuid.uuid4().hex, kind="train"),
    ):
        raise KeyboardInterrupt
    assert [r["event"]["eventType"] for r in lineage_server.received] == ["ABORT"]


def test_the_file_transport_is_the_default_and_writes_parseable_events(tmp_path, monkeypatch, source_folder):
    monkeypatch.setenv("DPIPE_HOME", str(tmp_path / "home"))
    run_id = uuid.uuid4().hex
    with run_events(None, job="nightly", run_id=run_id, kind="features") as ev:
        ev.start([{"uri": str(source_folder), "format": "parquet"}], [{"format": "delta", "uri": str(tmp_path / "t")}])
        ev.complete()
    files = sorted((tmp_path / "home" / "openlineage").glob(f"nightly-{run_id}-*.json"))
    assert len(files) == 2
    events = sorted((json.loads(f.read_text()) for f in files), key=lambda e: e["eventTime"])
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    assert events[1]["outputs"][0] == {**events[1]["outputs"][0], "namespace": "file", "name": str(tmp_path / "t")}

    elsewhere = LineageSpec.model_validate({"openlineage": {"path": str(tmp_path / "ol")}})
    with run_events(elsewhere, job="nightly", run_id=uuid.uuid4().hex, kind="features") as ev:
        ev.complete()
    assert len(list((tmp_path / "ol").glob("nightly-*.json"))) == 1


def test_an_unreachable_endpoint_only_warns_once(caplog, source_folder):
    spec = LineageSpec.model_validate(
        {"openlineage": {"transport": "http", "url": f"http://127.0.0.1:{free_port()}", "timeout": 2}}
    )
    with (
        caplog.at_level(logging.WARNING, logger="dpipe"),
        run_events(spec, job="j", run_id=uuid.uuid4().hex, kind="train") as ev,
    ):
        ev.start([{"uri": str(source_folder), "format": "parquet"}])
        done = "the run went on"
        ev.complete()
    assert done == "the run went on" and ev.sent == []
    warnings = [r for r in caplog.records if r.name.startswith("dpipe") and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cannot send the START event" in warnings[0].getMessage()
    assert "the run goes on" in warnings[0].getMessage()


def test_transport_none_sends_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DPIPE_HOME", str(tmp_path))
    spec = LineageSpec.model_validate({"openlineage": {"transport": "none"}})
    with run_events(spec, job="j", run_id=uuid.uuid4().hex, kind="train") as ev:
        ev.start()
        ev.complete()
    assert ev.sent == [] and not (tmp_path / "openlineage").exists()


def test_datasets_are_named_by_their_storage_and_never_carry_a_password():
    pg = {"format": "postgresql", "uri": "postgresql://me:s3cret@db.internal:6543/shop", "table": "sales.orders"}
    assert dataset_name(pg) == ("postgres://db.internal:6543", "shop.sales.orders")
    # The sink's Written names its table after the database; the spec and the commit name one dataset.
    written = {"kind": "postgresql", "uri": "postgresql://db.internal:6543/shop/sales.orders", "table": "sales.orders"}
    assert dataset_name(written) == dataset_name(pg)
    assert dataset_name({"format": "postgresql", "uri": "postgresql://h/db", "table": "t"}) == (
        "postgres://h:5432",
        "db.public.t",
    )
    assert dataset_name({"uri": "s3://lake/events/2024/", "format": "parquet"}) == ("s3://lake", "events/2024")
    assert dataset_name({"uri": "s3://key:secret@lake/e/*.parquet"}) == ("s3://lake", "e")
    duck = {"format": "duckdb", "uri": "/data/w.duckdb", "table": "scores"}
    duck_written = {"kind": "duckdb", "uri": "duckdb:///data/w.duckdb/scores", "table": "scores"}
    assert dataset_name(duck) == dataset_name(duck_written) == ("duckdb:///data/w.duckdb", "main.scores")
    delta_read = {"uri": "lake/t", "format": "delta", "lineage": {"kind": "delta", "table_uri": "/abs/lake/t"}}
    assert dataset_name(delta_read) == ("file", "/abs/lake/t")
    iceberg = {"format": "iceberg", "table": "lake.events", "catalog": {"name": "prod", "uri": "http://rest"}}
    assert dataset_name(iceberg) == dataset_name({"kind": "iceberg", "catalog": "prod", "table": "lake.events"})
    assert dataset_name(iceberg) == ("iceberg://prod", "lake.events")


def test_the_lineage_spec_is_strict_and_its_api_key_is_a_secret():
    with pytest.raises(ValidationError, match="needs `url`"):
        LineageSpec.model_validate({"openlineage": {"transport": "http"}})
    with pytest.raises(ValidationError, match=r"\['path'\] do not apply to `transport: http`"):
        LineageSpec.model_validate({"openlineage": {"transport": "http", "url": "http://x", "path": "/tmp/ol"}})
    with pytest.raises(ValidationError, match="http:// or https://"):
        LineageSpec.model_validate({"openlineage": {"transport": "http", "url": "marquez:5000"}})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        LineageSpec.model_validate({"openlineage": {"transprot": "http"}})
    spec = LineageSpec.model_validate({"openlineage": {"transport": "http", "url": "http://m:5000", "api_key": "k"}})
    assert redact(spec.model_dump(mode="json"))["openlineage"]["api_key"] == "***"
    assert LineageSpec().openlineage.transport == "file" and LineageSpec().openlineage.endpoint == "api/v1/lineage"


def test_a_training_run_and_its_predictions_send_their_events(lineage_server, demo_root, tmp_path, client):
    """``dpipe.run`` and ``dpipe.predict`` themselves: START and COMPLETE with what they read and wrote."""
    import dpipe
    from tests.conftest import job_dict

    url = f"http://127.0.0.1:{lineage_server.server_address[1]}"
    lineage = {"openlineage": {"transport": "http", "url": url, "namespace": "team-ml"}}
    job = dpipe.job_from_dict(job_dict(demo_root, tmp_path / "m1", train={"num_boost_round": 3}, lineage=lineage))
    result = dpipe.run(job, client, progress=False)
    events = [r["event"] for r in lineage_server.received]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    complete = events[1]
    assert complete["run"]["runId"] == str(uuid.UUID(result.manifest["run_id"]))
    assert (complete["job"]["namespace"], complete["job"]["name"]) == ("team-ml", "test")
    assert complete["run"]["facets"]["dpipe"]["spec_hash"] == result.manifest["spec_hash"]
    assert [i["name"] for i in complete["inputs"]] == [str(demo_root / "events")]
    assert complete["outputs"][0]["name"] == str(tmp_path / "m1")

    lineage_server.received.clear()
    # The bundle's job said where its events go: its predictions' events go there too.
    dpipe.predict(result.bundle_uri, str(demo_root / "events"), str(tmp_path / "scores"), client=client, progress=False)
    events = [r["event"] for r in lineage_server.received]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    assert events[1]["job"]["name"] == "test.predict" and events[1]["outputs"][0]["name"] == str(tmp_path / "scores")


def test_a_failed_run_sends_fail(lineage_server, demo_root, tmp_path, client):
    import dpipe
    from tests.conftest import job_dict

    url = f"http://127.0.0.1:{lineage_server.server_address[1]}"
    spec = job_dict(demo_root, tmp_path / "m1", lineage={"openlineage": {"transport": "http", "url": url}})
    spec["label"] = {"expr": "converted > 5"}  # one class: a DataError in the fit, after START
    with pytest.raises(DataError, match="one class"):
        dpipe.run(dpipe.job_from_dict(spec), client, progress=False)
    events = [r["event"] for r in lineage_server.received]
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    assert "one class" in events[1]["run"]["facets"]["errorMessage"]["message"]
    assert not (tmp_path / "m1").exists()
