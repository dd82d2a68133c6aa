"""The one table of built-in ops, the fitted state each op declares, and what importing ops costs."""

from __future__ import annotations

import importlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import dpipe.ops
from dpipe.errors import BundleError
from dpipe.ops import REGISTRY, Op, build_op
from dpipe.pipeline import FeaturePipeline
from dpipe.spec import OP_MODELS, OP_NAMES
from dpipe.spec.features import BUILTIN_OPS
from tests.ops.conftest import fit_pipeline, spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", list(BUILTIN_OPS))
def test_every_builtin_op_resolves_to_the_op_its_entry_names(name):
    entry = BUILTIN_OPS[name]
    module, _, qualname = entry.implementation.partition(":")
    cls = REGISTRY[name]
    assert isinstance(cls, type) and issubclass(cls, Op)
    assert cls.name == name
    assert (cls.__module__, cls.__qualname__) == (module, qualname)
    assert getattr(importlib.import_module(module), qualname) is cls
    # The spec model takes the same name, so a spec entry finds its implementation.
    assert entry.model.model_fields["op"].annotation.__args__ == (name,)
    assert getattr(dpipe.ops, qualname) is cls  # `from dpipe.ops import StandardScale` still works


def test_op_names_models_and_implementations_come_from_one_table():
    assert list(REGISTRY) == list(OP_MODELS) == list(OP_NAMES) == list(BUILTIN_OPS)
    assert "standard_scale" in REGISTRY and "mypkg.features:Winsorize" not in REGISTRY
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        dpipe.ops.Nope  # noqa: B018


def _run(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_op_contract_imports_no_dask():
    code = (
        "import json, sys\n"
        "import dpipe.ops.base\n"
        "from dpipe.ops import REGISTRY, build_op\n"
        "print(json.dumps(sorted(m for m in ('dask', 'distributed', 'dpipe.ops.scaling') if m in sys.modules)))\n"
    )
    assert _run(code) == []


def test_validating_a_job_with_a_custom_op_imports_no_dask():
    code = (
        "import json, sys\n"
        "from dpipe.spec.features import OpSpec\n"
        "from pydantic import TypeAdapter\n"
        "TypeAdapter(OpSpec).validate_python({'op': 'tests.ops.custom_ops:Winsorize', 'columns': ['x']})\n"
        "print(json.dumps(sorted(m for m in ('dask', 'distributed') if m in sys.modules)))\n"
    )
    assert _run(code) == []


# -- fitted state, declared once -----------------------------------------------------------------
@pytest.fixture
def frame() -> dd.DataFrame:
    rng = np.random.default_rng(5)
    n = 300
    pdf = pd.DataFrame(
        {
            "x": rng.normal(0, 1, n),
            "k": pd.array(rng.choice(["a", "b", "c"], n), dtype=pd.StringDtype("pyarrow")),
        }
    )
    return dd.from_pandas(pdf, npartitions=3)


# The saved keys are the bundle format: they must not change.
SAVED_KEYS = [
    ({"op": "fill_missing", "columns": ["x"], "strategy": "median"}, ["values"]),
    ({"op": "fill_missing", "columns": ["x"], "value": 0.0}, ["values"]),  # saved although not learned
    ({"op": "clip", "columns": ["x"], "quantiles": [0.1, 0.9]}, ["lower", "upper"]),
    ({"op": "clip", "columns": ["x"], "lower": 0.0}, None),
    ({"op": "standard_scale", "columns": ["x"]}, ["mean", "scale"]),
    ({"op": "minmax_scale", "columns": ["x"]}, ["scale", "offset"]),
    ({"op": "robust_scale", "columns": ["x"]}, ["center", "scale"]),
    ({"op": "bucketize", "columns": ["x"], "n_bins": 4}, ["edges"]),
    ({"op": "bucketize", "columns": ["x"], "strategy": "fixed", "boundaries": [0.0]}, None),
    ({"op": "categorical", "columns": ["k"]}, ["categories"]),
    ({"op": "one_hot", "columns": ["k"]}, ["categories"]),
    ({"op": "aggregate", "by": ["k"], "columns": {"x": ["mean"]}}, ["table"]),
    ({"op": "log", "columns": ["x"]}, None),
]


@pytest.mark.parametrize(("entry", "keys"), SAVED_KEYS, ids=lambda v: v["op"] if isinstance(v, dict) else None)
def test_saved_state_keys_and_round_trip(frame, entry, keys):
    pipe, _ = fit_pipeline([entry], frame)
    op = pipe.ops[0]
    state = op.get_state()
    assert (list(state) if state is not None else None) == keys
    assert op.fitted
    reloaded = FeaturePipeline.from_json(pipe.to_json()).ops[0]
    assert reloaded.get_state() == state and reloaded.fitted
    if state is not None:
        # Loading copies: the loaded op shares nothing with the saved state.
        fresh = build_op(spec(**entry), "features[0]")
        fresh.set_state(state)
        assert fresh.get_state() == state
        first = next(iter(fresh.get_state().values()))
        assert first is not next(iter(state.values()))


def test_an_op_is_fitted_once_its_state_is_set(frame):
    op = build_op(spec("standard_scale", columns=["x"]), "features[0]")
    assert op.stateful and not op.fitted and op.get_state() is None
    op.set_state({"mean": {"x": 1.0}, "scale": {"x": 2.0}})
    assert op.fitted and (op.mean_, op.scale_) == ({"x": 1.0}, {"x": 2.0})


def test_loading_state_with_other_keys_is_a_bundle_error():
    op = build_op(spec("standard_scale", columns=["x"]), "features[3]")
    with pytest.raises(BundleError, match=r"features\[3\] \(standard_scale\): saved state has the keys \['mean'\]"):
        op.set_state({"mean": {"x": 1.0}})


def test_state_names_are_checked_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"fitted attributes are public and end in '_', got \['bounds'\]"):

        class Bad(Op):
            state = ("bounds",)


@pytest.mark.parametrize(
    ("entry", "stateful", "partition_wise"),
    [
        ({"op": "fill_missing", "columns": ["x"], "strategy": "mean"}, True, True),
        ({"op": "fill_missing", "columns": ["x"], "value": 1}, False, True),
        ({"op": "fill_missing", "columns": ["x"], "strategy": "forward", "by": ["k"], "order_by": "x"}, False, False),
        ({"op": "clip", "columns": ["x"], "quantiles": [0.1, 0.9]}, True, True),
        ({"op": "clip", "columns": ["x"], "upper": 1.0}, False, True),
        ({"op": "bucketize", "columns": ["x"], "strategy": "fixed", "boundaries": [0.0]}, False, True),
        ({"op": "categorical", "columns": ["k"]}, True, True),
        ({"op": "dedupe", "key": ["k"]}, False, False),
        ({"op": "filter", "expr": "x > 0"}, False, True),
    ],
    ids=lambda v: v["op"] if isinstance(v, dict) else None,
)
def test_stateful_and_partition_wise_follow_the_spec(entry, stateful, partition_wise):
    op = build_op(spec(**entry), "features[0]")
    assert (op.stateful, op.partition_wise) == (stateful, partition_wise)


def test_ops_pickle_into_tasks_without_their_caches(frame):
    pipe, _ = fit_pipeline([{"op": "aggregate", "by": ["k"], "columns": {"x": ["mean"]}}], frame)
    op = pipe.ops[0]
    op.transform(frame.compute(scheduler="sync"))
    assert op._frame is not None
    again = pickle.loads(pickle.dumps(op))
    assert again._frame is None and again.get_state() == op.get_state()
