"""Schemas across files (unified, or given as `schema:`) and large files split into partitions."""

import gzip
import json

import dask
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dask.base import tokenize

from dpipe.errors import ColumnError, DataError, SpecError
from dpipe.io import BadFileLog, open_source
from dpipe.io.schema import unify
from dpipe.spec.source import source_spec


def parts_of(src):
    """Every partition as its own frame, in order."""
    return list(dask.compute(*src.frame.to_delayed(), scheduler="sync"))


# -- unification --------------------------------------------------------------------------------
def test_a_column_only_a_later_file_has_is_read_with_nulls_elsewhere(tmp_path):
    pq.write_table(pa.table({"id": [1, 2], "x": [1.0, 2.0]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [3], "x": [3.0], "extra": ["new"]}), tmp_path / "b.parquet")
    src = open_source({"uri": str(tmp_path)})
    assert src.schema.names == ["id", "x", "extra"] and src.columns == ["id", "x", "extra"]
    df = src.frame.compute(scheduler="sync")
    assert df["extra"].isna().tolist() == [True, True, False] and df["extra"].iloc[2] == "new"
    assert str(df["extra"].dtype) == "string"
    assert all(p.dtypes.equals(src.frame._meta.dtypes) for p in parts_of(src))


def test_integer_widths_and_int_float_widen(tmp_path):
    pq.write_table(pa.table({"n": pa.array([1, 2], pa.int32()), "v": [1, 2]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"n": pa.array([2**40], pa.int64()), "v": [0.5]}), tmp_path / "b.parquet")
    src = open_source({"uri": str(tmp_path)})
    assert src.schema.field("n").type == pa.int64() and src.schema.field("v").type == pa.float64()
    df = src.frame.compute(scheduler="sync")
    assert df["n"].tolist() == [1, 2, 2**40] and df["v"].tolist() == [1.0, 2.0, 0.5]
    assert df["n"].dtype == "int64" and df["v"].dtype == "float64"


def test_null_and_dictionary_columns_take_the_other_files_type():
    schemas = [
        ("a", pa.schema([("x", pa.null()), ("c", pa.dictionary(pa.int8(), pa.string()))])),
        ("b", pa.schema([("x", pa.int64()), ("c", pa.string()), ("d", pa.date32())])),
        ("c", pa.schema([("d", pa.timestamp("ms"))])),
    ]
    schema, conflicts = unify(schemas)
    assert conflicts == []
    assert [str(f.type) for f in schema] == ["int64", "string", "timestamp[ms]"]


def test_a_type_conflict_names_the_column_both_types_and_the_file_that_disagrees(tmp_path):
    pq.write_table(pa.table({"x": [1, 2], "y": [1, 1]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"x": ["one"], "y": [1]}), tmp_path / "b.parquet")
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    with pytest.raises(
        DataError, match=rf"(?s)source: .*column 'x' is int64 in '{a}' but string in '{b}'.*Hint: .*schema"
    ):
        open_source({"uri": str(tmp_path)})
    # The file named is the one the others disagree with, wherever it is in the listing.
    pq.write_table(pa.table({"x": ["one"], "y": [1]}), a)
    pq.write_table(pa.table({"x": [1], "y": [1]}), b)
    pq.write_table(pa.table({"x": [2], "y": [1]}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match=rf"column 'x' is int64 in '{b}' but string in '{a}'"):
        open_source({"uri": str(tmp_path)})
    # A conflict in a column that is not read is no error.
    assert open_source({"uri": str(tmp_path), "columns": ["y"]}).frame.compute(scheduler="sync")["y"].sum() == 3


def test_with_a_bad_file_log_the_file_that_disagrees_is_skipped_and_recorded(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), data / "a.parquet")
    pq.write_table(pa.table({"x": ["3"]}), data / "b.parquet")  # would cast to int64: must not be read
    log = BadFileLog(str(tmp_path / "log"))
    src = open_source({"uri": str(data)}, bad_file_log=log)
    assert [len(p) for p in parts_of(src)] == [2, 0]
    [record] = log.records()
    assert record["file"] == str(data / "b.parquet")
    assert record["error"] == f"column 'x' is string in this file but int64 in '{data / 'a.parquet'}'"


