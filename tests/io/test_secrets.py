"""A sentinel secret, passed in every way S3 credentials can be passed, never appears in a log
line, an error, the bundle (manifest, metrics, report), predictions or an OpenLineage event,
on success and on the error paths."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import s3fs

import dpipe
from dpipe.errors import DpipeError
from tests.conftest import job_dict

SENTINEL = "sentinel-Secret-9b1e4d"
FAST_TRAIN = {"num_boost_round": 5, "early_stopping_rounds": 2}


def everything_written(s3, bucket_prefix: str, *local: Path) -> dict[str, str]:
    """Every text file under the bucket prefix, the local folders and DPIPE_HOME (lineage events)."""
    fs = s3["fs"]
    fs.invalidate_cache()
    out = {p: fs.cat_file(p).decode("utf-8", "replace") for p in fs.find(bucket_prefix)}
    for root in (*local, Path(os.environ["DPIPE_HOME"])):
        for path in Path(root).rglob("*"):
            if path.is_file():
                out[str(path)] = path.read_bytes().decode("utf-8", "replace")
    return out


@pytest.fixture
def events(s3, demo_root):
    s3["fs"].put(str(demo_root / "events"), f"{s3['bucket']}/events", recursive=True)
    s3["fs"].invalidate_cache()
    return f"s3://{s3['bucket']}/events"


@pytest.mark.parametrize("how", ["storage_options", "env-interpolation", "aws-environment"])
def test_the_secret_is_nowhere_after_a_run_and_a_prediction(
    how, s3, events, demo_root, client, tmp_path, caplog, monkeypatch
):
    endpoint = {"client_kwargs": {"endpoint_url": s3["endpoint"]}}
    if how == "storage_options":
        options = {"key": "testing", "secret": SENTINEL, **endpoint}
    elif how == "env-interpolation":
        monkeypatch.setenv("DPIPE_TEST_SECRET", SENTINEL)
        options = {"key": "testing", "secret": "${DPIPE_TEST_SECRET}", **endpoint}
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SENTINEL)
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3["endpoint"])
        options = {}
    s3fs.S3FileSystem.clear_instance_cache()
    bundle = f"s3://{s3['bucket']}/runs/m1"
    spec = job_dict(
        demo_root,
        bundle,
        source={"uri": events, "storage_options": options},
        output={"storage_options": options, "test_predictions": True},
        split={"valid_fraction": 0.2, "test_fraction": 0.2},
        train=FAST_TRAIN,
    )
    with caplog.at_level(logging.DEBUG, logger="dpipe"):
        result = dpipe.run(dpipe.job_from_dict(spec), client=client, progress=True)
        dpipe.predict(
            result.bundle_uri,
            events,
            f"s3://{s3['bucket']}/scores",
            client=client,
            storage_options=options or None,
            progress=True,
        )
    assert SENTINEL not in caplog.text
    assert SENTINEL not in repr(result.manifest) + repr(result.metrics)
    written = everything_written(s3, f"{s3['bucket']}/", tmp_path)
    assert len(written) > 10
    leaked = [path for path, text in written.items() if SENTINEL in text]
    assert leaked == []


def test_the_secret_is_in_no_error_and_no_failed_run_event(s3, events, demo_root, client, tmp_path, caplog):
    options = {"key": "testing", "secret": SENTINEL, "client_kwargs": {"endpoint_url": s3["endpoint"]}}
    failures = {
        "missing bucket": {"source": {"uri": "s3://no-such-bucket-dpipe/x", "storage_options": options}},
        "bad parameter": {
            "source": {"uri": events, "storage_options": options},
            "train": {**FAST_TRAIN, "params": {"max_depth": -3}},
        },
        "missing column": {"source": {"uri": events, "storage_options": options}, "label": {"column": "nope"}},
    }
    for name, sections in failures.items():
        spec = job_dict(
            demo_root,
            f"s3://{s3['bucket']}/runs/{name.replace(' ', '-')}",
            output={"storage_options": options},
            **sections,
        )
        with caplog.at_level(logging.DEBUG, logger="dpipe"), pytest.raises(DpipeError) as info:
            dpipe.run(dpipe.job_from_dict(spec), client=client, progress=True)
        assert SENTINEL not in str(info.value), name
        assert SENTINEL not in repr(info.value.__cause__), name
    assert SENTINEL not in caplog.text
    leaked = [path for path, text in everything_written(s3, f"{s3['bucket']}/", tmp_path).items() if SENTINEL in text]
    assert leaked == []
