"""Hostile specs: generated job specs, `--set` overrides and YAML text give either a valid job or
one clean error (a SpecError: exit status 2 from the CLI), never a traceback.

Property-based (hypothesis): each generated spec is the demo job with one to three mutations (a
key deleted, renamed or added, a value replaced by any JSON-like value), or text that is not a
spec at all. The source is never opened (``validate --offline``): this is about the spec.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dpipe
from dpipe.cli import main
from dpipe.errors import SpecError

BASE: dict[str, Any] = {
    "name": "fuzz",
    "source": {"uri": "data/events", "format": "parquet", "filters": [["country", "==", "DE"]]},
    "id_columns": ["event_id"],
    "features": [
        {"op": "fill_missing", "columns": ["age"], "strategy": "median"},
        {"op": "derive", "name": "log_income", "expr": "log1p(income)"},
        {"op": "standard_scale", "columns": ["pages_per_session"]},
        {"op": "categorical", "columns": ["country", "device"]},
    ],
    "label": {"column": "converted"},
    "split": {"valid_fraction": 0.25, "seed": 3, "key": ["event_id"]},
    "train": {"num_boost_round": 30, "early_stopping_rounds": 5, "params": {"max_depth": 4}},
    "output": {"uri": "runs/fuzz"},
    "cluster": {"n_workers": 2},
}

SETTINGS = settings(
    max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", "0", "-1", "1e400", "nan", "${NOPE}", "${HOME}", "a.b", "[", "{", "*", "~", "NULL"]),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)


def paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into ``data`` (dict keys and list indices), the root excluded."""
    out = []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        out.append((*prefix, key))
        out += paths(value, (*prefix, key))
    return out


@st.composite
def mutated_specs(draw) -> dict:
    import copy

    spec = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        where = paths(spec)
        if not where:
            break
        path = draw(st.sampled_from(where))
        parent = spec
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "rename", "add"]))
        if action == "replace":
            parent[last] = draw(values)
        elif action == "delete":
            del parent[last]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = parent.pop(last)
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(values)
        else:
            parent.append(draw(values))
    return spec


def judged(build) -> Any:
    """``build()``'s job, or ``None`` when it raised a SpecError; anything else fails the test."""
    try:
        return build()
    except SpecError as exc:
        assert str(exc).strip(), "an empty message"
        assert "Traceback" not in str(exc)
        return None


@SETTINGS
@given(mutated_specs())
def test_every_mutated_spec_is_a_job_or_one_spec_error(spec):
    job = judged(lambda: dpipe.job_from_dict(spec))
    if job is not None:
        assert job.name and job.output.uri


@SETTINGS
@given(st.dictionaries(st.text(max_size=12), values, max_size=6))
def test_any_mapping_is_a_job_or_one_spec_error(spec):
    judged(lambda: dpipe.job_from_dict(spec))


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "job.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return path


override_keys = st.one_of(
    st.sampled_from([".".join(str(k) for k in p) for p in paths(BASE)]),
    st.text(max_size=20),
    st.sampled_from(["", ".", "..", "train..params", "features.99.op", "features.-1", "train.params.max_depth.x"]),
)
override_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "null", "[1, 2", "{a: 1}", "!!python/object:os.system", "&a [*a]", "1e999", "true"]),
)


@SETTINGS
@given(st.lists(st.tuples(override_keys, override_values), min_size=1, max_size=3))
def test_set_overrides_are_a_job_or_one_spec_error(spec_file, overrides):
    judged(lambda: dpipe.load_job(spec_file, overrides=[f"{k}={v}" for k, v in overrides]))


@SETTINGS
@given(st.text(max_size=200))
def test_yaml_text_is_a_job_or_one_spec_error(spec_file, text):
    path = spec_file.with_name("text.yaml")
    path.write_text(text)
    judged(lambda: dpipe.load_job(path))


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(mutated_specs(), st.lists(st.tuples(override_keys, override_values), max_size=2))
def test_cli_validate_exits_0_or_2_with_one_error_line(spec_file, spec, overrides):
    path = spec_file.with_name("cli.yaml")
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    err = io.StringIO()
    args = ["validate", str(path), "--offline", *[f"--set={k}={v}" for k, v in overrides]]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    assert code in (0, 2), err.getvalue()
    assert "Traceback" not in err.getvalue()
    if code == 2:
        assert err.getvalue().count("dpipe: error:") == 1, err.getvalue()