def test_a_footer_larger_than_the_first_read_is_read_whole(tmp_path):
    wide = pa.table({f"column_{i:04d}": [i] for i in range(1500)})
    pq.write_table(wide, tmp_path / "a.parquet")
    pq.write_table(pa.table({"column_0000": [7], "more": [1.5]}), tmp_path / "b.parquet")
    assert pq.read_metadata(tmp_path / "a.parquet").serialized_size > 64 * 1024
    src = open_source({"uri": str(tmp_path), "columns": ["column_0000", "column_1499", "more"]})
    df = src.frame.compute(scheduler="sync")
    assert df["column_0000"].tolist() == [0, 7] and df["column_1499"].tolist()[0] == 1499 and len(src.schema) == 1501


def test_an_unreadable_later_file_fails_when_opened_naming_it(tmp_path):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"PAR1" + b"\0" * 40 + b"PAR1")
    with pytest.raises(DataError, match=r"(?s)source: cannot read file '.*b\.parquet': .*Hint: .*bad_files: skip"):
        open_source({"uri": str(tmp_path)})


def test_csv_floats_in_a_later_file_widen_an_int_column(tmp_path):
    (tmp_path / "a.csv").write_text("k,x,when\n1,1,2024-01-01\n2,2,2024-01-02\n")
    (tmp_path / "b.csv").write_text("k,x,when,note\n3,1.5,2024-01-03 10:30:00,late\n4,,2024-01-04 00:00:00,\n")
    src = open_source({"uri": str(tmp_path), "format": "csv"})
    assert src.schema.field("x").type == pa.float64() and pa.types.is_timestamp(src.schema.field("when").type)
    df = src.frame.compute(scheduler="sync")
    assert df["k"].tolist() == [1, 2, 3, 4] and df["x"].tolist()[:3] == [1.0, 2.0, 1.5] and pd.isna(df["x"].iloc[3])
    assert df["when"].tolist() == [
        pd.Timestamp(t) for t in ["2024-01-01", "2024-01-02", "2024-01-03 10:30", "2024-01-04"]
    ]
    assert df["note"].isna().tolist() == [True, True, False, False] and df["note"].iloc[2] == "late"


def test_csv_string_in_a_later_file_is_a_conflict_naming_it(tmp_path):
    (tmp_path / "a.csv").write_text("x\n1\n2\n")
    (tmp_path / "b.csv").write_text("x\nabc\n")
    with pytest.raises(DataError, match=r"column 'x' is int64 in '.*a\.csv' but string in '.*b\.csv'"):
        open_source({"uri": str(tmp_path), "format": "csv"})


def test_json_lines_unify_across_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"x": 1, "s": "p"}\n{"x": 2, "s": "q"}\n')
    (tmp_path / "b.jsonl").write_text('{"x": 2.5, "s": "r", "y": true}\n')
    src = open_source({"uri": str(tmp_path), "format": "json"})
    df = src.frame.compute(scheduler="sync")
    assert df["x"].tolist() == [1.0, 2.0, 2.5] and df["y"].isna().tolist() == [True, True, False]


# -- schema: ------------------------------------------------------------------------------------
def test_explicit_schema_overrides_what_files_say(tmp_path):
    (tmp_path / "day=1").mkdir()
    (tmp_path / "day=2").mkdir()
    pq.write_table(pa.table({"x": [1, 2], "v": [1, 2]}), tmp_path / "day=1" / "a.parquet")
    pq.write_table(pa.table({"x": ["three"], "v": [3]}), tmp_path / "day=2" / "b.parquet")
    spec = {"uri": str(tmp_path), "schema": {"x": "string", "v": "float32", "day": "string"}}
    src = open_source(spec)
    assert [str(src.schema.field(c).type) for c in ("x", "v", "day")] == ["string", "float", "string"]
    df = src.frame.compute(scheduler="sync")
    assert df["x"].tolist() == ["1", "2", "three"] and df["v"].dtype == "float32"
    assert df["day"].tolist() == ["1", "1", "2"]  # a partition column typed as text
    assert open_source({**spec, "filters": [["day", "==", "2"]]}).files == [str(tmp_path / "day=2" / "b.parquet")]


