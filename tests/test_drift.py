"""Reference profiles and drift statistics (dpipe.drift) on synthetic data, against scipy and
scikit-learn; Dask runs synchronously here (the cluster is exercised by tests/test_monitor.py)."""

from __future__ import annotations

import json

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp
from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, roc_auc_score

from dpipe import drift
from dpipe.ops.encoding import OTHER
from dpipe.train import ModelInput

CATEGORIES = ["a", "b", "c"]
MODEL_INPUT = ModelInput(["x", "k", "c"], ["c"])


def batch(n: int, *, seed: int, shift: float = 0.0, new_category: bool = False, missing: float = 0.05) -> pd.DataFrame:
    """Model-input rows: a normal ``x`` (with missing values), a discrete ``k``, a category ``c``
    (``raw_c``: its source values, which may hold a category the model does not know)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, n)
    x[rng.random(n) < missing] = np.nan
    raw = rng.choice([*CATEGORIES, "zz"] if new_category else CATEGORIES, n)
    known = pd.Series(raw).where(pd.Series(raw).isin(CATEGORIES))
    return pd.DataFrame(
        {
            "x": x.astype("float32"),
            "k": rng.poisson(3, n).astype("float32"),
            "c": pd.Categorical(known, categories=CATEGORIES),
            "raw_c": raw,
        }
    )


def profile_of(pdf: pd.DataFrame, *, prediction: str | None = None) -> dict:
    frame = dd.from_pandas(pdf, npartitions=4)
    pred = frame[prediction] if prediction else None
    values = dask.compute(drift.reference_measures(frame, MODEL_INPUT, prediction=pred), scheduler="sync")[0]
    return drift.reference_profile(values, MODEL_INPUT)


def compare(profile: dict, pdf: pd.DataFrame, **kwargs) -> dict:
    lazy = drift.current_measures(dd.from_pandas(pdf, npartitions=3), profile, **kwargs)
    return drift.compare(profile, dask.compute(lazy, scheduler="sync")[0])


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return batch(8000, seed=1)


@pytest.fixture(scope="module")
def profile(reference) -> dict:
    return profile_of(reference)


def test_the_profile_is_json_with_fixed_bins_from_the_sketch(profile, reference):
    text = json.dumps(profile, allow_nan=False)  # strict JSON: no NaN, no infinity
    assert json.loads(text) == profile and profile["version"] == drift.PROFILE_VERSION
    x = profile["features"]["x"]
    assert len(x["edges"]) == drift.BINS - 1 and len(x["fractions"]) == drift.BINS
    assert x["edges"] == sorted(x["edges"]) and sum(x["fractions"]) == pytest.approx(1.0)
    # Quantile bins: each holds about 1/20 of the values (8000 values: the sketch's rank error).
    assert max(abs(f - 1 / drift.BINS) for f in x["fractions"][1:-1]) < 0.01
    assert x["missing_rate"] == pytest.approx(reference["x"].isna().mean())
    # Exact counts, from the sketch's total weight (8000 values merged from 4 partitions' sketches).
    assert (x["count"], x["missing"]) == (reference["x"].count(), reference["x"].isna().sum())
    # A discrete feature gets one bin per value: its edges are values of the data, de-duplicated.
    k = profile["features"]["k"]
    assert all(float(e).is_integer() for e in k["edges"]) and len(set(k["edges"])) == len(k["edges"])
    # Within the sketch's rank error (8000 values: it holds 2048 points).
    assert k["fractions"][1] == pytest.approx((reference["k"] == k["edges"][0]).mean(), abs=1e-3)
    c = profile["features"]["c"]
    assert c["categories"] == CATEGORIES
    assert c["fractions"] == pytest.approx(reference["c"].value_counts(normalize=True)[CATEGORIES].tolist())


def test_the_same_distribution_has_no_drift(profile):
    out = compare(profile, batch(6000, seed=2), raw={"c": "raw_c"})
    for name, stats in out["features"].items():
        assert stats["psi"] < 0.02, name
        assert stats["js"] < 0.05, name
        assert abs(stats["missing_rate_change"]) < 0.02, name
    assert out["features"]["c"]["unseen_rate"] == 0 and out["features"]["c"]["unseen_examples"] == []
    assert out["rows"] == 6000


def test_a_shifted_feature_and_a_new_category_are_named(profile):
    out = compare(profile, batch(6000, seed=3, shift=1.0, new_category=True), raw={"c": "raw_c"})
    x, c = out["features"]["x"], out["features"]["c"]
    assert x["psi"] > 0.5 and x["ks"] > 0.3 and out["features"]["k"]["psi"] < 0.02
    assert c["unseen_rate"] == pytest.approx(0.25, abs=0.03)
    assert c["unseen_examples"][0]["value"] == "zz"
    # The unknown category becomes missing in the model's input: missing rate and PSI move too.
    assert c["missing_rate_change"] == pytest.approx(c["unseen_rate"]) and c["psi"] > 0.5
    assert out["worst"]["name"] in {"x", "c"} and out["worst"]["psi"] == max(x["psi"], c["psi"])


def test_psi_and_js_against_their_definitions_and_scipy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.dirichlet(np.full(8, 5.0)), rng.dirichlet(np.full(8, 5.0))
        assert drift.js_distance(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)
        assert 0 <= drift.js_distance(p, q) <= 1
        assert min(p.min(), q.min()) > drift.EPSILON
        assert drift.psi(p, q) == pytest.approx(((q - p) * np.log(q / p)).sum())
    assert drift.psi(p, p) == 0 and drift.js_distance(p, p) == 0
    # Disjoint distributions: JS is exactly 1, PSI finite (empty bins count as EPSILON).
    assert drift.js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert np.isfinite(drift.psi([1, 0], [0, 1])) and drift.psi([1, 0], [0, 1]) > 10


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5])
def test_ks_on_the_fine_edges_is_close_to_scipy_and_below_it(profile, reference, shift):
    current = batch(6000, seed=4, shift=shift)
    out = compare(profile, current)
    exact = ks_2samp(reference["x"].dropna(), current["x"].dropna()).statistic
    assert out["features"]["x"]["ks"] == pytest.approx(exact, abs=0.015)
    assert out["features"]["x"]["ks"] <= exact + 1e-9


def test_numbers_below_and_above_the_reference_range_land_in_the_open_bins(profile):
    current = batch(1000, seed=5)
    current["x"] = np.float32(1e6)
    out = compare(profile, current)
    # The exact KS is 1; at the fine edges it is 1 less the reference's top fine bin (~1/100).
    assert out["features"]["x"]["ks"] == pytest.approx(1 - 1 / drift.KS_BINS, abs=0.005)
    assert out["features"]["x"]["psi"] > 5


def test_a_missing_rate_change_is_measured(profile):
    out = compare(profile, batch(4000, seed=6, missing=0.5))
    assert out["features"]["x"]["missing_rate_change"] == pytest.approx(0.45, abs=0.03)


def test_predictions_are_profiled_per_column():
    pdf = batch(4000, seed=7)
    pdf["prediction"] = 1 / (1 + np.exp(-pdf["x"].fillna(0)))
    profile = profile_of(pdf, prediction="prediction")
    assert set(profile["prediction"]["columns"]) == {"prediction"}
    same = compare(profile, pdf, prediction="prediction")
    assert same["prediction"]["columns"]["prediction"]["psi"] < 1e-3
    moved = pdf.assign(prediction=pdf["prediction"] ** 3)
    out = compare(profile, moved, prediction="prediction")
    assert out["prediction"]["worst"]["name"] == "prediction" and out["prediction"]["worst"]["psi"] > 0.5


def test_binary_metrics_match_scikit_learn(profile):
    rng = np.random.default_rng(8)
    pdf = batch(5000, seed=8)
    p = rng.random(len(pdf))
    y = (rng.random(len(pdf)) < p).astype("float32")
    pdf = pdf.assign(prediction=p.astype("float32"), y=y)
    out = compare(profile, pdf, prediction="prediction", label="y", objective="binary:logistic")
    got = drift.metrics(out)
    assert got["logloss"] == pytest.approx(log_loss(y, pdf["prediction"]), rel=1e-6)
    assert got["auc"] == pytest.approx(roc_auc_score(y, pdf["prediction"]), abs=2e-3)
    assert got["error"] == pytest.approx(((pdf["prediction"] > 0.5) != (y > 0.5)).mean())


def test_regression_and_multiclass_metrics():
    rng = np.random.default_rng(9)
    pdf = batch(3000, seed=9)
    y = rng.normal(size=len(pdf))
    pred = y + rng.normal(scale=0.3, size=len(pdf))
    profile = profile_of(pdf)
    out = compare(
        profile, pdf.assign(prediction=pred, y=y), prediction="prediction", label="y", objective="reg:squarederror"
    )
    got = drift.metrics(out, ["rmse", "mae", "auc"])
    assert got == {
        "rmse": pytest.approx(np.sqrt(mean_squared_error(y, pred))),
        "mae": pytest.approx(mean_absolute_error(y, pred)),
    }
    probs = rng.dirichlet(np.ones(3), len(pdf))
    k = rng.integers(0, 3, len(pdf))
    multi = pdf.assign(y=k, **{f"prediction_{i}": probs[:, i] for i in range(3)})
    columns = [f"prediction_{i}" for i in range(3)]
    out = compare(profile, multi, prediction=columns, label="y", objective="multi:softprob")
    got = drift.metrics(out)
    assert got["mlogloss"] == pytest.approx(log_loss(k, probs, labels=[0, 1, 2]), rel=1e-6)
    assert got["merror"] == pytest.approx((probs.argmax(axis=1) != k).mean())


def test_rows_without_a_label_count_for_drift_not_for_metrics(profile):
    pdf = batch(2000, seed=10).assign(prediction=0.3, y=np.nan)
    pdf.loc[:99, "y"] = 1.0
    out = compare(profile, pdf, prediction="prediction", label="y", objective="binary:logistic")
    assert out["rows"] == 2000 and out["labels"]["sums"]["n"] == [100.0]
    assert drift.metrics(out)["logloss"] == pytest.approx(-np.log(0.3), rel=1e-6)


def test_the_out_of_vocabulary_bucket_is_a_category_not_an_unseen_value():
    cats = ["a", "b", OTHER]
    pdf = batch(2000, seed=11)
    pdf["c"] = pd.Categorical(pdf["raw_c"].where(pdf["raw_c"] != "c", OTHER), categories=cats)
    values = dask.compute(drift.reference_measures(dd.from_pandas(pdf, npartitions=2), MODEL_INPUT), scheduler="sync")[
        0
    ]
    profile = drift.reference_profile(values, MODEL_INPUT)
    assert profile["features"]["c"]["categories"] == cats
    # Raw "c" is outside the model's vocabulary (the bucket took it): unseen; "__other__" itself is
    # not a value the source holds.
    out = compare(profile, pdf, raw={"c": "raw_c"})
    assert out["features"]["c"]["unseen_rate"] == pytest.approx((pdf["raw_c"] == "c").mean())
    assert out["features"]["c"]["psi"] < 1e-9


def test_an_empty_batch_gives_no_statistics(profile):
    out = compare(profile, batch(10, seed=12).iloc[:0])
    assert out["rows"] == 0 and out["features"]["x"]["psi"] is None and out["worst"] is None
