import json

import pytest

from dpipe.errors import StorageError
from dpipe.io import StagedOutput


def _files(fs, path):
    return sorted(p[len(path) :] for p in fs.find(path)) if fs.exists(path) else []


@pytest.fixture(params=["local", "s3"])
def target(request, tmp_path):
    if request.param == "local":
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), str(tmp_path), None
    s3 = request.getfixturevalue("s3")
    return s3["fs"], f"{s3['bucket']}/out", s3["storage_options"]


def test_commit_replaces_the_destination_whole(target):
    fs, root, options = target
    uri = root if options is None else f"s3://{root}"
    with StagedOutput(f"{uri}/bundle", options, marker="manifest.json") as out:
        out.write_bytes("model.ubj", b"v1")
        out.write_bytes("extra/old.txt", b"old")
        out.write_json("manifest.json", {"v": 1})
        out.commit()
    with StagedOutput(f"{uri}/bundle", options, marker="manifest.json") as out:
        out.write_bytes("model.ubj", b"v2")
        out.write_json("manifest.json", {"v": 2})
        out.commit()
    fs.invalidate_cache()
    assert _files(fs, f"{root}/bundle") == ["/manifest.json", "/model.ubj"]
    assert fs.cat_file(f"{root}/bundle/model.ubj") == b"v2"
    assert [p for p in fs.ls(root) if ".dpipe-" in p] == []


def test_failure_after_writing_leaves_destination_and_no_staging(target):
    fs, root, options = target
    uri = root if options is None else f"s3://{root}"
    with StagedOutput(f"{uri}/bundle", options) as out:
        out.write_bytes("model.ubj", b"v1")
        out.commit()
    with pytest.raises(RuntimeError, match="boom"), StagedOutput(f"{uri}/bundle", options) as out:
        out.write_bytes("model.ubj", b"half")
        out.write_bytes("part-00000.parquet", b"half")
        assert _files(fs, out.staging)  # something really was staged
        raise RuntimeError("boom")
    fs.invalidate_cache()
    assert fs.cat_file(f"{root}/bundle/model.ubj") == b"v1"
    assert _files(fs, f"{root}/bundle") == ["/_SUCCESS", "/model.ubj"]
    assert [p for p in fs.ls(root) if ".dpipe-" in p] == []


def test_existing_destination_without_overwrite(tmp_path):
    (tmp_path / "bundle").mkdir()
    with pytest.raises(StorageError, match=r"(?s)output.uri: '.*bundle' already exists.*Hint: choose another location"):
        StagedOutput(str(tmp_path / "bundle"), overwrite=False)


# -- the parquet sink: a staged write and one commit ------------------------------------------
def _frame(n: int):
    import dask.dataframe as dd
    import pandas as pd

    return dd.from_pandas(pd.DataFrame({"id": range(n), "p": [i / n for i in range(n)]}), npartitions=2)


def test_parquet_sink_commits_parts_then_the_marker(target, monkeypatch):
    from dpipe.io import ParquetFolderSink, Written, read

    fs, root, options = target
    uri = root if options is None else f"s3://{root}"
    sink = ParquetFolderSink(f"{uri}/scores", options)
    copied: list[str] = []
    copy = sink.out.fs.copy

    def recording(path1, path2, *args, **kwargs):
        copied.append(path2.rsplit("/", 1)[-1])
        return copy(path1, path2, *args, **kwargs)

    monkeypatch.setattr(sink.out.fs, "copy", recording)
    with sink:
        sink.write(_frame(10), compute=lambda task: task.compute(scheduler="sync"))
        assert not fs.exists(f"{root}/scores")  # nothing visible before the commit
        written = sink.commit()
    fs.invalidate_cache()
    assert isinstance(written, Written) and written.uri == f"{uri}/scores" and written.rows == 10
    assert _files(fs, f"{root}/scores") == ["/_SUCCESS", "/part-00000.parquet", "/part-00001.parquet"]
    assert [d.id.rsplit("/", 1)[-1] for d in written.datums] == ["part-00000.parquet", "part-00001.parquet"]
    assert all(d.size and d.version for d in written.datums)
    if options is not None:  # an object store has no rename: the marker is copied last
        assert copied == ["part-00000.parquet", "part-00001.parquet", "_SUCCESS"]
    back = read(f"{uri}/scores", storage_options=options).frame.compute(scheduler="sync")
    assert sorted(back["id"]) == list(range(10))
    assert [p for p in fs.ls(root) if ".dpipe-" in p] == []


