import datetime as dt
import decimal
import json
import os

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from dpipe.errors import ColumnError, DataError, SpecError, StorageError
from dpipe.io import Datum, open_source, read
from dpipe.spec import job_from_dict


class CountingFileSystem(LocalFileSystem):
    """The local disk under the protocol ``counting://``, recording every file opened for reading."""

    protocol = ("counting",)
    opened: list[str] = []

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix("counting://"))

    def _open(self, path, mode="rb", **kwargs):
        if "r" in mode:
            type(self).opened.append(path)
        return super()._open(path, mode=mode, **kwargs)


fsspec.register_implementation("counting", CountingFileSystem, clobber=True)


def test_reads_hive_partitioned_parquet_with_projection(demo_root):
    src = read(str(demo_root / "events"), columns=["event_id", "age", "date"])
    assert len(src.files) == 4 and src.frame.npartitions == 4
    assert src.partition_columns == ["date"]
    df = src.frame.compute(scheduler="sync")
    assert list(df.columns) == ["event_id", "age", "date"]
    assert len(df) == 20_000
    assert str(df["date"].dtype) == "string"
    expected = pq.read_table(demo_root / "events" / "date=2024-01-02").column("event_id").to_pylist()
    assert sorted(df.loc[df["date"] == "2024-01-02", "event_id"]) == sorted(expected)


def test_partition_filter_prunes_files_before_reading(demo_root):
    uri = f"counting://{demo_root / 'events'}"

    def files_read_by_compute(**kwargs):
        src = read(uri, **kwargs)  # discovery reads the kept files' footers for the schema: not counted
        CountingFileSystem.opened.clear()
        df = src.frame.compute(scheduler="sync")
        return src, df, {p for p in CountingFileSystem.opened if p.endswith(".parquet")}

    everything, _, read_all = files_read_by_compute()
    pruned, df, read_pruned = files_read_by_compute(filters=[["date", ">=", "2024-01-03"]])

    assert len(everything.files) == len(read_all) == 4
    assert len(pruned.files) == len(read_pruned) == 2
    assert all("date=2024-01-03" in p or "date=2024-01-04" in p for p in read_pruned)
    assert set(df["date"]) == {"2024-01-03", "2024-01-04"}


def test_partition_filters_prune_before_any_footer_is_read(demo_root):
    CountingFileSystem.opened.clear()
    src = read(f"counting://{demo_root / 'events'}", filters=[["date", ">=", "2024-01-03"], ["age", ">", 1]])
    assert len(src.files) == 2
    # One footer read per kept file, none of the others.
    assert sorted(CountingFileSystem.opened) == sorted(f.removeprefix("counting://") for f in src.files)
    assert all("date=2024-01-03" in p or "date=2024-01-04" in p for p in CountingFileSystem.opened)


def test_row_filters_and_or_groups(demo_root):
    uri = str(demo_root / "events")
    df = read(uri, filters=[["age", ">", 60], ["device", "in", ["tablet"]]]).frame.compute(scheduler="sync")
    assert len(df) > 0 and (df["age"] > 60).all() and (df["device"] == "tablet").all()
    either = read(uri, filters=[[["age", ">", 80]], [["plan", "==", "team"]]]).frame.compute(scheduler="sync")
    assert ((either["age"] > 80) | (either["plan"] == "team")).all()
    full = pd.read_parquet(demo_root / "events")
    assert len(either) == int(((full["age"] > 80) | (full["plan"] == "team")).sum())


def test_yaml_dates_compare_with_string_partition_keys(demo_root):
    import datetime as dt

    src = read(str(demo_root / "events"), filters=[["date", "<", dt.date(2024, 1, 2)]])
    assert len(src.files) == 1


def test_glob_uri(demo_root):
    src = read(str(demo_root / "events" / "date=2024-01-0[12]" / "*.parquet"))
    assert len(src.files) == 2
    assert set(src.frame.compute(scheduler="sync")["date"]) == {"2024-01-01", "2024-01-02"}


def test_csv_and_json_lines(tmp_path):
    for day in (1, 2):
        d = tmp_path / "csv" / f"day={day}"
        d.mkdir(parents=True)
        pd.DataFrame({"x": [day, day * 10], "s": ["a", "b"]}).to_csv(d / "part.csv", index=False)
        j = tmp_path / "json" / f"day={day}"
        j.mkdir(parents=True)
        (j / "part.jsonl").write_text("\n".join(json.dumps({"x": day * i, "s": "q"}) for i in range(3)))
    csv = read(str(tmp_path / "csv"), format="csv", filters=[["day", "==", 2]]).frame.compute(scheduler="sync")
    assert csv.to_dict("list") == {"x": [2, 20], "s": ["a", "b"], "day": [2, 2]}
    js = read(str(tmp_path / "json"), format="json").frame.compute(scheduler="sync")
    assert sorted(js["x"]) == [0, 0, 1, 2, 2, 4]


