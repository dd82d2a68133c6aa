"""Hyperparameter tuning: the tune: section's messages, and trials on the session cluster that
reuse one pair of quantile matrices, prune at checkpoints, stop early across segments and resume."""

from __future__ import annotations

import dataclasses
import typing

import optuna
import pytest
import xgboost as xgb
import xgboost.dask
from pydantic import ValidationError
from sklearn.metrics import log_loss, roc_auc_score

from dpipe import stages
from dpipe import train as dtrain
from dpipe import tune as dtune
from dpipe.columns import LABEL
from dpipe.errors import SpecError, StorageError, TrainingError
from dpipe.plan import plan
from dpipe.spec import JobSpec, job_from_dict
from dpipe.spec.load import spec_error_from
from dpipe.spec.tune import PruningSpec, TuneSpec, default_storage, direction_of
from dpipe.train import TrainConfig
from dpipe.tune.resident import Resident
from tests.conftest import job_dict

SPACE = {"eta": {"low": 0.01, "high": 0.3, "log": True}, "max_depth": {"low": 2, "high": 6}}


def tune_spec(data: dict) -> TuneSpec:
    """Validate a ``tune:`` section as a job spec would, with its messages."""
    try:
        return TuneSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_error_from(exc, "job.yaml", root=TuneSpec) from None


# -- the section ------------------------------------------------------------------------------
def test_a_space_of_ranges_and_choices():
    spec = tune_spec(
        {
            "space": {**SPACE, "subsample": {"low": 0.5, "high": 1.0}, "grow_policy": {"choices": ["lossguide"]}},
            "timeout": "10m",
        }
    )
    kinds = {name: dim.kind for name, dim in spec.space.items()}
    assert kinds == {"eta": "float", "max_depth": "int", "subsample": "float", "grow_policy": "choice"}
    assert spec.timeout == 600.0 and spec.n_trials == 20 and spec.parallel == 1
    assert "name" not in spec.model_dump()["space"]["eta"]
    assert spec.metric_for(["logloss", "auc"]) == "auc" and spec.direction_for("auc") == "maximize"
    # The budget is not part of what a study is: asking for more trials resumes it.
    more = tune_spec(
        {"space": {**SPACE, "subsample": {"low": 0.5, "high": 1.0}, "grow_policy": {"choices": ["lossguide"]}}}
    )
    assert more.identity() == spec.identity()


@pytest.mark.parametrize(
    ("metric", "direction"),
    [("auc", "maximize"), ("aucpr", "maximize"), ("ndcg@5", "maximize"), ("map", "maximize"), ("logloss", "minimize"),
     ("rmse", "minimize"), ("error@0.7", "minimize"), ("mlogloss", "minimize")],
)  # fmt: skip
def test_direction_follows_the_metric(metric, direction):
    assert direction_of(metric) == direction


