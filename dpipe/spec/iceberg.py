"""Apache Iceberg tables as a source (``format: iceberg``) and a sink, with the ``pyiceberg`` package.

A table is named by ``table`` (``namespace.name``) in a ``catalog``: a dict of pyiceberg catalog
properties, passed through (``type``, ``uri``, ``warehouse``, ``s3.endpoint``, a REST catalog's
``credential``...), plus ``name`` (default ``default``). Without ``type`` and ``uri`` the catalog is
the embedded one: pyiceberg's SQL catalog in a SQLite file, ``<warehouse>/catalog.db``, which needs
a local ``warehouse``. Given only a ``name``, the catalog comes from pyiceberg's own configuration
(``~/.pyiceberg.yaml``, ``PYICEBERG_CATALOG__<NAME>__URI``).

A source reads one snapshot: the current one, ``snapshot_id`` or the one current at ``as_of``;
``filters`` and ``columns`` are pushed into the scan planning, which prunes data files by their
partition values and column statistics. A sink commits the files its workers wrote as one
snapshot. ``uri`` is only a label here (``iceberg://<catalog name>/<table>``), filled when absent.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dpipe.spec.base import Strict
from dpipe.spec.connectors import BaseSinkSpec
from dpipe.spec.source import BaseSourceSpec, Filters

#: ``namespace.name``; nested namespaces (``a.b.name``) too.
TABLE_NAME = re.compile(r"^[^.\s]+(\.[^.\s]+)+$")
#: The catalog name when ``catalog.name`` is not given (pyiceberg's own default).
DEFAULT_CATALOG = "default"
#: The SQLite file of the embedded catalog, inside its warehouse.
EMBEDDED_DB = "catalog.db"

CatalogValue = str | int | float | bool


def catalog_name(catalog: Mapping[str, Any]) -> str:
    return str(catalog.get("name") or DEFAULT_CATALOG)


def is_embedded(catalog: Mapping[str, Any]) -> bool:
    """No ``type`` and no ``uri`` but a ``warehouse``: the SQLite catalog in the warehouse."""
    return "type" not in catalog and "uri" not in catalog and "warehouse" in catalog


def _fill_uri(data: Any) -> Any:
    if isinstance(data, Mapping) and not data.get("uri") and isinstance(data.get("table"), str):
        catalog = data.get("catalog")
        name = catalog_name(catalog) if isinstance(catalog, Mapping) else DEFAULT_CATALOG
        return {**data, "uri": f"iceberg://{name}/{data['table']}"}
    return data


class IcebergTableKeys(Strict):
    """The keys that name an Iceberg table: ``table`` and its ``catalog``."""

    table: str
    catalog: dict[str, CatalogValue] = Field(default_factory=dict)

    @field_validator("table")
    @classmethod
    def _check_table(cls, table: str) -> str:
        if not TABLE_NAME.match(table):
            raise ValueError(f"expected `namespace.name` such as 'lake.events'; got {table!r}")
        return table

    @field_validator("catalog")
    @classmethod
    def _check_catalog(cls, catalog: dict[str, CatalogValue]) -> dict[str, CatalogValue]:
        if not catalog:
            raise ValueError(
                "no catalog given: set `catalog.warehouse` (a local folder: the embedded SQLite catalog),"
                " `catalog.uri` (sqlite:///..., postgresql://..., a REST catalog's http(s)://...)"
                " or `catalog.name` (a catalog of ~/.pyiceberg.yaml)"
            )
        if is_embedded(catalog):
            warehouse = str(catalog["warehouse"])
            scheme = warehouse.split("://", 1)[0] if "://" in warehouse else "file"
            if scheme != "file":
                raise ValueError(
                    f"the embedded SQLite catalog needs a local `warehouse`; got a {scheme}:// one: give"
                    " `catalog.uri` too (sqlite:////local/folder/catalog.db, or a REST or SQL catalog's URL)"
                )
        return catalog

    @field_validator("storage_options", check_fields=False)
    @classmethod
    def _check_storage_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        # pyiceberg's FileIO takes its own properties; these are the s3fs-style keys mapped to them.
        unknown = sorted(set(options) - {"key", "secret", "token", "client_kwargs", "endpoint_url", "anon"})
        kwargs = options.get("client_kwargs") or {}
        unknown += sorted(f"client_kwargs.{k}" for k in set(kwargs) - {"endpoint_url", "region_name"})
        if unknown:
            raise ValueError(
                f"keys {unknown} have no pyiceberg equivalent (known: key, secret, token, anon, endpoint_url,"
                " client_kwargs.endpoint_url, client_kwargs.region_name); give pyiceberg's FileIO properties"
                " in `catalog` instead (s3.region, s3.proxy-uri, ...)"
            )
        return options


class IcebergSourceSpec(BaseSourceSpec, IcebergTableKeys):
    """An Iceberg table read at one snapshot.

    ``snapshot_id`` and ``as_of`` (a date-time, UTC when it has no zone: the snapshot current then)
    are exclusive; without them the current snapshot is read. The snapshot actually read is
    recorded in the run's lineage. ``filters`` are ``[column, op, value]`` triples as for files.
    """

    format: Literal["iceberg"] = "iceberg"
    snapshot_id: int | None = None
    as_of: dt.datetime | None = None
    filters: Filters = None

    @model_validator(mode="before")
    @classmethod
    def _label(cls, data: Any) -> Any:
        return _fill_uri(data)

    @model_validator(mode="after")
    def _one_pin(self):
        if self.snapshot_id is not None and self.as_of is not None:
            raise ValueError("give either `snapshot_id` or `as_of`, not both")
        return self


class IcebergSinkSpec(BaseSinkSpec, IcebergTableKeys):
    """An Iceberg table written as one snapshot (created, with its namespace, when missing).

    ``mode``: ``append`` adds the rows; ``overwrite`` replaces every row (the table's schema stays,
    and what is written must match it). ``partition_by`` names identity partition columns of a new
    table; for an existing table it may be left out, and given, it must match the table's.
    """

    format: Literal["iceberg"] = "iceberg"
    mode: Literal["append", "overwrite"] = "append"
    partition_by: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _label(cls, data: Any) -> Any:
        return _fill_uri(data)