def test_parquet_sink_abort_keeps_the_previous_output(target):
    from dpipe.io import ParquetFolderSink

    fs, root, options = target
    uri = root if options is None else f"s3://{root}"
    with ParquetFolderSink(f"{uri}/scores", options) as sink:
        sink.write(_frame(4))
        sink.commit()
    with pytest.raises(RuntimeError, match="boom"), ParquetFolderSink(f"{uri}/scores", options) as sink:
        sink.write(_frame(6))
        raise RuntimeError("boom")
    fs.invalidate_cache()
    assert _files(fs, f"{root}/scores") == ["/_SUCCESS", "/part-00000.parquet", "/part-00001.parquet"]
    assert [p for p in fs.ls(root) if ".dpipe-" in p] == []
    sink = ParquetFolderSink(f"{uri}/other", options)
    sink.write(_frame(2))
    sink.abort()
    fs.invalidate_cache()
    assert not fs.exists(f"{root}/other") and [p for p in fs.ls(root) if ".dpipe-" in p] == []


def test_parquet_sink_without_overwrite_fails_before_any_work(tmp_path):
    from dpipe.io import open_sink

    (tmp_path / "scores").mkdir()
    with pytest.raises(StorageError, match=r"(?s)output: '.*scores' already exists.*Hint: choose another location"):
        open_sink({"uri": str(tmp_path / "scores"), "overwrite": False})


def test_two_commits_at_once_leave_one_whole_output(target):
    """Each writer stages its own files; whatever the interleaving, the destination ends up as
    exactly one writer's files, and no lock or staging folder is left."""
    import threading

    fs, root, options = target
    uri = root if options is None else f"s3://{root}"
    names = {"a": ["a1.bin", "a2.bin", "a3.bin"], "b": ["b1.bin", "b2.bin"]}
    for attempt in range(4):
        outs = {}
        for who, files in names.items():
            out = StagedOutput(f"{uri}/bundle", options, marker="manifest.json")
            out.begin()
            for name in files:
                out.write_bytes(name, who.encode())
            out.write_json("manifest.json", {"who": who})
            outs[who] = out
        barrier = threading.Barrier(2)
        errors = []

        def commit(out, barrier=barrier, errors=errors):
            barrier.wait()
            try:
                out.commit()
            except StorageError as exc:  # waiting too long is the only allowed failure
                errors.append(exc)

        threads = [threading.Thread(target=commit, args=(o,)) for o in outs.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [], errors
        fs.invalidate_cache()
        found = _files(fs, f"{root}/bundle")
        who = json.loads(fs.cat_file(f"{root}/bundle/manifest.json"))["who"]
        assert found == sorted(["/manifest.json", *(f"/{n}" for n in names[who])]), (attempt, found)
        assert {fs.cat_file(f"{root}/bundle{n}") for n in found if n.endswith(".bin")} == {who.encode()}
        assert [p for p in fs.ls(root) if ".dpipe-" in p] == [], attempt


def test_a_held_commit_lock_is_waited_for_then_named(target, monkeypatch):
    from dpipe.io import sinks

    fs, root, options = target
    uri = root if options is None else f"s3://{root}"
    monkeypatch.setattr(sinks, "COMMIT_WAIT", 1.0)
    with StagedOutput(f"{uri}/bundle", options, marker="manifest.json") as out:
        out.write_json("manifest.json", {"v": 1})
        lock = f"{out.parent}/.bundle.dpipe-commit"
        with (
            sinks.commit_lock(out.fs, lock, "output.uri", uri),
            pytest.raises(StorageError, match=r"another run is committing to .*bundle"),
        ):
            out.commit()
        out.commit()  # the lock released: it goes through
    fs.invalidate_cache()
    assert _files(fs, f"{root}/bundle") == ["/manifest.json"]