BAD_SPACES = [
    ({"max_bin": {"low": 64, "high": 512}}, r"space\.max_bin: cannot be tuned: the quantile matrices are built once"),
    ({"objective": {"choices": ["binary:hinge"]}}, r"space\.objective: cannot be tuned: every trial optimises"),
    ({"eval_metric": {"choices": ["auc"]}}, r"space\.eval_metric: cannot be tuned"),
    ({"n_estimators": {"low": 10, "high": 100}}, r"space\.n_estimators: cannot be tuned: rounds are"),
    ({"etaa": {"low": 0.1, "high": 0.2}}, r"space\.etaa: not a tunable XGBoost parameter \(did you mean 'eta'\?\); known: \['alpha'"),
    ({"eta": {"low": 0.3, "high": 0.01}}, r"space\.eta: empty range: low 0\.3 is above high 0\.01"),
    ({"eta": {"low": 0.1, "high": 0.1}}, r"space\.eta: empty range: low 0\.1 equals high 0\.1; to fix the value, set `train\.params\.eta`"),
    ({"gamma": {"low": 0, "high": 1, "log": True}}, r"space\.gamma: `log: true` needs low above 0; got low 0"),
    ({"grow_policy": {"choices": []}}, r"space\.grow_policy: `choices` is empty; give at least one value"),
    ({"max_depth": {"choices": [4, 4]}}, r"space\.max_depth: `choices` repeats 4"),
    ({"grow_policy": {"choices": ["depthwise", "widthwise"]}}, r"choices \['widthwise'\] are not valid values; XGBoost takes one of \['depthwise', 'lossguide'\]"),
    ({"grow_policy": {"low": 0, "high": 1}}, r"space\.grow_policy: takes one of \['depthwise', 'lossguide'\]: give `choices`, not a range"),
    ({"eta": {"low": 0.1, "high": 0.2, "choices": [0.1]}}, r"give either `choices` or a range \(`low`, `high`\), not both"),
    ({"eta": {"low": 0.1}}, r"space\.eta: give a range `\{low: \.\., high: \.\.\}` or `choices: \[\.\.\]`; got only one of"),
    ({"eta": {}}, r"got neither of `low` and `high`"),
    ({"eta": {"lo": 0.1, "high": 0.2}}, r"space\.eta: unknown key\(s\) \['lo'\]; a dimension takes .* \(did you mean 'low'\?\)"),
    ({"max_depth": {"low": 2.5, "high": 6}}, r"space\.max_depth: an integer range needs whole-number `low`, `high` and `step`"),
    ({"max_depth": {"low": 2, "high": 6, "type": "float"}}, r"space\.max_depth: an integer parameter: leave out `type`"),
    ({"subsample": {"low": 0.5, "high": 1.5}}, r"space\.subsample: range \[0\.5, 1\.5\] leaves what XGBoost takes: float in \(0, 1\]"),
    ({"max_depth": {"choices": [4, 6.5]}}, r"choices \[6\.5\] are not valid values; XGBoost takes int in \[0, inf\)"),
    ({"eta": {"low": 0.01, "high": 0.3, "log": True, "step": 0.01}}, r"`step` and `log: true` cannot be combined"),
    ({"eta": {"low": 0.01, "high": 0.3}, "learning_rate": {"low": 0.01, "high": 0.3}}, r"space: `eta` and `learning_rate` are the same XGBoost parameter"),
]  # fmt: skip


@pytest.mark.parametrize(("space", "message"), BAD_SPACES, ids=[next(iter(s)) for s, _ in BAD_SPACES])
def test_one_clear_message_per_bad_dimension(space, message):
    with pytest.raises(SpecError, match=message):
        tune_spec({"space": space})


def test_every_bad_dimension_is_reported_at_once():
    with pytest.raises(SpecError, match=r"\(3 problems\)") as caught:
        tune_spec(
            {"space": {"max_bin": {"low": 1, "high": 2}, "eta": {"low": 1, "high": 0}, "depth": {"choices": [1]}}}
        )
    assert [loc for loc, _ in caught.value.problems] == ["space.max_bin", "space.eta", "space.depth"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"space": {}}, r"space: Dictionary should have at least 1 item"),
        ({"space": SPACE, "timeout": "soon"}, r"timeout: timeout: 'soon' is not a duration"),
        ({"space": SPACE, "timeout": 0}, r"timeout: Input should be greater than 0"),
        ({"space": SPACE, "n_trials": 0}, r"n_trials: Input should be greater than or equal to 1"),
        ({"space": SPACE, "pruning": {"checkpoints": [0.3, 0.1]}}, r"pruning\.checkpoints: checkpoints must increase"),
        ({"space": SPACE, "pruning": {"checkpoints": [0.5, 1.0]}}, r"between 0 and 1; got \[1\.0\]"),
        (
            {"space": SPACE, "pruning": {"pruner": "hyperband"}},
            r"pruning\.pruner: Input should be 'median' or 'percentile'",
        ),
        ({"space": SPACE, "study": "my study"}, r"study: study names use letters, digits and `_\.:-`"),
        (
            {"space": SPACE, "direction": "up"},
            r"direction: Input should be '(minimize|maximize)' or '(minimize|maximize)'",
        ),
        ({"space": SPACE, "trials": 5}, r"trials: unknown key; allowed keys: .* \(did you mean 'n_trials'\?\)"),
    ],
)
def test_bad_settings(data, message):
    with pytest.raises(SpecError, match=message):
        tune_spec(data)


def test_checkpoints_become_rounds():
    assert PruningSpec(checkpoints=[0.1, 0.3]).steps(100) == [10, 30]
    assert PruningSpec(checkpoints=[0.001, 0.002, 0.5]).steps(10) == [1, 5]  # at least one round, distinct
    assert PruningSpec.model_validate(False).steps(100) == []
    assert PruningSpec(checkpoints=[0.9]).steps(1) == []  # nothing to check before the end


def test_the_registries_match_the_spec():
    assert set(dtune.PRUNERS) == set(typing.get_args(PruningSpec.model_fields["pruner"].annotation))
    assert set(dtune.SAMPLERS) == set(typing.get_args(TuneSpec.model_fields["sampler"].annotation))


