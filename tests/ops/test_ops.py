"""Every feature op against a pandas / scikit-learn reference on the same data.

Ops are fitted the way the pipeline fits them (lazy ``fit`` -> one ``dask.compute`` ->
``finalize``) on multi-partition frames with the synchronous scheduler, then applied per
partition; the result must match the reference and the dtypes ``describe`` promised.
"""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import OrdinalEncoder, StandardScaler

from dpipe.errors import ColumnError, ExpressionError
from dpipe.ops import build_op
from dpipe.spec import OP_MODELS
from tests.ops.test_stats import rank_error

STRING = pd.StringDtype("pyarrow")


def make(op: str, where: str = "features[0]", **params):
    return build_op(OP_MODELS[op](op=op, **params), where)


def fit(op, ddf):
    (stats,) = dask.compute(op.fit(ddf), scheduler="sync")
    op.finalize(stats)
    return op


def apply(op, ddf) -> pd.DataFrame:
    """Transform a Dask frame partition-wise and check the result against ``describe``."""
    meta = op.describe(ddf._meta)
    out = ddf.map_partitions(op.transform, meta=meta).compute(scheduler="sync")
    pd.testing.assert_series_equal(out.dtypes, meta.dtypes, obj="dtypes vs describe()")
    return out


@pytest.fixture
def numbers() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 1000
    df = pd.DataFrame(
        {
            "age": rng.integers(18, 90, n).astype("float64"),
            "income": rng.lognormal(10, 1, n),
            "sessions": rng.integers(0, 50, n),
            "country": pd.array(rng.choice(["NL", "DE", "FR"], n), dtype=STRING),
        }
    )
    df.loc[rng.random(n) < 0.1, "age"] = np.nan
    df.loc[rng.random(n) < 0.2, "income"] = np.nan
    return df


# -- standard_scale ------------------------------------------------------------------------------
def test_standard_scale_matches_sklearn_and_keeps_nulls(numbers):
    columns = ["age", "income", "sessions"]
    op = fit(make("standard_scale", columns=columns), dd.from_pandas(numbers, npartitions=7))

    out = apply(op, dd.from_pandas(numbers, npartitions=3))

    # scikit-learn also ignores NaN when fitting and keeps it when transforming.
    ref = StandardScaler().fit(numbers[columns])
    np.testing.assert_allclose([op.mean_[c] for c in columns], ref.mean_, rtol=1e-12)
    np.testing.assert_allclose([op.scale_[c] for c in columns], ref.scale_, rtol=1e-12)
    expected = ref.transform(numbers[columns])
    np.testing.assert_allclose(out[columns].to_numpy(), expected, rtol=1e-9, atol=1e-12)
    for c in columns:
        assert out[c].isna().equals(numbers[c].isna()), c
    pd.testing.assert_series_equal(out["country"], numbers["country"])


@pytest.mark.parametrize("value", [5.0, 0.1, -3.3e8])
def test_standard_scale_constant_column_is_only_centred(value):
    # 0.1 summed over partitions does not average back to exactly 0.1: the leftover variance
    # is rounding noise and must not be divided by.
    df = pd.DataFrame({"k": np.full(1000, value), "x": np.arange(1000.0)})
    op = fit(make("standard_scale", columns=["k", "x"]), dd.from_pandas(df, npartitions=7))

    out = apply(op, dd.from_pandas(df, npartitions=2))

    assert op.scale_["k"] == 1.0
    ref = StandardScaler().fit_transform(df[["k"]])[:, 0]
    np.testing.assert_allclose(out["k"].to_numpy(), ref, atol=1e-12 * max(1.0, abs(value)))


def test_standard_scale_with_an_empty_partition(numbers):
    keep = numbers["sessions"] >= 10
    ddf = dd.from_pandas(numbers.sort_values("sessions", ignore_index=True), npartitions=8, sort=False)
    ddf = ddf[ddf["sessions"] >= 10]
    assert 0 in ddf.map_partitions(len).compute(scheduler="sync").tolist()

    op = fit(make("standard_scale", columns=["age", "income"]), ddf)

    ref = StandardScaler().fit(numbers.loc[keep, ["age", "income"]])
    np.testing.assert_allclose([op.mean_["age"], op.mean_["income"]], ref.mean_, rtol=1e-12)
    np.testing.assert_allclose([op.scale_["age"], op.scale_["income"]], ref.scale_, rtol=1e-12)
    out = apply(op, ddf)
    assert len(out) == keep.sum()


