"""dpipe against a real S3 API: a moto server on 127.0.0.1, a fresh bucket per test."""

from __future__ import annotations

import collections
import json

import pyarrow.parquet as pq
import pytest
import s3fs

import dpipe
from dpipe.io.sources import read
from tests.conftest import free_port, job_dict

BUNDLE_FILES = ("model.ubj", "pipeline.json", "metrics.json", "manifest.json")
# Small enough to keep each training run to a few seconds on two cores.
FAST_TRAIN = {"num_boost_round": 8, "early_stopping_rounds": 3}


@pytest.fixture
def s3_events(s3, demo_root):
    """The demo events uploaded to the test bucket; yields ``(s3, uri)``."""
    fs, bucket = s3["fs"], s3["bucket"]
    fs.put(str(demo_root / "events"), f"{bucket}/events", recursive=True)
    fs.invalidate_cache()
    return s3, f"s3://{bucket}/events"


def s3_job(demo_root, s3, source_uri: str, output_uri: str, **sections):
    options = s3["storage_options"]
    return dpipe.job_from_dict(
        job_dict(
            demo_root,
            output_uri,
            source={"uri": source_uri, "storage_options": options},
            output={"storage_options": options},
            train=FAST_TRAIN,
            **sections,
        )
    )


def listing(fs: s3fs.S3FileSystem, path: str) -> list[str]:
    """Every object under ``path`` (S3 has no empty folders, so this is everything left behind)."""
    fs.invalidate_cache()
    return sorted(fs.find(path))


def local_files(demo_root) -> list:
    return sorted((demo_root / "events").rglob("*.parquet"))


# -- run and predict ---------------------------------------------------------------------------
def test_run_writes_bundle_to_s3_then_predict_reads_it(s3_events, demo_root, client):
    s3, events = s3_events
    fs, bucket = s3["fs"], s3["bucket"]
    bundle_uri = f"s3://{bucket}/runs/m1"
    job = s3_job(demo_root, s3, events, bundle_uri)

    result = dpipe.run(job, client=client, progress=False)

    assert result.bundle_uri == bundle_uri
    written = listing(fs, f"{bucket}/runs")
    for name in BUNDLE_FILES:
        assert f"{bucket}/runs/m1/{name}" in written
    assert not [p for p in written if ".dpipe-staging" in p]
    manifest_text = fs.cat_file(f"{bucket}/runs/m1/manifest.json").decode()
    manifest = json.loads(manifest_text)
    assert "testing" not in manifest_text  # the key and secret values
    assert s3["endpoint"] not in manifest_text
    assert sorted(manifest["spec"]["source"]["storage_options"]) == ["client_kwargs", "key", "secret"]
    assert len(manifest["input"]["files"]) == len(local_files(demo_root))
    assert all(f.startswith(f"s3://{bucket}/events/date=") for f in manifest["input"]["files"])
    assert manifest["rows"]["read"] == 20_000

    scores = f"s3://{bucket}/scores"
    predicted = dpipe.predict(
        bundle_uri, events, scores, client=client, storage_options=s3["storage_options"], progress=False
    )

    assert predicted.output_uri == scores
    assert predicted.rows == 20_000
    written = listing(fs, f"{bucket}/scores")
    assert f"{bucket}/scores/_SUCCESS" in written
    assert not [p for p in listing(fs, bucket) if ".dpipe-staging" in p]
    parts = [p for p in written if p.endswith(".parquet")]
    assert parts
    tables = [pq.read_table(fs.open(p, "rb")) for p in parts]
    assert sum(t.num_rows for t in tables) == 20_000
    for t in tables:
        assert {"event_id", "prediction"} <= set(t.column_names)
        probs = t.column("prediction").to_pylist()
        assert all(0.0 <= p <= 1.0 for p in probs)
    ids = {i for t in tables for i in t.column("event_id").to_pylist()}
    assert len(ids) == 20_000