def test_default_storage_and_study(tmp_path, monkeypatch):
    monkeypatch.setenv("DPIPE_HOME", str(tmp_path / "home"))
    assert default_storage("churn", "runs/churn/") == "runs/churn.tune.db"
    assert default_storage("churn", "file:///data/runs/churn") == "/data/runs/churn.tune.db"
    assert default_storage("churn", "s3://bucket/runs/churn") == str(tmp_path / "home" / "tune" / "churn.db")
    assert dtune.storage_url("postgresql://me:pw@db/optuna") == "postgresql://me:pw@db/optuna"
    assert dtune.storage_url(str(tmp_path / "new" / "s.db")) == f"sqlite:///{tmp_path}/new/s.db"
    assert (tmp_path / "new").is_dir()
    with pytest.raises(StorageError, match=r"tune\.storage: cannot create the folder of"):
        dtune.storage_url("/dev/null/s.db")

    class Job(JobSpec):  # the lead adds `tune:` to JobSpec; the study name only needs the field
        tune: TuneSpec | None = None

    def study(**changes) -> str:
        base = {"name": "churn", "source": {"uri": "data/x"}, "label": {"column": "y"}, "output": {"uri": "runs/a"}}
        tune = {"space": SPACE, **changes.pop("tune", {})}
        return dtune.default_study(Job.model_validate({**base, **changes, "tune": tune}))

    first = study()
    assert first.startswith("churn-") and len(first) == len("churn-") + 12
    assert study(tune={"n_trials": 50, "timeout": 60, "storage": "x.db"}) == first
    assert study(output={"uri": "runs/b"}, cluster={"n_workers": 4}) == first
    assert study(tune={"space": {"eta": {"low": 0.01, "high": 0.2}}}) != first
    assert study(train={"num_boost_round": 10}) != first


# -- trials on the cluster ----------------------------------------------------------------------
class CountingCompute:
    def __init__(self, client):
        self.client = client

    def __call__(self, *collections):
        return tuple(self.client.gather(self.client.compute(list(collections))))


ROUNDS = 30


@pytest.fixture(scope="module")
def placed(client, demo_root, tmp_path_factory):
    job = job_from_dict(
        job_dict(demo_root, tmp_path_factory.mktemp("tune") / "bundle", train={"num_boost_round": ROUNDS})
    )
    p = plan(job)
    gate = stages.quality_gate(p)
    pre = stages.prepass(p, gate, CountingCompute(client))
    fitted = stages.fit(p, gate, pre, CountingCompute(client))
    return job, stages.place(client, p, fitted, gate, pre)


@pytest.fixture
def base(placed):
    return TrainConfig.from_spec(placed[0].train)


def run(client, placed, base, tmp_path, study="s", **section) -> dtune.TuneResult:
    spec = TuneSpec.model_validate({"space": SPACE, "sampler": "random", **section})
    return dtune.tune(client, placed[1], base, spec, study_name=study, storage=str(tmp_path / "study.db"))


@pytest.fixture
def sketches(monkeypatch):
    """Counts quantile_matrices calls, DaskQuantileDMatrix handles and the builds of the worker-side
    matrices (the sketches); xgboost.dask.train, which sketches again at every call, must not run."""
    counts = {"quantile_matrices": 0, "DaskQuantileDMatrix": 0, "Resident.build": 0}
    original = dtrain.quantile_matrices

    def counting(*args, **kwargs):
        counts["quantile_matrices"] += 1
        return original(*args, **kwargs)

    class Counted(xgb.dask.DaskQuantileDMatrix):
        def __init__(self, *args, **kwargs):
            counts["DaskQuantileDMatrix"] += 1
            super().__init__(*args, **kwargs)

    original_build = Resident.build.__func__

    def building(cls, *args, **kwargs):
        counts["Resident.build"] += 1
        return original_build(cls, *args, **kwargs)

    def no_dask_train(*args, **kwargs):
        raise AssertionError("xgboost.dask.train sketches its matrices again at every call")

    monkeypatch.setattr(dtrain, "quantile_matrices", counting)
    monkeypatch.setattr(xgb.dask, "DaskQuantileDMatrix", Counted)
    monkeypatch.setattr(Resident, "build", classmethod(building))
    monkeypatch.setattr(xgb.dask, "train", no_dask_train)
    return counts