@pytest.mark.parametrize(("with_mean", "with_std"), [(False, True), (True, False), (False, False)])
def test_standard_scale_options_match_sklearn(numbers, with_mean, with_std):
    columns = ["age", "income"]
    op = fit(
        make("standard_scale", columns=columns, with_mean=with_mean, with_std=with_std),
        dd.from_pandas(numbers, npartitions=5),
    )
    out = apply(op, dd.from_pandas(numbers, npartitions=5))
    expected = StandardScaler(with_mean=with_mean, with_std=with_std).fit_transform(numbers[columns])
    np.testing.assert_allclose(out[columns].to_numpy(), expected, rtol=1e-9)


def test_standard_scale_all_null_column_stays_null():
    df = pd.DataFrame({"x": np.full(20, np.nan), "y": np.arange(20.0)})
    op = fit(make("standard_scale", columns=["x"]), dd.from_pandas(df, npartitions=3))
    out = apply(op, dd.from_pandas(df, npartitions=3))
    assert out["x"].isna().all()


def test_standard_scale_rejects_non_numeric_columns(numbers):
    op = make("standard_scale", "features[2]", columns=["age", "country"])
    with pytest.raises(ColumnError, match=r"features\[2\] \(standard_scale\): needs numeric columns, got \{'country'"):
        op.describe(numbers.iloc[:0])


@pytest.mark.parametrize(
    ("op", "params"),
    [
        ("standard_scale", {"columns": ["age", "incme"]}),
        ("fill_missing", {"columns": ["incme"], "strategy": "median"}),
        ("fill_missing", {"columns": ["incme"], "value": 0}),
        ("categorical", {"columns": ["incme"]}),
        ("derive", {"name": "r", "expr": "incme / 2"}),
        ("filter", {"expr": "incme > 2"}),
    ],
)
def test_describe_names_a_missing_column_and_guesses(numbers, op, params):
    with pytest.raises(ColumnError, match=r"features\[3\].*\['incme'\] (not found|that do not exist)") as info:
        make(op, "features[3]", **params).describe(numbers.iloc[:0])
    assert "available: ['age', 'income', 'sessions', 'country']" in str(info.value)
    if op not in ("derive", "filter"):
        assert "Hint: did you mean 'income' (for 'incme')?" in str(info.value)


# -- fill_missing --------------------------------------------------------------------------------
def test_fill_missing_mean_matches_pandas(numbers):
    op = fit(make("fill_missing", columns=["age", "income"], strategy="mean"), dd.from_pandas(numbers, npartitions=6))
    assert op.values_ == {
        "age": pytest.approx(numbers["age"].mean()),
        "income": pytest.approx(numbers["income"].mean()),
    }
    out = apply(op, dd.from_pandas(numbers, npartitions=6))
    pd.testing.assert_frame_equal(out, numbers.fillna({"age": op.values_["age"], "income": op.values_["income"]}))
    assert out[["age", "income"]].notna().all().all()


@pytest.mark.parametrize("n", [999, 1000])  # odd and even counts of values
def test_fill_missing_median_is_exact_on_small_data(numbers, n):
    df = numbers.iloc[:n]
    op = fit(
        make("fill_missing", columns=["age", "income", "sessions"], strategy="median"),
        dd.from_pandas(df, npartitions=6),
    )
    assert op.values_ == {c: df[c].median() for c in ("age", "income", "sessions")}


def test_fill_missing_median_of_many_skewed_values_is_within_rank_tolerance():
    rng = np.random.default_rng(3)
    x = rng.pareto(1.5, 100_000)
    x[rng.random(len(x)) < 0.05] = np.nan
    op = fit(
        make("fill_missing", columns=["x"], strategy="median"), dd.from_pandas(pd.DataFrame({"x": x}), npartitions=12)
    )
    valid = x[~np.isnan(x)]
    assert rank_error(valid, op.values_["x"], 0.5) < 0.005
    assert op.values_["x"] == pytest.approx(np.median(valid), rel=0.02)


def test_fill_missing_constant_needs_no_fit(numbers):
    op = make("fill_missing", columns=["age", "income"], value=-1)
    assert op.fitted and not op.stateful
    out = apply(op, dd.from_pandas(numbers, npartitions=3))
    pd.testing.assert_frame_equal(out, numbers.fillna({"age": -1, "income": -1}))


@pytest.mark.parametrize("strategy", ["mean", "median"])
def test_fill_missing_all_null_column_stays_null(strategy):
    df = pd.DataFrame({"empty": np.full(30, np.nan), "x": np.r_[np.nan, np.arange(29.0)]})
    op = fit(make("fill_missing", columns=["empty", "x"], strategy=strategy), dd.from_pandas(df, npartitions=4))
    assert op.values_["empty"] is None
    out = apply(op, dd.from_pandas(df, npartitions=4))
    assert out["empty"].isna().all()
    assert out["x"].notna().all()


