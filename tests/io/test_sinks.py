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
