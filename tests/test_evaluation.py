"""dpipe.evaluation against scikit-learn: binned one-pass measures, exact where they can be."""

from __future__ import annotations

import json

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from dpipe.errors import ColumnError, SpecError
from dpipe.evaluation import evaluation_document, finish, kind_of, measures


def _binary_frame(n=20_000, seed=0, *, binned=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype("float64")
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 2.4 * (y - 0.5))))
    if binned:  # every prediction at the middle of its bin: binning loses nothing
        p = (np.floor(p * 200) + 0.5) / 200
    country = rng.choice(np.array(["US", "GB", "DE", "FR", "NL"], dtype=object), n, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    return pd.DataFrame({"label": y, "prediction": p, "country": country})


def _evaluate(pdf, kind, npartitions=4, **kwargs):
    values = measures(dd.from_pandas(pdf, npartitions=npartitions), kind, **kwargs)
    (computed,) = dask.compute(values, scheduler="sync")
    return finish(computed)


# -- kinds -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("objective", "kind"),
    [
        ("binary:logistic", "binary"),
        ("binary:hinge", "binary"),
        ("multi:softprob", "multiclass"),
        ("multi:softmax", "multiclass"),
        ("reg:squarederror", "regression"),
        ("reg:absoluteerror", "regression"),
        ("count:poisson", "regression"),
    ],
)
def test_kind_of(objective, kind):
    assert kind_of(objective) == kind


@pytest.mark.parametrize(
    ("objective", "why"),
    [("rank:ndcg", "per query group"), ("survival:cox", "censored"), ("binary:logitraw", "margins")],
)
def test_objectives_that_cannot_be_evaluated_are_refused(objective, why):
    with pytest.raises(SpecError, match=f"objective '{objective}' cannot be evaluated: .*{why}"):
        kind_of(objective)
    with pytest.raises(SpecError, match="unknown objective 'reg'"):
        kind_of("reg")


# -- binary --------------------------------------------------------------------------------------
def test_binary_metrics_match_scikit_learn():
    pdf = _binary_frame()
    y, p = pdf["label"], pdf["prediction"]
    side = _evaluate(pdf, "binary", threshold=0.3)
    m = side["metrics"]
    exact = skm.roc_auc_score(y, p)
    assert abs(m["auc"] - exact) <= m["auc_error_bound"] < 1e-3
    assert m["aucpr"] == pytest.approx(skm.average_precision_score(y, p), abs=2e-3)
    assert m["logloss"] == pytest.approx(skm.log_loss(y, p), rel=1e-12)
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p), rel=1e-12)
    hard = p > 0.3
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, hard), rel=1e-12)
    assert m["precision"] == pytest.approx(skm.precision_score(y, hard), rel=1e-12)
    assert m["recall"] == pytest.approx(skm.recall_score(y, hard), rel=1e-12)
    assert m["f1"] == pytest.approx(skm.f1_score(y, hard), rel=1e-12)
    assert m["positive_rate"] == pytest.approx(y.mean())
    assert side["confusion"] == {
        "labels": ["0", "1"],
        "matrix": skm.confusion_matrix(y, hard).tolist(),
        "threshold": 0.3,
    }
    assert (side["rows"], side["skipped_rows"], side["bins"]) == (len(pdf), 0, 200)
    json.dumps(side, allow_nan=False)  # JSON-able as it is