@pytest.mark.parametrize("strategy", ["mean", "median"])
def test_fill_missing_preserves_dtypes(strategy):
    df = pd.DataFrame(
        {
            "f32": pd.array([1.0, None, 2.0, 4.0, 7.5, None], dtype="float32"),
            # mean 3.5 / median 3.0 of integers: a nullable integer column cannot hold 3.5.
            "i64": pd.array([1, None, 2, 4, 7, None], dtype="Int64"),
            "pa": pd.array([1.5, None, 2.0, 3.0, 9.0, None], dtype="double[pyarrow]"),
            "pai": pd.array([1, None, 2, 4, 7, None], dtype="int64[pyarrow]"),
            "np_int": np.arange(6),
        }
    )
    op = fit(make("fill_missing", columns=list(df.columns), strategy=strategy), dd.from_pandas(df, npartitions=2))
    out = apply(op, dd.from_pandas(df, npartitions=2))
    pd.testing.assert_series_equal(out.dtypes, df.dtypes)
    assert out.notna().all().all()
    reference = getattr(df, strategy)()
    assert out["f32"].iloc[1] == pytest.approx(reference["f32"], rel=1e-6)
    assert out["pa"].iloc[1] == pytest.approx(reference["pa"])
    assert out["i64"].iloc[1] == round(reference["i64"])
    assert out["pai"].iloc[5] == round(reference["pai"])


def test_fill_missing_statistics_need_numbers(numbers):
    op = make("fill_missing", "features[1]", columns=["country"], strategy="median")
    with pytest.raises(ColumnError, match=r"features\[1\] \(fill_missing\): needs numeric columns, got \{'country'"):
        op.describe(numbers.iloc[:0])


# -- categorical ---------------------------------------------------------------------------------
CITIES = ["ams"] * 5 + ["rot"] * 3 + ["utr"] * 3 + ["ein"] * 2 + ["gro"] + [None] * 4


@pytest.fixture
def cities() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    order = rng.permutation(len(CITIES))
    city = pd.array([CITIES[i] for i in order], dtype=STRING)
    code = pd.array([{"ams": 10, "rot": 9, "utr": 2, "ein": 3, "gro": 4}.get(c) for c in city], dtype="Int64")
    return pd.DataFrame({"city": city, "code": code, "x": np.arange(len(CITIES), dtype="float64")})


def test_categorical_vocabulary_is_by_frequency_then_value(cities):
    op = fit(make("categorical", columns=["city", "code"]), dd.from_pandas(cities, npartitions=4))
    # rot/utr and 2/9 tie on 3 rows each: ties go by value.
    assert op.categories_ == {"city": ["ams", "rot", "utr", "ein", "gro"], "code": [10, 2, 9, 3, 4]}
    reference = cities["city"].value_counts().reset_index().sort_values(["count", "city"], ascending=[False, True])
    assert op.categories_["city"] == reference["city"].tolist()


def test_categorical_ties_between_numbers_go_by_numeric_value():
    df = pd.DataFrame({"n": [10, 9, 2, 10, 9, 2, 100, 100, 7]})
    op = fit(make("categorical", columns=["n"]), dd.from_pandas(df, npartitions=3))
    assert op.categories_ == {"n": [2, 9, 10, 100, 7]}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"min_frequency": 3}, ["ams", "rot", "utr"]),
        ({"max_categories": 2}, ["ams", "rot"]),
        ({"min_frequency": 2, "max_categories": 10}, ["ams", "rot", "utr", "ein"]),
        ({"min_frequency": 6}, []),
    ],
)
def test_categorical_min_frequency_and_max_categories(cities, params, expected):
    op = fit(make("categorical", columns=["city"], **params), dd.from_pandas(cities, npartitions=3))
    assert op.categories_["city"] == expected
    out = apply(op, dd.from_pandas(cities, npartitions=3))
    kept = cities["city"].isin(expected).fillna(False)
    assert out["city"].notna().equals(kept.astype(bool))


def test_categorical_unseen_values_become_missing(cities):
    op = fit(make("categorical", columns=["city", "code"]), dd.from_pandas(cities, npartitions=3))
    new = pd.DataFrame(
        {
            "city": pd.array(["utr", "paris", None, "ams", "gro"], dtype=STRING),
            "code": pd.array([2, 77, None, 10, 4], dtype="Int64"),
            "x": np.arange(5.0),
        }
    )

    out = apply(op, dd.from_pandas(new, npartitions=2))

    assert isinstance(out["city"].dtype, pd.CategoricalDtype)
    assert list(out["city"].cat.categories) == op.categories_["city"]
    assert out["city"].astype(object).where(out["city"].notna(), None).tolist() == ["utr", None, None, "ams", "gro"]
    assert out["code"].astype(object).where(out["code"].notna(), None).tolist() == [2, None, None, 10, 4]


