"""A full disk or a read-only destination: one clear error, and the previous output intact
(tests/faulty_fs.py makes the faults: the tests run as root, whom permissions do not stop)."""

from __future__ import annotations

from pathlib import Path

import pytest

import dpipe
from dpipe.errors import StorageError
from tests.conftest import job_dict
from tests.faulty_fs import register

register()

FAST_TRAIN = {"num_boost_round": 5, "early_stopping_rounds": 2}


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def previous(demo_root, client, tmp_path) -> dict[str, bytes]:
    spec = job_dict(demo_root, f"faulty://{tmp_path}/model", train=FAST_TRAIN)
    dpipe.run(dpipe.job_from_dict(spec), client=client, progress=False)
    return files(tmp_path / "model")


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"fault": "full", "quota": 2048}, "no space left on the storage of"),
        ({"fault": "read-only"}, "is read-only"),
    ],
    ids=["full-disk", "read-only"],
)
def test_a_failing_destination_is_named_and_the_previous_bundle_stays(
    fault, message, previous, demo_root, client, tmp_path
):
    assert "manifest.json" in previous
    spec = job_dict(
        demo_root,
        f"faulty://{tmp_path}/model",
        train={**FAST_TRAIN, "params": {"max_depth": 2}},
        output={"storage_options": fault},
    )
    with pytest.raises(StorageError, match=message) as info:
        dpipe.run(dpipe.job_from_dict(spec), client=client, progress=False)
    assert "Hint:" in str(info.value)
    assert files(tmp_path / "model") == previous
    assert [p.name for p in tmp_path.iterdir() if ".dpipe-" in p.name] == []


def test_predictions_to_a_full_disk_leave_nothing_half_written(previous, demo_root, client, tmp_path):
    out = f"faulty://{tmp_path}/scores"
    with pytest.raises(StorageError, match="no space left"):
        dpipe.predict(
            f"{tmp_path}/model",
            str(demo_root / "events"),
            {"format": "parquet", "uri": out, "storage_options": {"fault": "full", "quota": 2048}},
            client=client,
            progress=False,
        )
    assert not (tmp_path / "scores").exists()
    assert [p.name for p in tmp_path.iterdir() if ".dpipe-" in p.name] == []
