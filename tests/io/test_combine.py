"""Small files' partitions combined into pieces past the checks (dpipe.io.combine)."""

from __future__ import annotations

import json
from pathlib import Path

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dpipe
from dpipe import stages
from dpipe.io.combine import boundaries, combine
from dpipe.plan import plan as plan_job
from tests.conftest import job_dict


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    sizes=st.lists(st.integers(0, 1000), min_size=1, max_size=60),
    target=st.integers(1, 5000),
    min_partitions=st.integers(1, 40),
)
def test_pieces_cover_every_partition_once_within_the_limit(sizes, target, min_partitions):
    starts = boundaries(sizes, target, min_partitions=min_partitions)
    assert starts[0] == 0 and starts[-1] == len(sizes)
    assert all(a < b for a, b in zip(starts, starts[1:]))
    limit = min(target, sum(sizes) / min_partitions)
    for a, b in zip(starts, starts[1:]):
        # A piece holds more than one partition only while they fit in the limit together.
        assert b - a == 1 or sum(sizes[a:b]) <= limit
        if b < len(sizes):
            assert sum(sizes[a : b + 1]) > limit  # greedy: the next partition would not have fit


def test_a_large_partition_stays_alone_and_a_small_source_keeps_its_spread():
    assert boundaries([5, 5, 100, 5, 5], 20, min_partitions=1) == [0, 2, 3, 5]
    # 64 files of 1 byte, a target of 1 MB: the floor of 32 pieces keeps 2 files a piece.
    assert len(boundaries([1] * 64, 1_000_000)) - 1 == 32
    assert boundaries([1] * 10, 1_000_000) == list(range(11))


def _frame(n: int, seen: list):
    def part(i, columns=None):
        seen.append(columns)
        df = pd.DataFrame({"i": [i] * 3, "x": [float(i)] * 3, "y": ["s"] * 3})
        return df if columns is None else df[columns]

    return dd.from_map(part, list(range(n)), meta=part(0)[:0], enforce_metadata=False)


def test_combined_rows_are_the_same_rows_in_order_and_projections_reach_the_read():
    seen: list = []
    frame = _frame(40, seen)
    combined = combine(frame, [10] * 40, 100, min_partitions=4)
    assert combined.npartitions == 4
    seen.clear()
    with dask.config.set(scheduler="sync"):
        pd.testing.assert_frame_equal(combined.compute().reset_index(drop=True), frame.compute().reset_index(drop=True))
        assert combined[combined.i >= 30]["x"].sum().compute() == sum(range(30, 40)) * 3
    assert ["x", "i"] in seen or ["i", "x"] in seen, seen  # `y` never read by the filtered sum
    # Nothing to combine, or sizes that are not the frame's: the frame itself.
    assert combine(frame, [10] * 40, None) is frame
    assert combine(frame, [10] * 39, 100) is frame
    assert combine(frame, [10] * 40, 5) is frame


@pytest.fixture(scope="module")
def many_files(demo_root, tmp_path_factory) -> Path:
    """The demo events as 80 small Parquet files in 4 Hive folders (20 files of 250 rows each)."""
    root = tmp_path_factory.mktemp("many") / "events"
    table = pq.read_table(demo_root / "events")
    for i in range(80):
        folder = root / f"date=2024-01-0{1 + i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(i * 250, 250).drop_columns(["date"]), folder / f"part-{i:03d}.parquet")
    return root


def _job(many_files: Path, out: Path, **sections):
    spec = job_dict(
        many_files.parent,
        out,
        source={"uri": str(many_files), **sections.pop("source", {})},
        checks=[{"check": "range", "column": "age", "max": 70, "action": "quarantine"}],
        quarantine={"max_fraction": 0.5},
        train={"num_boost_round": 5, "early_stopping_rounds": None},
        **sections,
    )
    return dpipe.job_from_dict(spec)