def test_explicit_schema_types_csv_columns_others_inferred(tmp_path):
    (tmp_path / "a.csv").write_text("id,t,zip\n1,2024-01-01T00:00:00Z,01234\n")
    src = open_source({"uri": str(tmp_path / "a.csv"), "schema": {"t": "timestamp[us, tz=UTC]", "zip": "string"}})
    assert str(src.schema.field("t").type) == "timestamp[us, tz=UTC]" and src.schema.field("id").type == pa.int64()
    df = src.frame.compute(scheduler="sync")
    assert df["zip"].tolist() == ["01234"] and str(df["t"].dt.tz) == "UTC"


def test_explicit_schema_errors_name_the_key(tmp_path):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "a.parquet")
    with pytest.raises(SpecError, match=r"source.schema.x: unknown column type 'flaot64'.*did you mean 'float64'"):
        open_source({"uri": str(tmp_path), "schema": {"x": "flaot64"}})
    with pytest.raises(SpecError, match=r"source.schema.x: unknown column type 'int'.*did you mean 'int64'"):
        source_spec({"uri": str(tmp_path), "schema": {"x": "int"}})
    with pytest.raises(SpecError, match=r"source.schema.x: unknown time zone 'Mars/Olympus'"):
        source_spec({"uri": str(tmp_path), "schema": {"x": "timestamp[ns, tz=Mars/Olympus]"}})
    with pytest.raises(SpecError, match=r"source.schema.x: .*precision"):
        open_source({"uri": str(tmp_path), "schema": {"x": "decimal128(99, 2)"}})
    with pytest.raises(ColumnError, match=r"source.schema: column\(s\) \['y'\] not found in .*; available: \['x'\]"):
        open_source({"uri": str(tmp_path), "schema": {"y": "int64"}})


def test_schema_and_partition_size_are_saved_under_their_keys():
    spec = source_spec({"uri": "d.csv", "schema": {"x": "int64"}, "partition_size": "64MiB"})
    dumped = spec.model_dump(mode="json")
    assert dumped["schema"] == {"x": "int64"} and dumped["partition_size"] == "64MiB" and spec.partition_bytes == 2**26
    assert list(dumped)[-1] == "storage_options"
    assert source_spec(dumped) == spec
    assert source_spec({"uri": "d.csv"}).partition_bytes == 256 * 2**20
    assert source_spec({"uri": "d.csv", "partition_size": None}).partition_bytes is None
    with pytest.raises(SpecError, match=r"source.partition_size: a size is a number of bytes or a string such as"):
        source_spec({"uri": "d.csv", "partition_size": "big"})


# -- splitting ----------------------------------------------------------------------------------
@pytest.fixture
def row_groups(tmp_path):
    """A Parquet file of 10 row groups of 100 rows, in a Hive folder."""
    folder = tmp_path / "t" / "day=1"
    folder.mkdir(parents=True)
    table = pa.table(
        {"i": list(range(1000)), "s": [f"v{i:04d}" for i in range(1000)], "f": [i / 3 for i in range(1000)]}
    )
    pq.write_table(table, folder / "part.parquet", row_group_size=100)
    meta = pq.read_metadata(folder / "part.parquet")
    group = sum(meta.row_group(0).column(j).total_compressed_size for j in range(meta.num_columns))
    return tmp_path / "t", folder / "part.parquet", group


