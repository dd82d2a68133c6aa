"""Library versions: recorded by fitted pipelines and bundles, ignored when loading."""

from __future__ import annotations

import pandas as pd

from dpipe.pipeline import FeaturePipeline
from dpipe.spec import OP_MODELS
from dpipe.versions import library_versions


def test_library_versions_names_python_and_installed_libraries_only():
    versions = library_versions(("pandas", "no_such_library_xyz"))
    assert versions == {"python": versions["python"], "pandas": pd.__version__}


def test_pipeline_state_records_versions_and_loading_ignores_them():
    pipe = FeaturePipeline.from_specs([OP_MODELS["standard_scale"](op="standard_scale", columns=["a"])])
    pipe.ops[0].set_state({"mean": {"a": 1.0}, "scale": {"a": 2.0}})
    data = pipe.to_dict()
    assert set(data["versions"]) == {"python", "dpipe", "dask", "pandas", "pyarrow", "xgboost"}
    data["versions"] = {"dask": "0.0.1", "something": "else"}
    loaded = FeaturePipeline.from_dict(data)
    assert loaded.ops[0].get_state() == {"mean": {"a": 1.0}, "scale": {"a": 2.0}}