def test_binned_predictions_give_scikit_learns_exact_curves():
    """Predictions already on their bins' middles: the curves and areas are sklearn's exactly."""
    pdf = _binary_frame(binned=True)
    y, p = pdf["label"], pdf["prediction"]
    side = _evaluate(pdf, "binary")
    assert side["metrics"]["auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert side["metrics"]["aucpr"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    roc = side["curves"]["roc"]
    np.testing.assert_allclose(roc["fpr"], fpr, atol=1e-6)
    np.testing.assert_allclose(roc["tpr"], tpr, atol=1e-6)
    precision, recall, _ = skm.precision_recall_curve(y, p, drop_intermediate=False)
    pr = side["curves"]["pr"]  # sklearn: increasing thresholds, then its (recall 0, precision 1) end
    np.testing.assert_allclose(pr["recall"], recall[::-1][1:], atol=1e-6)
    np.testing.assert_allclose(pr["precision"], precision[::-1][1:], atol=1e-6)


def test_calibration_matches_scikit_learn_uniform_bins():
    pdf = _binary_frame()
    side = _evaluate(pdf, "binary")
    observed, predicted = calibration_curve(pdf["label"], pdf["prediction"], n_bins=20, strategy="uniform")
    calibration = side["curves"]["calibration"]
    np.testing.assert_allclose(calibration["observed"], observed, atol=1e-6)
    np.testing.assert_allclose(calibration["predicted"], predicted, atol=1e-6)
    assert sum(calibration["rows"]) == len(pdf)


def test_slices_have_their_own_metrics_and_the_rare_values_are_summed():
    pdf = _binary_frame()
    pdf.loc[pdf.index[:7], "country"] = None
    side = _evaluate(pdf, "binary", slices=["country"])
    found = {s["value"]: s for s in side["slices"]["country"]}
    assert list(found) == ["US", "GB", "DE", "FR", "NL", "(missing)"]  # by rows, most first
    for value, rows in pdf.fillna({"country": "(missing)"}).groupby("country"):
        entry = found[value]
        assert entry["rows"] == len(rows)
        assert entry["metrics"]["logloss"] == pytest.approx(skm.log_loss(rows["label"], rows["prediction"]))
        if rows["label"].nunique() == 2:
            auc = skm.roc_auc_score(rows["label"], rows["prediction"])
            assert abs(entry["metrics"]["auc"] - auc) <= entry["metrics"]["auc_error_bound"]

    values = measures(dd.from_pandas(pdf, npartitions=3), "binary", slices=["country"])
    (computed,) = dask.compute(values, scheduler="sync")
    capped = finish(computed, max_slice_values=2)["slices"]["country"]
    assert [s["value"] for s in capped] == ["US", "GB", "(other)"]
    rest = pdf[~pdf["country"].isin(["US", "GB"])]
    assert capped[2]["rows"] == len(rest)
    assert capped[2]["metrics"]["logloss"] == pytest.approx(skm.log_loss(rest["label"], rest["prediction"]))


def test_rows_without_a_label_or_prediction_are_counted_apart():
    pdf = _binary_frame(n=1000)
    pdf.loc[pdf.index[:3], "label"] = np.nan
    pdf.loc[pdf.index[3:5], "prediction"] = np.nan
    side = _evaluate(pdf, "binary")
    kept = pdf.dropna()
    assert (side["rows"], side["skipped_rows"]) == (995, 5)
    assert side["metrics"]["logloss"] == pytest.approx(skm.log_loss(kept["label"], kept["prediction"]))


def test_one_class_leaves_the_areas_null():
    pdf = _binary_frame(n=500)
    pdf["label"] = 1.0
    m = _evaluate(pdf, "binary")["metrics"]
    assert m["auc"] is None and m["auc_error_bound"] is None
    assert m["aucpr"] == pytest.approx(1.0)


# -- regression ----------------------------------------------------------------------------------
def _regression_frame(n=20_000, seed=1, offset=0.0):
    rng = np.random.default_rng(seed)
    y = offset + rng.gamma(2.0, 10.0, n)
    p = y + rng.normal(0, 3, n) + 0.5
    return pd.DataFrame({"label": y, "prediction": p, "plan": rng.choice(np.array(["a", "b"], dtype=object), n)})


def test_regression_metrics_match_scikit_learn():
    pdf = _regression_frame(offset=1e6)  # large labels: moments summed about the range's middle
    y, p = pdf["label"], pdf["prediction"]
    lo, hi = float(y.min()), float(y.max())
    side = _evaluate(pdf, "regression", label_range=(lo, hi), slices=["plan"])
    m = side["metrics"]
    assert m["rmse"] == pytest.approx(skm.root_mean_squared_error(y, p), rel=1e-9)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, p), rel=1e-9)
    assert m["r2"] == pytest.approx(skm.r2_score(y, p), rel=1e-9)
    assert m["bias"] == pytest.approx((p - y).mean(), rel=1e-9)
    assert m["label_std"] == pytest.approx(y.std(ddof=0), rel=1e-9)
    size = np.abs(p - y)
    for name, q in (("median_abs_error", 0.5), ("p90_abs_error", 0.9), ("p99_abs_error", 0.99)):
        assert m[name] == pytest.approx(np.quantile(size, q), rel=0.02), name

    for value, rows in pdf.groupby("plan"):
        (entry,) = [s for s in side["slices"]["plan"] if s["value"] == value]
        assert entry["metrics"]["rmse"] == pytest.approx(skm.root_mean_squared_error(rows["label"], rows["prediction"]))

    residuals = side["curves"]["residuals"]
    assert sum(residuals["counts"]) + residuals["below"] + residuals["above"] == len(pdf)
    assert residuals["above"] + residuals["below"] <= 0.02 * len(pdf)  # the histogram spans the 99th percentile

    grid = side["curves"]["predicted_vs_actual"]
    edges = np.linspace(lo, hi, grid["grid"] + 1)
    expected, _, _ = np.histogram2d(np.clip(y, lo, hi), np.clip(p, lo, hi), bins=[edges, edges])
    found = np.zeros_like(expected)
    for i, j, n in grid["cells"]:
        found[i, j] = n
    np.testing.assert_array_equal(found, expected)
    assert grid["outside"] == int(((p < lo) | (p > hi)).sum())