def test_missing_path_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match=r"source.uri: '.*nope' does not exist") as info:
        read(str(tmp_path / "nope"))
    assert "Hint: check the path" in str(info.value)


def test_unknown_columns_name_what_exists(demo_root):
    with pytest.raises(ColumnError, match=r"source.columns: column\(s\) \['agee'\] not found.*available: \['event_id'"):
        read(str(demo_root / "events"), columns=["agee"])
    with pytest.raises(ColumnError, match=r"source.filters: column 'dat' not found"):
        read(str(demo_root / "events"), filters=[["dat", "==", "x"]])


def test_filters_that_match_no_partition(demo_root):
    with pytest.raises(DataError, match="no file under .* matches `source.filters`"):
        read(str(demo_root / "events"), filters=[["date", ">", "2099-01-01"]])


def test_bad_filter_value_type(demo_root):
    with pytest.raises(
        SpecError, match=r"source.filters: the filter values do not match the column types \{'age': 'double'\}"
    ):
        read(str(demo_root / "events"), filters=[["age", ">", "old"]])


def test_corrupt_file_is_named(tmp_path):
    root = tmp_path / "t"
    for day in (1, 2):
        (root / f"day={day}").mkdir(parents=True)
        pq.write_table(pa.table({"x": [1, 2]}), root / f"day={day}" / "part.parquet")
    bad = root / "day=2" / "part.parquet"
    bad.write_bytes(b"PAR1" + b"\x00garbage" * 10)
    with pytest.raises(DataError, match=r"cannot read .*day=2/part.parquet"):
        read(str(root)).frame.compute(scheduler="sync")


def test_boolean_column_with_missing_values_stays_boolean_in_every_file(tmp_path):
    # numpy has no missing bool: pandas would give object in the file with the gap, and Dask then
    # turns that partition's values into the strings 'True'/'False'.
    pq.write_table(pa.table({"flag": [True, False], "y": [1, 0]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"flag": [True, None], "y": [1, 0]}), tmp_path / "b.parquet")
    (tmp_path / "c.csv").write_text("flag,y\ntrue,1\n,0\n")
    for src in (read(str(tmp_path / "*.parquet")), read(str(tmp_path / "c.csv"), format="csv")):
        parts = [p.compute(scheduler="sync") for p in src.frame.to_delayed()]
        assert all(p["flag"].dtype == src.frame._meta["flag"].dtype for p in parts)
        values = pd.concat(parts)["flag"]
        assert values.isna().sum() == 1 and set(values.dropna()) <= {True, False}
        assert values.astype("float32").isna().sum() == 1


def test_unreadable_first_file_is_a_data_error_naming_it(tmp_path):
    # Discovery reads the first file's schema on the client, before any Dask task.
    (tmp_path / "a.parquet").write_bytes(b"")
    (tmp_path / "b.csv").write_text("x,y\n1,2\n3,4,5\n")
    with pytest.raises(DataError, match=r"(?s)source: cannot read .*a\.parquet.*Hint:"):
        read(str(tmp_path / "a.parquet"))
    with pytest.raises(DataError, match=r"(?s)source: cannot read .*b\.csv.*Hint:"):
        read(str(tmp_path / "b.csv"), format="csv")


def test_incompatible_column_type_in_a_later_file_is_named(tmp_path):
    # Every footer is read when the source is opened: the file is named before any task runs.
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"x": pa.array([[1], [2]])}), tmp_path / "b.parquet")  # no cast list -> int
    with pytest.raises(
        DataError,
        match=r"cannot read file '.*b\.parquet': column 'x' is int64 in '.*a\.parquet' but list<element: int64>",
    ):
        read(str(tmp_path))


def test_decimal_columns_are_read_as_numbers(tmp_path):
    # Warehouse exports store money as decimal: pandas would give Decimal objects, which Dask
    # turns into text, so the column could be neither a feature nor scaled.
    amounts = pa.array([decimal.Decimal("1.25"), None, decimal.Decimal("-3.50")], pa.decimal128(12, 2))
    pq.write_table(pa.table({"amount": amounts}), tmp_path / "a.parquet")
    src = read(str(tmp_path))
    assert src.frame._meta["amount"].dtype == "float64"
    out = src.frame.compute(scheduler="sync")
    assert out["amount"].dtype == "float64"
    assert out["amount"].tolist()[::2] == [1.25, -3.5] and out["amount"].isna().tolist() == [False, True, False]