def test_trials_reuse_one_pair_of_matrices_and_the_best_model_is_returned(client, placed, base, tmp_path, sketches):
    result = run(client, placed, base, tmp_path, n_trials=3, pruning=False)
    # train + valid, sketched once for 3 trials
    assert sketches == {"quantile_matrices": 1, "DaskQuantileDMatrix": 2, "Resident.build": 1}
    assert [t["number"] for t in result.trials] == [0, 1, 2]
    assert {t["state"] for t in result.trials} == {"complete"}
    for t in result.trials:
        assert set(t["params"]) == {"eta", "max_depth"} and 0 < t["boost_seconds"] <= t["seconds"]
        assert 1 <= t["rounds"] <= ROUNDS and t["best_iteration"] < t["rounds"]
    # The best by the metric (auc, the last eval metric: maximized), and its model is the one returned.
    assert result.metric == "auc" and result.direction == "maximize"
    best = max(result.trials, key=lambda t: t["value"])
    assert (result.best_trial, result.best_value, dict(result.best_params)) == (
        best["number"],
        best["value"],
        best["params"],
    )
    assert not result.retrained
    assert result.params["eta"] == best["params"]["eta"] and result.params["objective"] == "binary:logistic"
    trained = result.trained
    assert trained.metrics["valid"]["auc"] == result.best_value
    assert trained.booster.num_boosted_rounds() == trained.metrics["num_boosted_rounds"] == best["best_iteration"] + 1
    valid = client.compute(placed[1].valid).result()
    features = placed[1].features
    scores = trained.booster.inplace_predict(placed[1].model_input(valid[features]))
    # Logloss is a mean, so exact; XGBoost's AUC over two workers is close to the exact one.
    assert log_loss(valid[LABEL], scores) == pytest.approx(trained.metrics["valid"]["logloss"], rel=1e-5)
    assert roc_auc_score(valid[LABEL], scores) == pytest.approx(result.best_value, abs=1e-4)
    record = result.to_dict()
    assert record["best"] == {"trial": best["number"], "value": best["value"], "params": best["params"]}
    assert record["storage"].startswith("sqlite:///") and len(record["trials"]) == 3
    assert set(result.timings) == {"matrices", "trials", "total"}
    # The workers let go of the matrices and the boosters.
    held = client.run(lambda: len(__import__("dpipe.tune.resident", fromlist=["_STORE"])._STORE))
    assert set(held.values()) == {0}


def test_a_trial_in_segments_stops_early_where_one_training_does(client, placed, base, tmp_path):
    """Early stopping carried across checkpoints: the same rounds, history and best iteration."""
    fast = base.replace(params={**base.params, "eta": 1.0, "max_depth": 8}, num_boost_round=60, early_stopping_rounds=4)
    whole = stages.train(client, placed[1], fast)
    assert whole.metrics["rounds_trained"] < 60  # it does stop early
    spec = TuneSpec.model_validate(
        {
            "space": {"max_depth": {"choices": [8]}},
            "n_trials": 1,
            "pruning": {"checkpoints": [0.02, 0.05, 0.08, 0.1, 0.15], "startup_trials": 100},
        }
    )
    result = dtune.tune(client, placed[1], fast, spec, study_name="es", storage=str(tmp_path / "es.db"))
    tuned = result.trained.metrics
    for key in ("best_iteration", "num_boosted_rounds", "rounds_trained", "valid", "train", "history"):
        assert tuned[key] == whole.metrics[key], key
    assert result.trials[0]["rounds"] == whole.metrics["rounds_trained"]
    assert result.trained.booster.num_boosted_rounds() == whole.booster.num_boosted_rounds()


def test_a_bad_trial_is_pruned_at_a_checkpoint(client, placed, base, tmp_path):
    storage = dtune.storage_url(str(tmp_path / "study.db"))
    study = optuna.create_study(storage=storage, study_name="prune", direction="minimize")
    study.enqueue_trial({"eta": 0.3, "max_depth": 4})
    study.enqueue_trial({"eta": 0.001, "max_depth": 2})  # logloss barely moves from 0.69
    # Early stopping watches logloss too (the last metric), which falls slowly but steadily at a tiny eta.
    base = base.replace(params={**base.params, "eval_metric": ["auc", "logloss"]})
    result = run(
        client, placed, base, tmp_path, study="prune", n_trials=2,
        space={"eta": {"low": 0.0005, "high": 0.5, "log": True}, "max_depth": {"low": 2, "high": 6}},
        pruning={"checkpoints": [0.2, 0.5], "startup_trials": 1},
    )  # fmt: skip
    good, bad = result.trials
    assert good["state"] == "complete" and good["rounds"] == ROUNDS
    assert bad["state"] == "pruned" and bad["rounds"] == round(0.2 * ROUNDS)
    assert result.best_trial == 0 and result.direction == "minimize"
    reported = optuna.load_study(study_name="prune", storage=storage).trials
    assert list(reported[0].intermediate_values) == [6, 15] and list(reported[1].intermediate_values) == [6]
    assert bad["value"] == reported[1].intermediate_values[6]  # a pruned trial's value: its last report


