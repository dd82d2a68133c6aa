"""Arrow tables to pandas the same way for every connector, so dtypes agree file to file."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa


def _types_mapper(dtype: pa.DataType):
    # Arrow-backed strings: no Python objects, and the same dtype Dask itself would pick.
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return pd.StringDtype("pyarrow")
    # Nullable booleans: numpy has no missing bool, so a file with a missing value would give
    # object, which Dask then turns into the strings 'True'/'False' in that partition only.
    if pa.types.is_boolean(dtype):
        return pd.BooleanDtype()
    return None


def arrow_to_pandas(table: pa.Table) -> pd.DataFrame:
    """One partition (or the empty meta) as pandas, with dtypes that do not depend on the file.

    Decimals would become Python ``Decimal`` objects, which Dask turns into text: they are read as
    float64 (what XGBoost uses anyway), in the meta and in every partition alike. Dictionary
    columns (pandas writes its categories so) would become categories that differ from file to
    file: their values are read; the ``categorical`` op learns one vocabulary for all files.
    """
    for i, f in enumerate(table.schema):
        if pa.types.is_decimal(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.float64()))
        elif pa.types.is_dictionary(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(f.type.value_type))
    return table.to_pandas(types_mapper=_types_mapper, self_destruct=True, split_blocks=True)


def empty_frame(schema: pa.Schema, columns: list[str]) -> pd.DataFrame:
    """The Dask meta of ``columns`` of ``schema``: an empty frame with the partitions' dtypes."""
    return arrow_to_pandas(pa.schema([schema.field(c) for c in columns]).empty_table())


def writable_schema(meta: pd.DataFrame, *, utc_timestamps: bool = False) -> pa.Schema:
    """The Arrow schema a sink writes a frame with (the same on every worker, from its meta).

    Categories are written as their values; columns of unknown type (empty object columns) and
    large or view strings as plain strings; timestamps in microseconds, what lake tables and
    databases store. ``utc_timestamps``: zoned timestamps become UTC (Delta has only UTC instants
    and zone-less times).
    """
    fields = []
    for f in pa.Schema.from_pandas(meta, preserve_index=False):
        t = f.type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if pa.types.is_null(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
            t = pa.string()
        if pa.types.is_timestamp(t):
            t = pa.timestamp("us", tz=("UTC" if utc_timestamps else t.tz) if t.tz else None)
        fields.append(pa.field(f.name, t))
    return pa.schema(fields)
