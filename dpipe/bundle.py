"""The model bundle: XGBoost model (UBJSON), fitted pipeline (JSON), metrics, manifest.

::

    <output.uri>/
        model.ubj               the booster, cut at the best iteration
        pipeline.json           fitted feature ops + model inputs + id columns
        metrics.json            train/valid metrics at the best iteration, full history
        manifest.json           resolved spec (secrets removed), inputs, rows, timings, versions
        valid_predictions/      optional: id columns, label and prediction of validation rows

``manifest.json`` is written last: a folder without it is not a bundle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dpipe.errors import BundleError
from dpipe.io.fs import resolve, storage_errors
from dpipe.io.sinks import StagedOutput
from dpipe.pipeline import FeaturePipeline
from dpipe.train import ModelInput
from dpipe.versions import library_versions

MODEL = "model.ubj"
PIPELINE = "pipeline.json"
METRICS = "metrics.json"
MANIFEST = "manifest.json"


@dataclass
class Bundle:
    """A trained model with everything needed to reproduce its inputs at prediction time."""

    booster: Any  # xgboost.Booster
    pipeline: FeaturePipeline
    model_input: ModelInput
    id_columns: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)

    def pipeline_dict(self) -> dict:
        return {
            **self.pipeline.to_dict(),
            "model_input": self.model_input.to_dict(),
            "id_columns": self.id_columns,
            "versions": library_versions(),
        }

    def write(self, out: StagedOutput) -> None:
        """Write every file into a staged output; the caller commits it."""
        out.write_bytes(MODEL, bytes(self.booster.save_raw(raw_format="ubj")))
        out.write_json(PIPELINE, self.pipeline_dict())
        out.write_json(METRICS, self.metrics)
        out.write_json(MANIFEST, self.manifest)

    @classmethod
    def load(cls, uri: str, storage_options: dict | None = None) -> Bundle:
        """Read a bundle written by ``dpipe run``."""
        import xgboost as xgb

        raw = read_files(uri, storage_options, (MODEL, PIPELINE, METRICS, MANIFEST))
        try:
            pipeline_data = json.loads(raw[PIPELINE])
            booster = xgb.Booster()
            booster.load_model(bytearray(raw[MODEL]))
            return cls(
                booster=booster,
                pipeline=FeaturePipeline.from_dict(pipeline_data),
                model_input=ModelInput.from_dict(pipeline_data["model_input"]),
                id_columns=list(pipeline_data.get("id_columns", [])),
                metrics=json.loads(raw[METRICS]),
                manifest=json.loads(raw[MANIFEST]),
            )
        except BundleError:
            raise
        except (ValueError, KeyError, TypeError, xgb.core.XGBoostError) as exc:
            text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
            what = f"missing key {exc}" if isinstance(exc, KeyError) else text
            raise BundleError(
                f"bundle: {uri!r} is corrupt: {what}",
                hint="write it again with `dpipe run`; do not edit the files of a bundle",
            ) from exc


def read_files(uri: str, storage_options: dict | None, names) -> dict[str, bytes]:
    """The raw bytes of the named files of a committed bundle (its manifest marks it complete)."""
    fs, path = resolve(uri, storage_options, where="bundle")
    path = path.rstrip("/")
    with storage_errors("bundle", uri):
        if not fs.exists(f"{path}/{MANIFEST}"):
            what = "is not a complete model bundle (no manifest.json)" if fs.exists(path) else "does not exist"
            raise BundleError(f"bundle: {uri!r} {what}", hint="pass the `output.uri` of a finished `dpipe run`")
        try:
            return {name: fs.cat_file(f"{path}/{name}") for name in names}
        except FileNotFoundError as exc:
            raise BundleError(f"bundle: {uri!r} is incomplete: {exc}") from exc
