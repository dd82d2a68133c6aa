"""The model lifecycle end to end: a training run registers its bundle, predict loads it by alias,
the promotion gate scores the candidate and the champion on the same rows, and a drifted batch
retrains, registers the challenger and promotes it only through the gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import log_loss, roc_auc_score

import dpipe
from dpipe.cli import main
from dpipe.errors import SpecError
from dpipe.monitor import retrain
from dpipe.registry import Registry
from dpipe.scoring import score_bundle
from tests.conftest import job_dict


@pytest.fixture(scope="module")
def lake(demo_root, tmp_path_factory) -> Path:
    """The demo events with the last date held out: the gate's evaluation rows."""
    root = tmp_path_factory.mktemp("lifecycle")
    shutil.copytree(demo_root / "events", root / "events")
    last = sorted((root / "events").glob("date=*"))[-1]
    (root / "holdout").mkdir()
    shutil.move(str(last), root / "holdout" / last.name)
    return root


def _job(lake: Path, out: Path, rounds: int, **registry):
    spec = job_dict(lake, out, train={"num_boost_round": rounds, "early_stopping_rounds": None})
    spec["registry"] = {"uri": str(lake / "registry"), "name": "churn", **registry}
    return dpipe.job_from_dict(spec)


@pytest.fixture
def on_session_cluster(client, monkeypatch):
    """Commands the tests call in-process connect to the session cluster, not a new one."""
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", client.scheduler.address)


def test_a_run_registers_and_predict_loads_by_alias(lake, client, tmp_path, capsys, on_session_cluster):
    result = dpipe.run(_job(lake, tmp_path / "b1", 12, aliases=["challenger"]), client, progress=False)
    assert result.registered["name"] == "churn" and result.registered["aliases"] == ["challenger"]
    number = result.registered["version"]
    registry = Registry(str(lake / "registry"))
    version = registry.show("churn", "challenger")
    assert version.number == number and (Path(version.uri) / "report.html").exists()
    scores = tmp_path / "scores"
    code = main(
        ["predict", "models:/churn@challenger", "--source", str(lake / "holdout"), "--output", str(scores)]
        + ["--registry", str(lake / "registry"), "-q"]
    )
    assert code == 0
    manifest = json.loads((scores / "_dpipe_manifest.json").read_text())["manifest"]
    assert manifest["model"] == "models:/churn@challenger" and manifest["bundle"].endswith(f"versions/{number}")
    with pytest.raises(SpecError, match=r"no alias .champion.; aliases: {.challenger.: 1}"):
        dpipe.predict(
            "models:/churn@champion", str(lake / "holdout"), str(tmp_path / "x"), registry=str(lake / "registry")
        )
    assert not (tmp_path / "x").exists()


def test_score_bundle_is_exact_on_the_evaluation_rows(lake, client, tmp_path):
    result = dpipe.run(_job(lake, tmp_path / "b", 10), client, progress=False)
    scores = score_bundle(result.bundle_uri, str(lake / "holdout"), client=client)
    dpipe.predict(result.bundle_uri, str(lake / "holdout"), str(tmp_path / "p"), client=client, progress=False)
    predicted = pd.read_parquet(tmp_path / "p").merge(
        pd.read_parquet(lake / "holdout", columns=["event_id", "converted"]), on="event_id"
    )
    assert scores["auc"] == pytest.approx(roc_auc_score(predicted["converted"], predicted["prediction"]), abs=1e-12)
    assert scores["logloss"] == pytest.approx(log_loss(predicted["converted"], predicted["prediction"]), rel=1e-6)


def test_the_gate_promotes_only_a_better_candidate(lake, client, tmp_path, capsys, on_session_cluster):
    reg = str(lake / "registry-gate")
    good = dpipe.run(_job(lake, tmp_path / "good", 30), client, progress=False).bundle_uri
    weak = dpipe.run(_job(lake, tmp_path / "weak", 1), client, progress=False).bundle_uri
    for bundle in (good, weak):
        assert main(["register", bundle, "--name", "churn", "--registry", reg, "--json"]) == 0
    capsys.readouterr()
    gate = ["--metric", "auc", "--margin", "0.001", "--source", str(lake / "holdout"), "--registry", reg, "--json"]
    assert main(["registry", "promote", "churn", "1", *gate]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["promoted"] and first["champion"] is None
    main(["registry", "promote", "churn", "2", *gate])
    second = json.loads(capsys.readouterr().out)
    assert not second["promoted"] and second["champion"] == 1
    assert second["candidate_score"] < second["champion_score"]
    assert Registry(reg).show("churn", "champion").number == 1
    # The decision and both scores are in the journal.
    journal = json.dumps(Registry(reg).journal("churn"), default=str)
    assert str(second["candidate_score"]) in journal and str(second["champion_score"]) in journal


def test_a_drifted_batch_retrains_registers_the_challenger_and_promotes_through_the_gate(lake, client, tmp_path):
    reg = str(lake / "registry-retrain")
    gate = {"metric": "auc", "margin": 0.0, "source": {"uri": str(lake / "holdout")}}
    first = _job(lake, tmp_path / "v1", 30, gate=gate)
    job = first.model_copy(update={"registry": first.registry.model_copy(update={"uri": reg})})
    done = retrain(job, client=client, progress=False)
    assert done["version"] == "models:/churn/1" and done["decision"]["promoted"]
    weaker = dpipe.job_from_dict(
        {**json.loads(job.model_dump_json()), "train": {**job.train.model_dump(), "num_boost_round": 1}}
        | {"output": {"uri": str(tmp_path / "v2")}}
    )
    again = retrain(weaker, client=client, progress=False)
    assert again["version"] == "models:/churn/2" and not again["decision"]["promoted"]
    registry = Registry(reg)
    assert registry.show("churn", "champion").number == 1
    assert registry.show("churn", "challenger").number == 2


def test_a_tuned_run_keeps_the_best_trials_model_and_every_trial(lake, client, tmp_path):
    spec = job_dict(lake, tmp_path / "tuned", train={"num_boost_round": 12, "early_stopping_rounds": 3})
    spec["tune"] = {
        "space": {"eta": {"low": 0.05, "high": 0.5, "log": True}, "max_depth": {"low": 2, "high": 5}},
        "n_trials": 3,
        "seed": 1,
        "storage": str(tmp_path / "study.db"),
    }
    result = dpipe.run(dpipe.job_from_dict(spec), client, progress=False)
    trials = json.loads((tmp_path / "tuned" / "tuning.json").read_text())["trials"]
    assert len(trials) == 3 and all(t["state"] in ("complete", "pruned") for t in trials)
    best = result.manifest["tuning"]
    done = [t for t in trials if t["state"] == "complete"]
    assert best["best_trial"] == max(done, key=lambda t: t["value"])["number"]
    assert result.metrics["valid"]["auc"] == pytest.approx(max(t["value"] for t in done))
    assert best["params"]["eta"] == next(t for t in trials if t["number"] == best["best_trial"])["params"]["eta"]
    page = (tmp_path / "tuned" / "report.html").read_text()
    assert '<section id="tuning">' in page and page.count("<tr><td>") >= 3 + len(trials)