def test_a_parquet_file_is_split_by_row_groups_and_every_row_is_read_once(row_groups):
    root, path, group = row_groups
    src = open_source({"uri": str(root), "partition_size": int(group * 3.5)})
    assert src.files == [f"{path}#rg={a}-{b}" for a, b in [(0, 2), (3, 5), (6, 8), (9, 9)]]
    assert src.frame.npartitions == 4 and [d.id for d in src.datums] == [str(path)]
    parts = parts_of(src)
    assert [len(p) for p in parts] == [300, 300, 300, 100]
    df = pd.concat(parts, ignore_index=True)
    assert df["i"].tolist() == list(range(1000)) and set(df["day"]) == {1}
    pd.testing.assert_frame_equal(df.drop(columns="day"), pq.read_table(path).to_pandas(), check_dtype=False)
    assert open_source({"uri": str(root)}).files == [str(path)]  # the default 256MiB: one partition


def test_split_parquet_keeps_filters_and_pushes_projections(row_groups, monkeypatch):
    import dpipe.io.sources as sources

    root, path, group = row_groups
    seen = []
    original = sources.read_fragment

    def spy(task, columns=None):
        seen.append((task.label, columns))
        return original(task, columns=columns)

    monkeypatch.setattr(sources, "read_fragment", spy)
    src = open_source({"uri": str(root), "partition_size": group, "filters": [["i", ">=", 950], ["day", "==", 1]]})
    assert src.frame.npartitions == 10
    df = src.frame[["s"]].compute(scheduler="sync")
    assert df["s"].tolist() == [f"v{i:04d}" for i in range(950, 1000)]
    assert [c for _, c in seen] == [["s"]] * 10 and len({label for label, _ in seen}) == 10


def test_other_partition_sizes_give_other_dask_keys(row_groups):
    root, _, group = row_groups
    a = open_source({"uri": str(root), "partition_size": group}).frame
    b = open_source({"uri": str(root), "partition_size": group * 2}).frame
    assert tokenize(a) != tokenize(b) and tokenize(a) == tokenize(
        open_source({"uri": str(root), "partition_size": group}).frame
    )


def csv_text(n: int) -> str:
    rows = [f"{i},name {i},{i * 0.25},{'x' * (i % 7)}" for i in range(n)]
    return "id,name,score,pad\n" + "\n".join(rows)  # no line break after the last row


@pytest.mark.parametrize("size", [3, 7, 23, 64, 100, 1000, 10**6])
def test_a_csv_file_is_split_into_blocks_of_whole_lines_read_once(tmp_path, size):
    path = tmp_path / "big.csv"
    path.write_text(csv_text(60))
    src = open_source({"uri": str(path), "partition_size": size})
    total = path.stat().st_size
    blocks = list(range(0, total, size)) if size < total else [0]
    assert src.frame.npartitions == len(blocks) == len(src.files) and len(src.datums) == 1
    if size < total:
        assert src.files == [f"{path}#bytes={b}-{min(b + size, total)}" for b in blocks]
    else:
        assert src.files == [str(path)]
    df = pd.concat(parts_of(src), ignore_index=True)
    expected = pd.read_csv(path, dtype={"pad": "string"}, keep_default_na=False)
    assert df["id"].tolist() == list(range(60))  # every row once, in file order
    assert df["name"].tolist() == expected["name"].tolist() and df["score"].tolist() == expected["score"].tolist()
    assert df["pad"].fillna("").tolist() == expected["pad"].tolist()


def test_split_csv_blocks_keep_hive_columns_filters_projection_and_crlf(tmp_path, monkeypatch):
    import dpipe.io.sources as sources

    folder = tmp_path / "d" / "day=3"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_bytes(csv_text(100).replace("\n", "\r\n").encode())
    seen = []
    original = sources.read_fragment

    def spy(task, columns=None):
        seen.append(columns)
        return original(task, columns=columns)

    monkeypatch.setattr(sources, "read_fragment", spy)
    src = open_source(
        {"uri": str(tmp_path / "d"), "format": "csv", "partition_size": 300, "filters": [["id", ">", 90]]}
    )
    assert src.frame.npartitions > 5
    df = src.frame[["id", "day"]].compute(scheduler="sync")
    assert df["id"].tolist() == list(range(91, 100)) and set(df["day"]) == {3}
    assert seen == [["id", "day"]] * src.frame.npartitions