def test_failed_run_leaves_nothing_at_the_output(s3_events, demo_root, client):
    s3, events = s3_events
    fs, bucket = s3["fs"], s3["bucket"]
    job = s3_job(demo_root, s3, events, f"s3://{bucket}/runs/m1", label={"expr": "sessions > 1000"})

    with pytest.raises(dpipe.DataError, match=r"label: every training row has label 0\.0: one class"):
        dpipe.run(job, client=client, progress=False)

    assert listing(fs, f"{bucket}/runs") == []
    assert not fs.exists(f"{bucket}/runs/m1")


def test_failed_run_keeps_the_previous_bundle(s3_events, demo_root, client):
    s3, events = s3_events
    fs, bucket = s3["fs"], s3["bucket"]
    fs.pipe(f"{bucket}/runs/m1/manifest.json", b'{"job": "previous"}')
    job = s3_job(demo_root, s3, events, f"s3://{bucket}/runs/m1", label={"expr": "sessions > 1000"})

    with pytest.raises(dpipe.DataError, match="one class"):
        dpipe.run(job, client=client, progress=False)

    assert listing(fs, f"{bucket}/runs") == [f"{bucket}/runs/m1/manifest.json"]
    assert fs.cat_file(f"{bucket}/runs/m1/manifest.json") == b'{"job": "previous"}'


# -- reading -----------------------------------------------------------------------------------
def test_partition_filter_prunes_s3_files(s3_events, demo_root):
    s3, events = s3_events
    options = s3["storage_options"]
    everything = read(events, storage_options=options)
    day = sorted(p.parent.name for p in local_files(demo_root))[0].removeprefix("date=")

    one_day = read(events, filters=[["date", "==", day]], storage_options=options)

    assert len(everything.files) == len(local_files(demo_root)) > len(one_day.files) > 0
    assert all(f"/date={day}/" in f for f in one_day.files)
    frame = one_day.frame.compute(scheduler="sync")
    assert len(frame) > 0
    assert set(frame["date"].astype(str)) == {day}


def test_credentials_and_endpoint_from_environment(s3_events, demo_root, monkeypatch):
    s3, events = s3_events
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3["endpoint"])
    s3fs.S3FileSystem.clear_instance_cache()

    source = read(events)

    assert len(source.files) == len(local_files(demo_root))
    frame = source.frame.compute(scheduler="sync")
    assert len(frame) == 20_000
    assert {"event_id", "age", "date"} <= set(frame.columns)


def test_lineage_of_s3_files_is_their_size_and_etag_from_one_listing(s3_events, monkeypatch):
    s3, events = s3_events
    fs = s3["fs"]
    calls: collections.Counter = collections.Counter()
    call_s3 = s3fs.S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):
        calls[getattr(method, "__name__", method)] += 1
        return await call_s3(self, method, *args, **kwargs)

    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
    source = read(events, storage_options=s3["storage_options"])
    lineage, nbytes = source.lineage(), source.nbytes
    monkeypatch.undo()

    # Sizes and ETags come with the listing: no HEAD per file (at most one of the prefix). Each
    # file's footer is read once (one ranged GET), to unify the schemas across files.
    assert calls["head_object"] <= 1 and calls["get_object"] == len(source.files)
    assert lineage["kind"] == "files" and lineage["versioned_by"] == "etag"
    assert [d["id"] for d in lineage["datums"]] == source.files and len(source.files) == 4
    fs.invalidate_cache()
    for datum in source.datums:
        info = fs.info(datum.id)
        assert (datum.size, datum.version) == (info["size"], info["ETag"].strip('"'))
    assert nbytes == sum(d.size for d in source.datums)


# -- errors ------------------------------------------------------------------------------------
def test_missing_bucket_is_a_storage_error_naming_the_uri(s3):
    uri = "s3://no-such-bucket-dpipe/events"

    with pytest.raises(dpipe.StorageError, match=r"source\.uri: 's3://no-such-bucket-dpipe/events' does not exist"):
        read(uri, storage_options=s3["storage_options"])


def test_missing_bucket_fails_a_run_before_training(s3, demo_root, client):
    job = s3_job(demo_root, s3, "s3://no-such-bucket-dpipe/events", f"s3://{s3['bucket']}/runs/m1")

    with pytest.raises(dpipe.StorageError, match="no-such-bucket-dpipe") as info:
        dpipe.run(job, client=client, progress=False)

    assert "Hint:" in str(info.value)
    assert listing(s3["fs"], f"{s3['bucket']}/runs") == []


