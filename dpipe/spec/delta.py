"""Delta Lake tables as a source (``format: delta``) and a sink, with the ``deltalake`` package.

A source reads one version of the table: the latest, ``version: N`` or the version current at
``as_of`` (time travel). ``filters`` prune data files through the Delta log (exactly on partition
columns, by the files' min/max statistics on others) and then filter rows. A sink commits the
files its workers wrote in one Delta transaction.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, model_validator

from dpipe.spec.connectors import BaseSinkSpec
from dpipe.spec.source import BaseSourceSpec, Filters


class DeltaSourceSpec(BaseSourceSpec):
    """A Delta table read at one version.

    ``version`` (a commit number) and ``as_of`` (a date-time; the version current then) are
    exclusive; without them the latest version is read. The version actually read is recorded in
    the run's lineage. ``filters`` are ``[column, op, value]`` triples as for files.
    """

    format: Literal["delta"] = "delta"
    version: int | None = Field(default=None, ge=0)
    as_of: dt.datetime | None = None
    filters: Filters = None

    @model_validator(mode="after")
    def _one_pin(self):
        if self.version is not None and self.as_of is not None:
            raise ValueError("give either `version` or `as_of`, not both")
        return self


class DeltaSinkSpec(BaseSinkSpec):
    """A Delta table written in one transaction (created when missing).

    ``mode``: ``append`` adds the rows; ``overwrite`` replaces the whole table (its schema too);
    ``overwrite_partitions`` replaces only the partitions (values of ``partition_by``) that the
    written rows fall in. ``partition_by`` names the partition columns of a new table (an existing
    table's are used when it is left out; given, it must match them).
    """

    format: Literal["delta"] = "delta"
    mode: Literal["append", "overwrite", "overwrite_partitions"] = "append"
    partition_by: list[str] | None = Field(default=None, min_length=1)
    #: Maximum retries of a commit that conflicts with a concurrent writer's.
    max_commit_retries: int = Field(default=5, ge=0)
