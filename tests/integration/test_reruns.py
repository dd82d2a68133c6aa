"""Reruns that skip what did not change: the same spec on the same input does no computation."""

from __future__ import annotations

import shutil

import deltalake
import pytest

import dpipe
from tests.conftest import job_dict


class CountingClient:
    """The session client, counting what is submitted to it (a rerun that skips submits nothing)."""

    def __init__(self, client):
        self._client, self.computed = client, 0

    def compute(self, *args, **kwargs):
        self.computed += 1
        return self._client.compute(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


@pytest.fixture
def events(demo_root, tmp_path):
    """A copy of the demo events that a test may add files to."""
    shutil.copytree(demo_root / "events", tmp_path / "events")
    return tmp_path / "events"


def features_spec(events, output: dict) -> dict:
    return {
        "kind": "features",
        "source": {"uri": str(events)},
        "features": [{"op": "standard_scale", "columns": ["income"]}],
        "output": output,
    }


@pytest.mark.parametrize("kind", ["delta", "parquet"])
def test_an_unchanged_features_job_does_nothing_and_says_so(events, tmp_path, client, kind, caplog):
    uri = str(tmp_path / "out")
    job = dpipe.job_from_dict(features_spec(events, {"format": kind, "uri": uri}))
    first = dpipe.run(job, client, progress=False)
    assert first.rows["written"] == 20000
    counting = CountingClient(client)
    with caplog.at_level("INFO", logger="dpipe"):
        again = dpipe.run(job, counting, progress=False)
    assert again.output["skipped"] and counting.computed == 0 and set(again.timings) <= {"plan"}
    assert "unchanged:" in caplog.text and "--force" in caplog.text
    forced = dpipe.run(job, counting, progress=False, force=True)
    assert forced.rows["written"] == 20000 and counting.computed > 0
    if kind == "delta":  # forced: appended again, as asked
        assert len(deltalake.DeltaTable(uri).to_pandas()) == 40000


def test_a_new_file_makes_the_features_job_run_again(events, tmp_path, client):
    job = dpipe.job_from_dict(features_spec(events, {"format": "delta", "uri": str(tmp_path / "out")}))
    dpipe.run(job, client, progress=False)
    shutil.copytree(events / "date=2024-01-04", events / "date=2024-01-05")
    again = dpipe.run(job, client, progress=False)
    assert not again.output.get("skipped") and again.rows["written"] == 20000 + 5000


def test_an_unchanged_training_job_keeps_its_bundle(events, demo_root, tmp_path, client, monkeypatch):
    from dpipe import stages

    bundle = tmp_path / "bundle"
    spec = job_dict(demo_root, bundle, source={"uri": str(events)}, train={"num_boost_round": 3})
    first = dpipe.run(dpipe.job_from_dict(spec), client, progress=False)
    model = (bundle / "model.ubj").stat().st_mtime_ns

    def no_work(*args, **kwargs):
        raise AssertionError("an unchanged rerun computed")

    with monkeypatch.context() as patched:
        patched.setattr(stages, "prepass", no_work)
        patched.setattr(stages, "fit", no_work)
        again = dpipe.run(dpipe.job_from_dict(spec), client, progress=False)
    assert (bundle / "model.ubj").stat().st_mtime_ns == model
    assert again.metrics == first.metrics and again.manifest["content_key"] == first.manifest["content_key"]
    more_rounds = {**spec, "train": {**spec["train"], "num_boost_round": 4}}
    changed = dpipe.run(dpipe.job_from_dict(more_rounds), client, progress=False)
    assert changed.manifest["content_key"] != first.manifest["content_key"]
    forced = dpipe.run(dpipe.job_from_dict(more_rounds), client, progress=False, force=True)
    assert forced.timings and forced.manifest["finished_at"] != changed.manifest["finished_at"]