def test_dictionary_columns_are_read_as_their_values(tmp_path):
    # pandas writes a category column as a Parquet dictionary with each file's own categories; as
    # pandas categories they would reach XGBoost with codes that mean other values in every file.
    pd.DataFrame({"c": pd.Categorical(["a", "b"]), "n": pd.Categorical([1, 2])}).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame({"c": pd.Categorical(["c", "a"]), "n": pd.Categorical([3, 1])}).to_parquet(tmp_path / "b.parquet")
    src = read(str(tmp_path))
    meta = src.frame._meta
    assert str(meta["c"].dtype) == "string" and meta["n"].dtype == "int64"
    parts = [p.compute(scheduler="sync") for p in src.frame.to_delayed()]
    assert all(p.dtypes.equals(meta.dtypes) for p in parts)
    assert pd.concat(parts)["c"].tolist() == ["a", "b", "c", "a"]


def test_a_column_projection_is_pushed_into_the_read(demo_root, monkeypatch):
    import dpipe.io.sources as sources

    seen = []
    original = sources.read_fragment

    def spy(task, columns=None):
        seen.append(columns)
        return original(task, columns=columns)

    monkeypatch.setattr(sources, "read_fragment", spy)
    src = read(str(demo_root / "events"), columns=["event_id", "age", "country"])
    df = src.frame[["age"]].compute(scheduler="sync")
    assert list(df.columns) == ["age"] and len(df) == 20_000
    assert seen == [["age"]] * 4  # each file read for that column only
    seen.clear()
    full = src.frame.compute(scheduler="sync")
    assert list(full.columns) == ["event_id", "age", "country"] and df["age"].equals(full["age"])


def test_other_storage_options_give_other_dask_keys(demo_root):
    from dask.base import tokenize

    a = read(str(demo_root / "events")).frame
    b = read(str(demo_root / "events"), storage_options={"auto_mkdir": True}).frame
    assert tokenize(a) != tokenize(b)
    assert tokenize(a) == tokenize(read(str(demo_root / "events")).frame)


def test_lineage_and_datums_of_local_files_come_from_the_listing(demo_root):
    src = read(str(demo_root / "events"), filters=[["date", ">=", "2024-01-03"]])
    files = (demo_root / "events").rglob("*.parquet")
    paths = sorted(str(p) for p in files if p.parent.name >= "date=2024-01-03")
    assert len(paths) == 2
    assert src.files == [d.id for d in src.datums] == paths  # what was selected, in partition order
    for datum, path in zip(src.datums, paths):
        stat = os.stat(path)
        mtime = dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC).isoformat()
        assert datum == Datum(id=path, size=stat.st_size, version=mtime)
    assert src.nbytes == sum(os.path.getsize(p) for p in paths)
    lineage = src.lineage()
    assert lineage["kind"] == "files" and lineage["versioned_by"] == "mtime"
    assert lineage["datums"] == [d.to_dict() for d in src.datums]
    json.dumps(lineage)  # goes into manifest.json as it is


def test_a_rewritten_file_gets_another_version(tmp_path):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "a.parquet")
    before = read(str(tmp_path)).datums
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "a.parquet")
    os.utime(tmp_path / "a.parquet", (1_900_000_000, 1_900_000_000))
    after = read(str(tmp_path)).datums
    assert [d.id for d in before] == [d.id for d in after] and before[0].version != after[0].version


def test_folder_discovery_skips_hidden_and_underscore_names(tmp_path):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "a.parquet")
    (tmp_path / "_SUCCESS").write_bytes(b"")
    (tmp_path / ".b.parquet.crc").write_bytes(b"junk")
    (tmp_path / "_temporary").mkdir()
    (tmp_path / "_temporary" / "c.parquet").write_bytes(b"junk")
    src = read(str(tmp_path))
    assert src.files == [str(tmp_path / "a.parquet")]


def test_an_empty_folder_is_a_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"(?s)source: no parquet data found under .*Hint: check `source.uri`"):
        read(str(tmp_path / "empty"))


def test_open_source_takes_a_spec_or_a_dict_and_a_column_override(demo_root):
    job = job_from_dict(
        {"source": {"uri": str(demo_root / "events")}, "label": {"column": "y"}, "output": {"uri": "o"}}
    )
    src = open_source(job.source, columns=["age"])
    assert src.columns == ["age"] and src.format == "parquet" and job.source.columns is None
    again = open_source({"uri": str(demo_root / "events"), "columns": ["age"]})
    assert again.files == src.files
    with pytest.raises(SpecError, match=r"source.filters: filter on 'age': operator '~'"):
        open_source({"uri": str(demo_root / "events"), "filters": [["age", "~", 1]]})


def test_a_missing_path_is_named_once_in_the_message(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(StorageError) as info:
        read(missing)
    assert str(info.value).splitlines()[0] == f"source.uri: {missing!r} does not exist ({missing})"
