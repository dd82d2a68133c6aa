"""docs/connectors.md runs: its Feather connector module, its registration and its job spec."""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import dpipe
from dpipe.io import Datum, OpenedSource, open_source
from dpipe.spec.connectors import KNOWN_SOURCES

DOC = Path(__file__).resolve().parents[2] / "docs" / "connectors.md"
FENCE = re.compile(r"^ *```(\w+)\n(.*?)^ *```", re.S | re.M)


def blocks(lang: str) -> list[str]:
    return [code for found, code in FENCE.findall(DOC.read_text()) if found == lang]


def block(lang: str, first_line: str) -> str:
    [code] = [c for c in blocks(lang) if c.splitlines()[0].strip() == first_line]
    return code


@pytest.fixture
def feather_connector(tmp_path, monkeypatch):
    """The doc's module on sys.path, its registration run, and three Feather files to read."""
    (tmp_path / "feather_source.py").write_text(block("python", "# feather_source.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    saved = dict(KNOWN_SOURCES)
    exec(block("python", "# register"), {})
    folder = tmp_path / "data" / "events_feather"
    folder.mkdir(parents=True)
    parts = []
    for i in range(3):
        part = pd.DataFrame(
            {
                "event_id": range(i * 10, i * 10 + 10),
                "age": [20.0 + i + j for j in range(10)],
                "country": pd.array(["de", "fr"] * 5, dtype="string[pyarrow]"),
                "converted": [j % 2 for j in range(10)],
                "unused": [0] * 10,
            }
        )
        part.to_feather(folder / f"part-{i}.feather")
        parts.append(part)
    (folder / "_SUCCESS").write_bytes(b"")  # neither a marker nor other files are data
    (folder / "README.txt").write_text("not data")
    yield folder, pd.concat(parts, ignore_index=True)
    KNOWN_SOURCES.clear()
    KNOWN_SOURCES.update(saved)
    sys.modules.pop("feather_source", None)


def test_the_job_spec_validates_with_the_connectors_model(feather_connector, tmp_path):
    spec = yaml.safe_load(block("yaml", "name: feather-demo"))
    job = dpipe.job_from_dict(spec)
    assert type(job.source).__name__ == "FeatherSpec"
    assert (job.source.format, job.source.use_threads) == ("feather", True)
    by_path = dpipe.job_from_dict({**spec, "source": {**spec["source"], "format": "feather_source:FeatherSource"}})
    assert type(by_path.source).__name__ == "FeatherSpec"
    with pytest.raises(dpipe.SpecError, match=r"source.use_thread: unknown key; .*did you mean 'use_threads'"):
        dpipe.job_from_dict({**spec, "source": {**spec["source"], "use_thread": False}})
    inferred = dpipe.job_from_dict({**spec, "source": {"uri": "data/one.feather"}})
    assert inferred.source.format == "feather"  # from the registered suffix


def test_the_connector_reads_content_projection_lineage_and_datums(feather_connector, monkeypatch):
    import feather_source

    folder, expected = feather_connector
    job = dpipe.job_from_dict(yaml.safe_load(block("yaml", "name: feather-demo")))
    seen = []
    read_feather = feather_source.read_feather

    def spy(file, columns=None):
        seen.append(columns)
        return read_feather(file, columns=columns)

    monkeypatch.setattr(feather_source, "read_feather", spy)
    src = open_source(job.source)

    assert isinstance(src, OpenedSource) and src.format == "feather"
    paths = [str(folder / f"part-{i}.feather") for i in range(3)]
    assert src.files == paths and src.frame.npartitions == 3
    columns = ["event_id", "age", "country", "converted"]
    frame = src.frame.compute(scheduler="sync")
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), expected[columns])
    assert seen == [None] * 3  # every column: no projection to push
    seen.clear()
    ages = src.frame[["age"]].compute(scheduler="sync")
    assert seen == [["age"]] * 3 and ages["age"].tolist() == expected["age"].tolist()  # the projection reached the read
    for datum, path in zip(src.datums, paths):
        stat = os.stat(path)
        assert datum == Datum(path, stat.st_size, dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC).isoformat())
    lineage = src.lineage()
    assert lineage == {"kind": "files", "versioned_by": "mtime", "datums": [d.to_dict() for d in src.datums]}
    assert src.nbytes == sum(os.path.getsize(p) for p in paths)


def test_the_python_snippet_runs(feather_connector):
    [snippet] = [c for c in blocks("python") if c.startswith("from dpipe.io import open_source")]
    scope: dict = {}
    exec(snippet, scope)
    assert scope["src"].columns == ["age"] and len(scope["src"].datums) == 3


def test_the_connector_runs_on_a_process_cluster(feather_connector, tmp_path, client):
    # The scheduler and the workers import the module that reads one file, as they would an
    # installed package.
    client.run(_prepend_to_path, str(tmp_path))
    client.run_on_scheduler(_prepend_to_path, str(tmp_path))
    folder, expected = feather_connector
    src = open_source({"format": "feather", "uri": str(folder), "columns": ["age", "converted"]})
    assert client.compute(src.frame["age"].sum()).result(timeout=60) == expected["age"].sum()


def _prepend_to_path(folder: str) -> None:
    sys.path.insert(0, folder)
