"""The registry: formats found by name, by import path or by entry point, imported lazily."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint, EntryPoints
from pathlib import Path

import pandas as pd
import pytest

from dpipe.errors import SpecError
from dpipe.io import (
    OpenedSource,
    ParquetFolderSink,
    Sink,
    Source,
    open_sink,
    open_source,
    register_sink,
    register_source,
    sink_class,
    source_class,
)
from dpipe.io.sources import CSVSource, JSONSource, ParquetSource
from dpipe.spec import connectors
from dpipe.spec.connectors import KNOWN_SINKS, KNOWN_SOURCES
from dpipe.spec.source import ParquetSourceSpec

WRAPPED = '''
import dataclasses

from dpipe.io.sources import CSVSource
from dpipe.spec.source import CSVSourceSpec


class UpperSpec(CSVSourceSpec):
    """CSV with every column name upper-cased."""

    format: str = "upper-csv"


class UpperCSV(CSVSource):
    Spec = UpperSpec

    def open(self, *, bad_file_log=None):
        opened = super().open(bad_file_log=bad_file_log)
        return dataclasses.replace(opened, frame=opened.frame.rename(columns=str.upper))
'''


@pytest.fixture
def upper_csv(tmp_path, monkeypatch):
    """A connector module on sys.path, and a CSV file it reads; the registry is restored after."""
    (tmp_path / "upper_csv_connector.py").write_text(WRAPPED)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,x\n2,y\n")
    saved = dict(KNOWN_SOURCES), dict(KNOWN_SINKS)
    yield "upper_csv_connector:UpperCSV", str(data)
    for table, before in zip((KNOWN_SOURCES, KNOWN_SINKS), saved):
        table.clear()
        table.update(before)


def test_built_in_formats_are_found_by_name(tmp_path):
    assert [source_class(f) for f in ("parquet", "csv", "json")] == [ParquetSource, CSVSource, JSONSource]
    assert sink_class("parquet") is ParquetFolderSink
    assert ParquetSource.Spec is ParquetSourceSpec
    assert isinstance(ParquetSource(ParquetSourceSpec(uri="x")), Source)  # they meet the protocols
    assert isinstance(ParquetFolderSink(str(tmp_path / "out")), Sink)


def test_unknown_formats_are_spec_errors_naming_the_known_ones():
    with pytest.raises(SpecError, match=r"features\[2\].source.format: unknown format 'avro'; expected one of"):
        source_class("avro", where="features[2].source")
    with pytest.raises(
        SpecError,
        match=r"output.format: unknown format 'csv'; expected one of \['parquet', 'delta', 'iceberg', 'postgresql', 'duckdb'\]",
    ):
        sink_class("csv")


def test_registered_and_import_path_connectors_open_through_the_registry(upper_csv):
    path, data = upper_csv
    by_path = open_source({"format": path, "uri": data})
    assert isinstance(by_path, OpenedSource) and list(by_path.frame.columns) == ["A", "B"]
    register_source("upper-csv", path, suffixes=(".ucsv",))
    assert source_class("upper-csv").__name__ == "UpperCSV"
    opened = open_source({"format": "upper-csv", "uri": data, "columns": ["b"]})
    assert opened.frame.compute(scheduler="sync").to_dict("list") == {"B": ["x", "y"]}
    assert opened.format == "upper-csv" and opened.files == [data]


def test_registration_is_checked_and_does_not_silently_replace(upper_csv):
    path, _ = upper_csv
    register_source("upper-csv", path)
    register_source("upper-csv", path)  # the same again is fine
    with pytest.raises(ValueError, match="already registered to 'upper_csv_connector:UpperCSV'; pass clobber=True"):
        register_source("upper-csv", "other:Thing")
    register_source("upper-csv", "other:Thing", clobber=True)
    with pytest.raises(ValueError, match=r"`format` must be a lower-case name such as 'delta'. Instead got 'Bad Name'"):
        register_source("Bad Name", path)
    with pytest.raises(ValueError, match=r"`implementation` must be an import path 'module:Class'"):
        register_sink("mine", "not a path")


def test_a_missing_package_is_reported_with_the_install_hint(upper_csv):
    register_source(
        "delta-test", "no_such_package_xyz.delta:DeltaSource", spec=ParquetSourceSpec, hint="pip install xyz"
    )
    with pytest.raises(
        SpecError, match=r"(?s)source.format: cannot import the source for 'delta-test'.*Hint: pip install xyz"
    ):
        source_class("delta-test")


def test_entry_points_add_formats_on_first_miss(upper_csv, monkeypatch):
    path, data = upper_csv
    found = EntryPoints([EntryPoint("upper-ep", path, "dpipe.sources")])
    monkeypatch.setattr(connectors, "entry_points", lambda group: found if group == "dpipe.sources" else EntryPoints())
    monkeypatch.setattr(connectors, "_ENTRY_POINTS_LOADED", set())
    assert "upper-ep" not in KNOWN_SOURCES
    assert list(open_source({"format": "upper-ep", "uri": data}).frame.columns) == ["A", "B"]
    assert KNOWN_SOURCES["upper-ep"].implementation == path


def test_redacted_storage_options_are_replaced_or_required(tmp_path):
    pd.DataFrame({"x": [1, 2]}).to_parquet(tmp_path / "a.parquet")
    saved = ParquetSourceSpec(uri=str(tmp_path), storage_options={"auto_mkdir": "***"})
    with pytest.raises(
        SpecError, match=r"(?s)label.join.source: the bundle does not store .*Hint: pass them to predict"
    ):
        open_source(saved, where="label.join.source")
    opened = open_source(saved, storage_options={"auto_mkdir": False}, columns=["x"])
    assert opened.frame.compute(scheduler="sync")["x"].tolist() == [1, 2]
    assert saved.storage_options == {"auto_mkdir": "***"}  # the spec itself is not changed


def test_sinks_are_opened_from_their_spec(tmp_path):
    sink = open_sink({"uri": str(tmp_path / "out"), "overwrite": False})
    assert isinstance(sink, ParquetFolderSink) and sink.uri == str(tmp_path / "out")
    with pytest.raises(
        SpecError, match=r"output.overwrit: unknown key; allowed keys: .*\(did you mean 'overwrite'\?\)"
    ):
        open_sink({"uri": str(tmp_path / "out"), "overwrit": False})


def test_validating_a_spec_imports_no_implementation():
    code = (
        "import sys\n"
        "from dpipe.spec import job_from_dict\n"
        "job_from_dict({'source': {'uri': 'x.csv'}, 'label': {'column': 'y'}, 'output': {'uri': 'o'}})\n"
        "print(sorted(m for m in sys.modules if m.startswith(('dpipe.io', 'dask', 'pyarrow'))))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_spec_of_the_base_model_is_validated_as_its_kind():
    from dpipe.io import source_spec
    from dpipe.spec.source import BaseSourceSpec, ParquetSourceSpec

    spec = source_spec(BaseSourceSpec(uri="data/x", format="parquet"))
    assert isinstance(spec, ParquetSourceSpec) and spec.partitioning == "hive"
    same = ParquetSourceSpec(uri="data/x", format="parquet")
    assert source_spec(same) is same
