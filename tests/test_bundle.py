import json

import numpy as np
import pytest

from dpipe.bundle import Bundle
from dpipe.errors import BundleError
from dpipe.io import StagedOutput
from dpipe.pipeline import FeaturePipeline
from dpipe.train import ModelInput


@pytest.fixture
def bundle_dir(tmp_path):
    import xgboost as xgb

    rng = np.random.default_rng(0)
    booster = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(rng.random((20, 2)), np.arange(20) % 2), 1)
    model_input = ModelInput(["f0", "f1"], [])
    bundle = Bundle(booster, FeaturePipeline([]), model_input, ["id"], {"best_iteration": 0}, {"job": "t"})
    with StagedOutput(str(tmp_path / "bundle"), marker="manifest.json") as out:
        bundle.write(out)
        out.commit()
    return tmp_path / "bundle"


def test_bundle_round_trip(bundle_dir):
    loaded = Bundle.load(str(bundle_dir))
    assert loaded.id_columns == ["id"] and loaded.model_input.features == ["f0", "f1"]
    assert loaded.metrics == {"best_iteration": 0} and loaded.manifest == {"job": "t"}


@pytest.mark.parametrize("damage", ["metrics.json", "manifest.json", "pipeline.json", "model_input"])
def test_damaged_bundle_is_a_bundle_error(bundle_dir, damage):
    if damage == "model_input":
        data = json.loads((bundle_dir / "pipeline.json").read_text())
        del data["model_input"]
        (bundle_dir / "pipeline.json").write_text(json.dumps(data))
    else:
        (bundle_dir / damage).write_text("{not json")
    with pytest.raises(BundleError, match=r"(?s)bundle: '.*bundle' is corrupt.*Hint:"):
        Bundle.load(str(bundle_dir))
