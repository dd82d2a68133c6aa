import numpy as np
import pandas as pd
import pytest

from dpipe.errors import ColumnError, ExpressionError
from dpipe.expr import Expression


@pytest.fixture
def df():
    return pd.DataFrame(
        {
            "a": [1.0, np.nan, 3.0, 4.0],
            "b": pd.array(["x", "y", None, "x"], dtype="string[pyarrow]"),
            "dep time": [500, 700, 900, 1100],
        }
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a > 1", [False, False, True, True]),
        ("a > 1 and b == 'x'", [False, False, False, True]),
        ("a > 1 or b == 'y'", [False, True, True, True]),
        ("not (a > 1)", [True, False, False, False]),
        ("a != 1", [False, False, True, True]),
        ("b != 'x'", [False, True, False, False]),
        ("a > 1 or isnull(a)", [False, True, True, True]),
        ("not (a > 1 and b == 'x')", [True, True, False, False]),  # Kleene: False and NA is False
        ("b in ['x', 'y']", [True, True, False, True]),
        ("b not in ['x']", [False, True, False, False]),
        ("isnull(a)", [False, True, False, False]),
        ("notnull(b)", [True, True, False, True]),
        ("`dep time` >= 700", [False, True, True, True]),
        ("1 < a < 4", [False, False, True, False]),
    ],
)
def test_comparisons_with_missing_values_are_missing_and_filters_drop_them(df, text, expected):
    assert Expression(text).mask(df).tolist() == expected


def test_arithmetic_and_functions_match_pandas(df):
    out = Expression("log1p(a) * 2 + `dep time` / 100").evaluate(df)
    pd.testing.assert_series_equal(out, np.log1p(df["a"]) * 2 + df["dep time"] / 100, check_names=False)
    out = Expression("a if a > 2 else -1").evaluate(df)
    assert out.tolist() == [-1.0, -1.0, 3.0, 4.0]
    assert Expression("clip(a, 2, 3)").evaluate(df).tolist()[2:] == [3.0, 3.0]


def test_columns_are_reported(df):
    assert Expression("log(a) + `dep time` > b").columns == {"a", "dep time", "b"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os').system('x')", "is not allowed"),
        ("a.real", r"`a.real` \(Attribute\) is not allowed"),
        ("a[0]", "Subscript"),
        ("open('f')", "calling 'open' is not allowed"),
        ("(lambda: 1)()", "is not allowed"),
        ("[x for x in a]", "ListComp"),
        ("a in b", "`in` with anything but a literal list"),
        ("a >", "cannot parse"),
        ("log(a, base=2)", "keyword arguments"),
    ],
)
def test_unsafe_or_invalid_expressions_are_rejected(text, message):
    with pytest.raises(ExpressionError, match=message):
        Expression(text, where="features[1].expr")


def test_missing_column_names_the_location(df):
    with pytest.raises(ColumnError, match=r"features\[4\].expr: expression 'c > 1' uses column\(s\) \['c'\]"):
        Expression("c > 1", where="features[4].expr").evaluate(df)


def test_derived_conditions_keep_missing(df):
    out = Expression("a > 1").evaluate(df)
    assert out.isna().tolist() == [False, True, False, False]


def test_a_filter_must_be_a_condition(df):
    with pytest.raises(ExpressionError, match="expression 'a \\* 2' is not a condition"):
        Expression("a * 2").mask(df)


def test_type_errors_are_expression_errors(df):
    with pytest.raises(ExpressionError, match="cannot be applied"):
        Expression("b - 1", where="label.expr").evaluate(df)


@pytest.mark.parametrize("text", ["where(x > 1, flag, False)", "flag if x > 1 else 0", "where(x > 1, n, 0)"])
def test_where_with_a_nullable_column_gives_numbers_not_objects(text):
    # Booleans are read as pandas' nullable `boolean`; numpy's where would make objects of them.
    df = pd.DataFrame(
        {
            "flag": pd.array([True, None, True], dtype="boolean"),
            "n": pd.array([5, None, 7], dtype="Int64"),
            "x": [1.0, 2.0, 3.0],
        }
    )
    out = Expression(text).evaluate(df)
    assert out.dtype == "float64"
    first, missing, last = out.tolist()
    assert first == 0.0 and np.isnan(missing) and last in (1.0, 7.0)