def test_regression_without_a_label_range_has_no_grid():
    side = _evaluate(_regression_frame(n=2000), "regression")
    assert "predicted_vs_actual" not in side["curves"]
    assert side["metrics"]["rmse"] > 0


# -- multiclass ----------------------------------------------------------------------------------
def test_multiclass_softprob_and_softmax_match_scikit_learn():
    rng = np.random.default_rng(2)
    n, k = 6000, 4
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pdf = pd.DataFrame({"label": y.astype("float64"), **{f"prediction_{c}": prob[:, c] for c in range(k)}})
    side = _evaluate(pdf, "multiclass")
    hard = prob.argmax(axis=1)
    m = side["metrics"]
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, hard))
    assert m["mlogloss"] == pytest.approx(skm.log_loss(y, prob), rel=1e-9)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, hard, average="macro"))
    assert m["per_class"]["2"]["recall"] == pytest.approx(skm.recall_score(y, hard, labels=[2], average=None)[0])
    assert side["confusion"]["matrix"] == skm.confusion_matrix(y, hard).tolist()

    softmax = pd.DataFrame({"label": y.astype("float64"), "prediction": hard.astype("float32")})
    side = _evaluate(softmax, "multiclass", classes=k)
    assert side["confusion"]["matrix"] == skm.confusion_matrix(y, hard).tolist()
    assert side["metrics"]["mlogloss"] is None


# -- the pass ------------------------------------------------------------------------------------
def test_measures_are_lazy_read_each_partition_once_and_never_shuffle():
    pdf = _binary_frame(n=4000)
    loads = []

    def load(i):
        loads.append(i)
        return pdf.iloc[i * 1000 : (i + 1) * 1000]

    frame = dd.from_map(load, range(4))
    loads.clear()  # from_map may call it for the meta
    values = measures(frame, "binary", slices=["country"])
    assert loads == [] and dask.is_dask_collection(values["table"])
    graph = dict(values["table"].optimize().__dask_graph__())
    names = {(k[0] if isinstance(k, tuple) else k).split("-")[0] for k in graph}
    assert not any("shuffle" in n or "sort" in n for n in names), names
    computed, total = dask.compute(values, frame["label"].sum(), scheduler="sync")
    assert sorted(loads) == [0, 1, 2, 3]  # one pass: the evaluation and the other sum together
    assert finish(computed)["rows"] == 4000 and total == pdf["label"].sum()


def test_measures_on_a_process_cluster(client):
    pdf = _binary_frame(n=5000)
    values = measures(dd.from_pandas(pdf, npartitions=4), "binary", slices=["country"])
    (table,) = client.compute([values["table"]], sync=True)
    side = finish({**values, "table": table})
    assert side["rows"] == 5000
    assert side["metrics"]["logloss"] == pytest.approx(skm.log_loss(pdf["label"], pdf["prediction"]))


# -- bad input and the document ------------------------------------------------------------------
def test_bad_input_is_refused_clearly():
    frame = dd.from_pandas(_binary_frame(n=100), npartitions=1)
    with pytest.raises(ColumnError, match=r"evaluation: column\(s\) \['plan'\] not found; available"):
        measures(frame, "binary", slices=["plan"])
    with pytest.raises(SpecError, match="`label_range` must be"):
        measures(frame, "regression", label_range=(1.0, 1.0))
    with pytest.raises(SpecError, match="kind must be one of"):
        measures(frame, "ranking")  # type: ignore[arg-type]
    with pytest.raises(ColumnError, match=r"\['prediction'\] not found"):
        measures(frame[["label"]], "multiclass")
    values = {"table": None, "config": {"kind": "binary"}}
    with pytest.raises(SpecError, match="of kind 'binary', not 'regression'"):
        finish(values, "regression")


def test_evaluation_document():
    valid = _evaluate(_binary_frame(n=2000), "binary", slices=["country"])
    test = _evaluate(_binary_frame(n=2000, seed=5), "binary", slices=["country"])
    doc = evaluation_document("binary:logistic", {"valid": valid, "test": test}, threshold=0.5, slices=["country"])
    assert doc == {
        "format_version": 1,
        "objective": "binary:logistic",
        "kind": "binary",
        "threshold": 0.5,
        "slices": ["country"],
        "sides": {"valid": valid, "test": test},
    }
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