def test_an_interrupted_study_resumes(client, placed, base, tmp_path, sketches):
    first = run(client, placed, base, tmp_path, n_trials=3, pruning=False)
    # A process killed mid-trial leaves a running trial behind: it is failed and counted.
    storage = dtune.storage_url(str(tmp_path / "study.db"))
    optuna.load_study(study_name="s", storage=storage).ask()
    second = run(client, placed, base, tmp_path, n_trials=6, pruning=False)
    assert [t["number"] for t in second.trials] == [0, 1, 2, 3, 4, 5]
    assert second.trials[:3] == first.trials  # not run again
    assert second.trials[3]["state"] == "failed" and "interrupted" in second.trials[3]["error"]
    assert {t["state"] for t in second.trials[4:]} == {"complete"}
    # The sampler was seeded past the first session: it does not propose its points again.
    assert not {tuple(t["params"].items()) for t in first.trials} & {
        tuple(t["params"].items()) for t in second.trials[4:]
    }
    # Nothing left to run: the best trial's model is trained again from its parameters.
    third = run(client, placed, base, tmp_path, n_trials=6, pruning=False)
    assert third.trials == second.trials and third.retrained
    assert third.trained.metrics["valid"]["auc"] == pytest.approx(third.best_value, abs=1e-9)
    assert sketches["quantile_matrices"] == sketches["Resident.build"] == 3  # once per tuning


def test_trials_xgboost_rejects_fail_and_are_recorded(client, placed, base, tmp_path):
    spec = TuneSpec.model_validate({"space": SPACE, "n_trials": 2})
    rejected = base.replace(params={**base.params, "num_parallel_tree": 0})  # from train.params: unchecked
    with pytest.raises(TrainingError, match=r"tune: no trial of study 'f' completed \(0 pruned, 2 failed\)"):
        dtune.tune(client, placed[1], rejected, spec, study_name="f", storage=str(tmp_path / "f.db"))
    trials = dtune.trials_table(optuna.load_study(study_name="f", storage=dtune.storage_url(str(tmp_path / "f.db"))))
    assert [t["state"] for t in trials] == ["failed", "failed"]
    assert all(t["error"].startswith("train: XGBoost failed: value 0 for Parameter num_parallel_tree") for t in trials)


def test_bad_input_at_run_time(client, placed, base, tmp_path):
    with pytest.raises(
        SpecError,
        match=r"tune\.metric: `tune\.metric` 'rmse' is not one of the job's eval metrics \['logloss', 'auc'\]",
    ):
        run(client, placed, base, tmp_path, metric="rmse")
    folds = dataclasses.replace(placed[1], valid=None)
    spec = TuneSpec.model_validate({"space": SPACE})
    with pytest.raises(SpecError, match=r"tune: trials are compared on the validation rows, and this split has none"):
        dtune.tune(client, folds, base, spec, study_name="x", storage=str(tmp_path / "x.db"))
    with pytest.raises(SpecError, match=r"continuing a previous one"):
        dtune.tune(
            client, placed[1], base.replace(xgb_model=object()), spec, study_name="x", storage=str(tmp_path / "x.db")
        )
    optuna.create_study(storage=dtune.storage_url(str(tmp_path / "d.db")), study_name="d", direction="minimize")
    with pytest.raises(
        SpecError, match=r"study 'd' in sqlite:///.*d\.db was created to minimize and this spec would maximize"
    ):
        dtune.tune(client, placed[1], base, spec, study_name="d", storage=str(tmp_path / "d.db"))
    with pytest.raises(
        StorageError, match=r"tune\.storage: cannot open the study storage postgresql://me:\*\*\*@127\.0\.0\.1:1/x"
    ):
        dtune.tune(client, placed[1], base, spec, study_name="x", storage="postgresql://me:s3cret@127.0.0.1:1/x")


def test_parameters_replace_their_other_names():
    assert dtune.with_params({"eta": 0.3, "max_depth": 4, "lambda": 1}, {"learning_rate": 0.1}) == {
        "max_depth": 4,
        "lambda": 1,
        "learning_rate": 0.1,
    }
