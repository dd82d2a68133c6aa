"""Check classes, one per kind: each builds from its spec, masks rows, measures and judges itself."""

from __future__ import annotations

import dask.dataframe as dd
import pandas as pd

from dpipe import quality
from dpipe.quality.checks import AllowedValues, NotNull, NullFraction, Range, Regex, RowCount, Unique
from dpipe.spec.quality import CHECK_NAMES
from tests.test_quality import FRAME, check, computed


def test_every_spec_check_has_a_class():
    assert set(quality.REGISTRY) == set(CHECK_NAMES)
    kinds = {
        "not_null": ({"columns": ["x"]}, NotNull),
        "range": ({"column": "x", "min": 0}, Range),
        "allowed_values": ({"column": "c", "values": ["a"]}, AllowedValues),
        "regex": ({"column": "c", "pattern": "a"}, Regex),
        "unique": ({"columns": ["k"]}, Unique),
        "row_count": ({"min": 1}, RowCount),
        "null_fraction": ({"column": "x", "max": 0.5}, NullFraction),
    }
    for kind, (kw, cls) in kinds.items():
        built = quality.build_check(check(check=kind, **kw), 3)
        assert type(built) is cls and built.where == "checks[3]" and built.kind == kind


def test_type_problems_are_the_checks_own():
    meta = pd.DataFrame(
        {
            "x": pd.Series([], dtype="float64"),
            "c": pd.Series([], dtype=pd.StringDtype("pyarrow")),
            "d": pd.Series([], dtype="datetime64[ns]"),
            "b": pd.Series([], dtype="bool"),
        }
    )

    def problem(**kw):
        return quality.build_check(check(**kw)).type_problem(meta)

    assert problem(check="range", column="x", min=0) is None
    assert problem(check="range", column="d", min="2024-03-01") is None
    assert problem(check="range", column="c", min="a", max="m") is None
    assert problem(check="range", column="x", min="2024-03-01") == (
        "text bounds ['2024-03-01'] need a text or date column; 'x' is float64"
    )
    assert problem(check="range", column="b", max=1) == "numeric bounds [1] need a numeric column; 'b' is bool"
    assert problem(check="regex", column="x", pattern="a") == "a regex needs a text column; 'x' is float64"
    assert problem(check="regex", column="c", pattern="a") is None
    assert problem(check="not_null", columns=["b", "d"]) is None
    assert problem(check="allowed_values", column="d", values=[1]) is None


def test_row_checks_sample_offending_values_as_text():
    c = quality.build_check(check(check="not_null", columns=["x", "c"]))
    assert c.sample(FRAME, c.mask(FRAME)) == ["x=None, c='N2'", "x=5.0, c=None"]


def test_row_check_evaluation():
    rng = quality.build_check(check(check="range", column="x", max=100), 2)
    passed = rng.evaluate(quality.Measured(rows_read=10))
    assert passed == quality.Outcome({"name": "range(x)", "check": "range", "action": "fail", "violations": 0})
    failed = rng.evaluate(quality.Measured(10, violations=2, samples=[("x=200.0", "a.parquet"), ("x=300.0", "b")]))
    assert failed.entry["violations"] == 2
    assert failed.problem == "checks[2] `range(x)`: 2 of 10 rows violate it; e.g. x=200.0 (a.parquet), x=300.0 (b)"
    held = quality.build_check(check(check="not_null", columns=["x"], action="quarantine"))
    assert held.evaluate(quality.Measured(10, violations=3, quarantined=2)) == quality.Outcome(
        {"name": "not_null(x)", "check": "not_null", "action": "quarantine", "quarantined": 2, "violations": 3}
    )


def test_unique_measures_and_evaluates_duplicated_keys():
    c = quality.build_check(check(check="unique", columns=["k"]))
    assert not c.per_row and not c.needs_prepass
    measured = computed(c.measure(dd.from_pandas(FRAME, npartitions=2)))
    assert (int(measured["rows"]), int(measured["keys"])) == (4, 2)
    outcome = c.evaluate(quality.Measured(5, measured))
    assert outcome.entry == {"name": "unique(k)", "check": "unique", "action": "fail", "violations": 4}
    assert outcome.problem.startswith("checks[0] `unique(k)`: 4 of 5 rows share a duplicated key (2 duplicated key(s);")
    assert "k=1 (2 rows)" in outcome.problem and "k=2 (2 rows)" in outcome.problem
    two = quality.build_check(check(check="unique", columns=["k", "c"]))
    top = pd.Series([2], index=pd.MultiIndex.from_tuples([(2, "N2")], names=["k", "c"]))
    problem = two.evaluate(quality.Measured(5, {"rows": 2, "keys": 1, "top": top})).problem
    assert problem.endswith("(1 duplicated key(s); e.g. k=2, c='N2' (2 rows))")
    assert c.evaluate(quality.Measured(5, {"rows": 0, "keys": 0, "top": top.iloc[:0]})).problem is None
    held = quality.build_check(check(check="unique", columns=["k"], action="quarantine"))
    assert held.per_row and held.needs_prepass and held.measure(None) == {}


def test_dataset_check_evaluation():
    count = quality.build_check(check(check="row_count", min=5, max=8))
    assert count.evaluate(quality.Measured(6)) == quality.Outcome(
        {"name": "row_count", "check": "row_count", "action": "fail", "value": 6, "violations": 0}
    )
    assert count.evaluate(quality.Measured(4)).problem == "checks[0] `row_count`: 4 rows read; expected at least 5"
    assert count.evaluate(quality.Measured(9)).problem == "checks[0] `row_count`: 9 rows read; expected at most 8"
    nulls = quality.build_check(check(check="null_fraction", column="x", max=0.25))
    assert computed(nulls.measure(dd.from_pandas(FRAME, npartitions=2))) == {"nulls": 1}
    ok = nulls.evaluate(quality.Measured(4, {"nulls": 1}))
    assert ok.problem is None and ok.entry["value"] == 0.25 and ok.entry["violations"] == 1
    bad = nulls.evaluate(quality.Measured(3, {"nulls": 1}))
    assert bad.entry["value"] == 0.333333
    assert bad.problem == "checks[0] `null_fraction(x)`: 1 of 3 rows (33.33%) lack 'x'; at most 25.00% allowed"