def test_categorical_ordinal_codes_match_sklearn_ordinal_encoder(cities):
    op = fit(make("categorical", columns=["city"], encoding="ordinal"), dd.from_pandas(cities, npartitions=3))
    new = pd.DataFrame({"city": pd.array(["gro", "paris", None, "ams", "rot", "utr"], dtype=STRING), "x": 0.0})

    out = apply(op, dd.from_pandas(new, npartitions=2))

    assert out["city"].dtype == np.float32
    vocab = op.categories_["city"]
    encoder = OrdinalEncoder(
        categories=[vocab], handle_unknown="use_encoded_value", unknown_value=np.nan, dtype=np.float32
    ).fit(np.array(vocab, dtype=object).reshape(-1, 1))
    as_object = new["city"].astype(object).where(new["city"].notna(), np.nan).to_numpy().reshape(-1, 1)
    np.testing.assert_array_equal(out["city"].to_numpy(), encoder.transform(as_object)[:, 0])
    np.testing.assert_array_equal(out["city"].to_numpy(), [4, np.nan, np.nan, 0, 1, 2])


@pytest.mark.parametrize("encoding", ["category", "ordinal"])
def test_categorical_codes_do_not_depend_on_order_of_appearance(cities, encoding):
    op = fit(make("categorical", columns=["city"], encoding=encoding), dd.from_pandas(cities, npartitions=3))
    train = apply(op, dd.from_pandas(cities, npartitions=3))
    # Serving data: other values first, other partitioning, an object column instead of Arrow.
    predict_df = cities.iloc[::-1].reset_index(drop=True).astype({"city": object})
    predict = apply(op, dd.from_pandas(predict_df, npartitions=5))

    def codes(frame):
        col = frame["city"]
        return col.cat.codes.replace(-1, np.nan) if encoding == "category" else col

    by_value = dict(zip(cities["city"].dropna(), codes(train)[cities["city"].notna()]))
    for value, code in zip(predict_df["city"], codes(predict)):
        if value is not None and value is not pd.NA:
            assert code == by_value[value] == op.categories_["city"].index(value)


def test_categorical_rejects_float_columns(numbers):
    op = make("categorical", "features[4]", columns=["age"])
    with pytest.raises(
        ColumnError, match=r"features\[4\] \(categorical\): float columns cannot be categories: \{'age'"
    ):
        op.describe(numbers.iloc[:0])


def test_categorical_rejects_date_and_time_columns():
    # Timestamps would be learned as such but saved as text in the bundle's JSON: every value
    # would be unseen (missing) at prediction.
    df = pd.DataFrame({"t": pd.to_datetime(["2024-01-01", "2024-01-02"]), "d": pd.to_timedelta([1, 2], unit="D")})
    for column in ("t", "d"):
        op = make("categorical", "features[1]", columns=[column])
        message = rf"features\[1\] \(categorical\): date and time columns cannot be categories: \{{'{column}'"
        with pytest.raises(ColumnError, match=message):
            op.describe(df.iloc[:0])


def test_categorical_integer_column_with_missing_values_in_some_files():
    # pyarrow gives an integer column float64 in a file where it has a missing value; XGBoost
    # refuses float categories, and the vocabulary must be the integers either way.
    parts = [pd.DataFrame({"code": [3, 1, 3]}), pd.DataFrame({"code": [1.0, np.nan, 3.0]})]
    frame = dd.from_map(lambda i: parts[i], range(2), meta=parts[0].iloc[:0], enforce_metadata=False)
    op = fit(make("categorical", columns=["code"]), frame)
    assert op.categories_ == {"code": [3, 1]} and all(type(v) is int for v in op.categories_["code"])
    for part in parts:
        out = op.transform(part)["code"]
        assert out.dtype.categories.dtype == "int64"
        assert out.cat.codes.tolist() == ([0, 1, 0] if len(part) and part["code"].notna().all() else [1, -1, 0])


# -- filter / derive -----------------------------------------------------------------------------
@pytest.fixture
def mixed() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "a": [1.0, np.nan, 3.0, -1.0, 5.0, np.nan, 0.5, 2.0],
            "country": pd.array(["NL", None, "XX", "DE", "NL", "FR", None, "BE"], dtype=STRING),
            "dep time": [500, 700, 650, 800, 100, 900, 610, 601],
            "n": pd.array([1, 2, None, 4, 5, 6, 7, None], dtype="Int64"),
        }
    )