def test_lines_longer_than_a_block_and_the_lookahead_are_read_once(tmp_path):
    long = "y" * 200_000  # past the 64 KiB read beyond a block's end
    path = tmp_path / "long.csv"
    path.write_text("id,text\n" + "".join(f"{i},{long if i % 3 == 1 else 'short'}\n" for i in range(9)))
    src = open_source({"uri": str(path), "partition_size": 50_000})
    assert src.frame.npartitions == -(-path.stat().st_size // 50_000)
    df = pd.concat(parts_of(src), ignore_index=True)
    assert df["id"].tolist() == list(range(9)) and df["text"].str.len().tolist() == [5, 200_000, 5] * 3


def test_a_csv_with_floats_after_its_first_block_reads_with_types_of_all_files(tmp_path):
    (tmp_path / "a.csv").write_text("x\n" + "\n".join(str(i) for i in range(50)) + "\n")
    (tmp_path / "b.csv").write_text("x\n0.5\n" + "\n".join(str(i) for i in range(50)) + "\n")
    src = open_source({"uri": str(tmp_path), "format": "csv", "partition_size": 40})
    df = pd.concat(parts_of(src), ignore_index=True)
    assert df["x"].dtype == "float64" and len(df) == 101 and df["x"].iloc[50] == 0.5


@pytest.mark.parametrize("size", [5, 50, 333, 10**6])
def test_json_lines_are_split_into_blocks_read_once(tmp_path, size):
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "tag": "t" * (i % 5), "v": i / 2}) for i in range(40)) + "\n")
    src = open_source({"uri": str(path), "partition_size": size})
    assert src.frame.npartitions == -(-path.stat().st_size // min(size, path.stat().st_size))
    df = pd.concat(parts_of(src), ignore_index=True)
    assert df["id"].tolist() == list(range(40)) and df["v"].tolist() == [i / 2 for i in range(40)]


def test_compressed_text_files_are_one_partition_each(tmp_path):
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(csv_text(50).encode()))
    src = open_source({"uri": str(tmp_path / "a.csv.gz"), "partition_size": 10})
    assert src.files == [str(tmp_path / "a.csv.gz")]
    assert src.frame.compute(scheduler="sync")["id"].tolist() == list(range(50))


def test_split_files_over_s3(s3, tmp_path):
    fs, bucket, options = s3["fs"], s3["bucket"], s3["storage_options"]
    pq.write_table(pa.table({"i": list(range(300))}), tmp_path / "a.parquet", row_group_size=100)
    pq.write_table(pa.table({"i": [300], "extra": ["x"]}), tmp_path / "b.parquet")
    (tmp_path / "c.csv").write_text(csv_text(80))
    fs.put(str(tmp_path / "a.parquet"), f"{bucket}/p/a.parquet")
    fs.put(str(tmp_path / "b.parquet"), f"{bucket}/p/b.parquet")
    fs.put(str(tmp_path / "c.csv"), f"{bucket}/c/c.csv")
    fs.invalidate_cache()
    parquet = open_source({"uri": f"s3://{bucket}/p", "storage_options": options, "partition_size": 100})
    assert parquet.files[:3] == [f"s3://{bucket}/p/a.parquet#rg={i}-{i}" for i in range(3)]
    df = pd.concat(parts_of(parquet), ignore_index=True)
    assert df["i"].tolist() == list(range(301)) and df["extra"].isna().sum() == 300
    csv = open_source({"uri": f"s3://{bucket}/c", "format": "csv", "storage_options": options, "partition_size": 200})
    assert csv.frame.npartitions > 3
    assert pd.concat(parts_of(csv), ignore_index=True)["id"].tolist() == list(range(80))