def test_unreachable_endpoint_is_a_storage_error_without_the_secret():
    secret = "sEcReT-value-123"
    options = {
        "key": "AKIDEXAMPLE",
        "secret": secret,
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_port()}"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }

    with pytest.raises(
        dpipe.StorageError, match=r"(?s)cannot reach the storage for 's3://bucket/events'.*Hint:.*endpoint"
    ) as info:
        read("s3://bucket/events", storage_options=options)

    assert secret not in str(info.value)
    assert "AKIDEXAMPLE" not in str(info.value)


def test_unknown_storage_option_is_a_storage_error_naming_the_key(s3):
    options = {**s3["storage_options"], "secrett": "hunter2"}

    with pytest.raises(dpipe.StorageError, match=r"storage_options are not accepted.*'secrett'") as info:
        read(f"s3://{s3['bucket']}/events", storage_options=options)

    assert "hunter2" not in str(info.value)


def test_bad_credentials_are_a_storage_error_without_the_secret(s3_server_with_auth, demo_root, tmp_path):
    options = {
        "key": "AKIAWRONGKEY",
        "secret": "not-the-secret-123",
        "client_kwargs": {"endpoint_url": s3_server_with_auth},
    }
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(dpipe.StorageError) as info:
        read("s3://some-bucket/events", storage_options=options)
    text = str(info.value)
    assert "source.uri: access to 's3://some-bucket/events' was denied" in text
    assert "Hint: check the credentials" in text
    assert "not-the-secret-123" not in text and "AKIAWRONGKEY" not in text

    # The same through the CLI: one line, exit 1, nothing written locally either.
    import subprocess
    import sys

    import yaml

    spec = job_dict(demo_root, tmp_path / "out", source={"uri": "s3://some-bucket/events", "storage_options": options})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [sys.executable, "-m", "dpipe.cli", "run", str(tmp_path / "job.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.count("dpipe: error: source.uri: access to 's3://some-bucket/events' was denied") == 1
    assert "not-the-secret-123" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


# -- throttling ------------------------------------------------------------------------------
def test_throttled_reads_are_retried_with_backoff(s3_events, client):
    from tests.throttling import throttling_proxy

    s3, events = s3_events
    with throttling_proxy(s3["endpoint"], throttle=2) as (endpoint, throttle):
        options = {**s3["storage_options"], "client_kwargs": {"endpoint_url": endpoint}}
        s3fs.S3FileSystem.clear_instance_cache()
        rows = client.compute(read(events, storage_options=options).frame.map_partitions(len).sum()).result()
    assert rows == 20_000
    # Every object read was refused twice (503 SlowDown) before it was served.
    assert len(throttle.refused) >= len(s3["fs"].find(f"{s3['bucket']}/events"))
    assert set(throttle.refused.values()) == {2}


def test_throttled_past_the_retries_is_a_storage_error_naming_it(s3_events, client):
    from tests.throttling import throttling_proxy

    s3, events = s3_events
    with throttling_proxy(s3["endpoint"], throttle=None) as (endpoint, throttle):
        options = {
            **s3["storage_options"],
            "client_kwargs": {"endpoint_url": endpoint},
            "config_kwargs": {"retries": {"max_attempts": 2}},
        }
        s3fs.S3FileSystem.clear_instance_cache()
        # Planning on the client.
        with pytest.raises(dpipe.StorageError, match=r"source.uri: the storage throttled the requests for 's3://"):
            read(events, storage_options=options)
        # Reading on a worker, once planned.
        throttle.throttle = 0
        frame = read(events, storage_options=options).frame
        throttle.throttle = None
        with pytest.raises(
            dpipe.StorageError, match=r"the storage throttled worker .* reading 's3://.*after its"
        ) as info:
            client.compute(frame.map_partitions(len).sum()).result()
    assert "Hint: read with fewer workers or threads at once" in str(info.value)