FILTERS = [
    ("a > 0", lambda d: d["a"] > 0),
    ("country != 'XX'", lambda d: (d["country"] != "XX").fillna(False)),
    ("country == 'NL' or a >= 3", lambda d: (d["country"] == "NL").fillna(False) | (d["a"] >= 3)),
    ("country in ['NL', 'DE']", lambda d: d["country"].isin(["NL", "DE"])),
    # SQL semantics: not (NaN < 2) is missing, so the row is dropped (numpy's ~ would keep it).
    ("`dep time` > 600 and not (a < 2)", lambda d: (d["dep time"] > 600) & (d["a"] >= 2)),
    ("n >= 2", lambda d: (d["n"] >= 2).fillna(False)),
    ("isnull(a) or a > 4", lambda d: d["a"].isna() | (d["a"] > 4)),
    ("0 < `dep time` - 600 <= 50", lambda d: ((d["dep time"] - 600) > 0) & ((d["dep time"] - 600) <= 50)),
]


@pytest.mark.parametrize(("expr", "reference"), FILTERS, ids=[e for e, _ in FILTERS])
def test_filter_matches_pandas_and_drops_missing(mixed, expr, reference):
    out = apply(make("filter", expr=expr), dd.from_pandas(mixed, npartitions=3))
    expected = mixed[reference(mixed).astype(bool)]
    pd.testing.assert_frame_equal(out, expected)


DERIVES = [
    ("a * 2 + `dep time`", lambda d: d["a"] * 2 + d["dep time"]),
    ("log1p(`dep time`) / (abs(a) + 1)", lambda d: np.log1p(d["dep time"]) / (d["a"].abs() + 1)),
    # conditions become float32 1/0, NaN where an input is missing
    ("a > 1", lambda d: (d["a"] > 1).astype("float32").mask(d["a"].isna())),
    ("where(a > 1, a, 0)", lambda d: pd.Series(np.where(d["a"] > 1, d["a"], 0), index=d.index)),
    ("clip(`dep time`, 600, 800)", lambda d: d["dep time"].clip(600, 800)),
    ("country == 'NL'", lambda d: (d["country"] == "NL").astype("float32")),
    ("n * 2", lambda d: d["n"] * 2),
]


@pytest.mark.parametrize(("expr", "reference"), DERIVES, ids=[e for e, _ in DERIVES])
def test_derive_matches_pandas(mixed, expr, reference):
    out = apply(make("derive", name="new", expr=expr), dd.from_pandas(mixed, npartitions=3))
    pd.testing.assert_series_equal(out["new"], reference(mixed).rename("new"), check_index_type=False)
    pd.testing.assert_frame_equal(out.drop(columns="new"), mixed)


def test_derive_replaces_a_column_in_place(mixed):
    out = apply(make("derive", name="a", expr="a * 10"), dd.from_pandas(mixed, npartitions=2))
    assert list(out.columns) == list(mixed.columns)
    pd.testing.assert_series_equal(out["a"], mixed["a"] * 10)


def test_expression_type_errors_say_where(mixed):
    op = make("derive", "features[5]", name="bad", expr="country + 1")
    with pytest.raises(ExpressionError, match=r"features\[5\]\.expr: expression 'country \+ 1' cannot be applied"):
        op.transform(mixed)


# -- purity --------------------------------------------------------------------------------------
def _fitted_ops(frame):
    ddf = dd.from_pandas(frame, npartitions=2)
    return [
        fit(make("standard_scale", columns=["a", "dep time"]), ddf),
        fit(make("fill_missing", columns=["a", "n"], strategy="median"), ddf),
        fit(make("fill_missing", columns=["a", "n"], strategy="mean"), ddf),
        make("fill_missing", columns=["a"], value=0.0),
        fit(make("categorical", columns=["country", "n"]), ddf),
        fit(make("categorical", columns=["country"], encoding="ordinal"), ddf),
        make("filter", expr="a > 0 and country != 'XX'"),
        make("derive", name="a", expr="a * 2"),
        make("derive", name="z", expr="a if `dep time` > 600 else -a"),
    ]


@pytest.mark.parametrize("index", range(9))
def test_transform_never_mutates_its_input(mixed, index):
    op = _fitted_ops(mixed)[index]
    before = mixed.copy(deep=True)
    op.transform(mixed)
    pd.testing.assert_frame_equal(mixed, before)
