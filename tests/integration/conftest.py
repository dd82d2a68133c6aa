"""Fixtures of the incremental-run tests: demo data whose later dates arrive during a test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def months(demo_root, tmp_path) -> tuple[Path, list[Path]]:
    """The demo events (4 dates of 5000 rows) without the last two (the tests make them 'arrive')."""
    events = tmp_path / "events"
    shutil.copytree(demo_root / "events", events)
    later = sorted(events.glob("date=*"))[-2:]
    aside = tmp_path / "later"
    aside.mkdir()
    for folder in later:
        shutil.move(str(folder), aside / folder.name)
    return events, sorted(aside.iterdir())


def arrive(folder: Path, events: Path) -> None:
    """A date that was held back lands in the source folder."""
    shutil.copytree(folder, events / folder.name)