def test_a_job_over_many_small_files_trains_on_pieces_with_every_row_and_file(many_files, tmp_path, client):
    one_each = _job(many_files, tmp_path / "one", source={"partition_size": None})
    combined = _job(many_files, tmp_path / "pieces")
    p = plan_job(combined)
    gate = stages.quality_gate(p)
    assert len(p.source.files) == 80
    pieces = stages.prepare(p, p.source.frame, gate, stages.prepass(p, gate, dask.compute)).frame.npartitions
    # 80 files of about 9 kB: pieces of 2 files, the most that keeps at least 32 pieces.
    assert pieces == len(boundaries(p.source.partition_sizes, 2**28)) - 1 == 40
    p1 = plan_job(one_each)
    assert stages.prepare(p1, p1.source.frame, gate, stages.prepass(p1, gate, dask.compute)).frame.npartitions == 80

    results = [dpipe.run(job, client=client, progress=False) for job in (one_each, combined)]
    assert results[0].rows == results[1].rows
    pipelines = [json.loads((tmp_path / name / "pipeline.json").read_text()) for name in ("one", "pieces")]
    # The same statistics from the same rows: sums in another order (to the last bits), and the
    # median's sketch merged from other pieces (within its rank error: a step of these integers).
    for one, piece in zip(pipelines[0]["ops"], pipelines[1]["ops"]):
        assert one["spec"] == piece["spec"]
        if one["spec"]["op"] == "fill_missing" and one["spec"]["strategy"] == "median":
            assert one["state"]["values"] == pytest.approx(piece["state"]["values"], abs=1.0)
        else:
            assert one["state"] == _approx(piece["state"])
    # The quarantined rows still name the file each came from.
    quarantined = [pd.read_parquet(tmp_path / name / "quarantine") for name in ("one", "pieces")]
    for q in quarantined:
        assert len(q) == results[0].rows["quarantined"] > 0
        assert q["__source_file"].str.contains(r"part-\d{3}\.parquet$").all()
    key = ["event_id", "__source_file"]
    pd.testing.assert_frame_equal(
        quarantined[0][key].sort_values(key).reset_index(drop=True),
        quarantined[1][key].sort_values(key).reset_index(drop=True),
    )


def _approx(value):
    """``value`` with its floats compared to 1e-12 (relative)."""
    if isinstance(value, dict):
        return {k: _approx(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_approx(v) for v in value]
    return pytest.approx(value, rel=1e-12) if isinstance(value, float) else value


def test_a_features_job_writes_pieces_not_a_file_per_input_file(many_files, tmp_path, client):
    def run(name: str, partition_size):
        out = tmp_path / name
        spec = {
            "name": "many",
            "kind": "features",
            "source": {"uri": str(many_files), "partition_size": partition_size},
            "features": [{"op": "standard_scale", "columns": ["income"]}],
            "output": {"uri": str(out)},
        }
        dpipe.run(dpipe.job_from_dict(spec), client=client, progress=False)
        return out

    one_each, pieces = run("one", None), run("pieces", "256MiB")
    assert len(list(one_each.rglob("*.parquet"))) == 80
    assert len(list(pieces.rglob("*.parquet"))) == 40
    frames = [pd.read_parquet(p).sort_values("event_id").reset_index(drop=True) for p in (one_each, pieces)]
    pd.testing.assert_frame_equal(frames[0], frames[1])


def test_the_source_reads_its_pieces_one_task_each(many_files):
    job = _job(many_files, Path("/nonexistent"))
    source = plan_job(job).source
    pieces = source.combined()
    assert pieces.npartitions == 40
    # One task reads a piece's two files (plus Dask's own layer of none): no task per file.
    assert len(pieces.optimize().__dask_graph__()) == 40
    with dask.config.set(scheduler="sync"):
        whole = source.frame.compute().reset_index(drop=True)
        pd.testing.assert_frame_equal(pieces.compute().reset_index(drop=True), whole)
        pd.testing.assert_frame_equal(
            pieces[["event_id", "age"]].compute().reset_index(drop=True), whole[["event_id", "age"]]
        )


def test_a_damaged_file_among_pieces_is_skipped_and_named(many_files, tmp_path, client):
    import shutil

    data = tmp_path / "events"
    shutil.copytree(many_files, data)
    bad = data / "date=2024-01-02" / "part-041.parquet"
    size = bad.stat().st_size
    # A valid footer, damaged pages: found when the worker reads it, inside its piece's task.
    raw = bytearray(bad.read_bytes())
    raw[4 : size // 2] = b"\x07" * (size // 2 - 4)
    bad.write_bytes(bytes(raw))
    spec = {
        "name": "damaged",
        "kind": "features",
        "source": {"uri": str(data)},
        "features": [{"op": "standard_scale", "columns": ["income"]}],
        "quarantine": {"bad_files": "skip", "uri": str(tmp_path / "quarantine")},
        "output": {"uri": str(tmp_path / "out")},
    }
    result = dpipe.run(dpipe.job_from_dict(spec), client=client, progress=False)
    assert result.rows["read"] == 79 * 250
    assert [r["file"] for r in result.manifest["quality"]["bad_files"]] == [str(bad)]
    assert len(pd.read_parquet(tmp_path / "out")) == 79 * 250
