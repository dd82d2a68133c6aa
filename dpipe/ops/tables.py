"""Ops across rows and tables: joins with other sources, per-entity aggregates, dedupe."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import pandas as pd

from dpipe.columns import LABEL
from dpipe.errors import ColumnError, DataError, StateError
from dpipe.ops.base import Op, count_rows, plain, to_builtin
from dpipe.ops.stats import merge_maximum, merge_minimum, merge_sums

_MATCH = "__dpipe_match__"


class _Table(Protocol):
    """What a join reads of the opened right table the runner hands to ``bind``.

    A protocol, so the ops never import :mod:`dpipe.io`.
    """

    @property
    def frame(self) -> Any: ...  # a Dask DataFrame

    @property
    def meta(self) -> pd.DataFrame: ...  # the frame's empty pandas frame

    @property
    def nbytes(self) -> int | None: ...


class Join(Op):
    """Left (or inner) join with another table, measured for row loss and explosion.

    The right table is opened by the runner (any connector: ``source`` is a full source spec) and
    re-read at prediction, so enrichment data is looked up, never frozen into the bundle.

    Examples
    --------
    ``{op: join, source: {uri: data/flights/weather}, on: [origin, time_hour], prefix: wx_}``
    """

    name = "join"
    filters_rows = True  # a join can drop (inner) or repeat (many-to-many) rows

    def __init__(self, spec, where):
        super().__init__(spec, where)
        self._table: _Table | None = None

    def __getstate__(self):
        # Never pickle the lazy right table into a task graph.
        return {**self.__dict__, "_table": None}

    # -- tables ------------------------------------------------------------------------------
    def sources(self):
        return {"source": self.spec.source}

    def bind(self, tables):
        self._table = tables["source"]

    def _require_bound(self) -> _Table:
        """The right table handed over by ``bind``; a :class:`StateError` before ``bind``."""
        if self._table is None:
            raise StateError(
                f"{self.where} ({self.name}): the right table is not opened",
                hint="call `pipeline.bind(read)` (or `op.bind(tables)`) before describing or applying the join",
            )
        return self._table

    # -- columns -----------------------------------------------------------------------------
    def input_columns(self) -> set[str]:
        return set(self.spec.left_keys)

    def output_columns(self) -> set[str]:
        if self._table is None:
            return {self.spec.prefix + c for c in self.spec.columns or []}
        return set(self._right_meta().columns) - set(self.spec.left_keys)

    def _right_columns(self, right_meta: pd.DataFrame) -> list[str]:
        keys = self.spec.right_keys
        missing = [c for c in keys + list(self.spec.columns or []) if c not in right_meta.columns]
        if missing:
            raise ColumnError(
                f"{self.where} ({self.name}): column(s) {missing} not found in {self.spec.source.uri!r};"
                f" available: {list(right_meta.columns)}",
                hint=f"check `{self.where}.right_on`/`on` and `{self.where}.columns`",
            )
        return list(self.spec.columns or [c for c in right_meta.columns if c not in keys])

    def _project(self, right):
        """Right keys take the left names, value columns the prefix (a frame or its meta).

        Integer value columns become float64 and booleans nullable: a left join gives unmatched
        rows missing values, and every partition must have the same dtypes.
        """
        meta = right._meta if hasattr(right, "_meta") else right
        columns = self._right_columns(meta)
        renames = dict(zip(self.spec.right_keys, self.spec.left_keys))
        renames.update({c: self.spec.prefix + c for c in columns})
        right = right[self.spec.right_keys + columns].rename(columns=renames)
        widen = {}
        for c in columns:
            dtype = meta[c].dtype
            if pd.api.types.is_bool_dtype(dtype):
                widen[self.spec.prefix + c] = "boolean"
            elif pd.api.types.is_integer_dtype(dtype):
                widen[self.spec.prefix + c] = "float64"
        return right.astype(widen) if widen else right

    def _key_types(self, left_meta: pd.DataFrame, right_meta: pd.DataFrame) -> dict[str, Any]:
        """The dtype each key is compared in (on temporary copies: the left column is kept)."""
        types = {}
        for key in self.spec.left_keys:
            lt, rt = left_meta[key].dtype, right_meta[key].dtype
            num = pd.api.types.is_numeric_dtype
            if isinstance(lt, pd.CategoricalDtype) or isinstance(rt, pd.CategoricalDtype):
                raise ColumnError(
                    f"{self.where} ({self.name}): key {key!r} is categorical ({lt} / {rt})",
                    hint=f"join on the plain values: cast the key first (`{{op: cast, columns: {{{key}: string}}}}`)",
                )
            if lt == rt:
                types[key] = lt
            elif num(lt) and num(rt) and not pd.api.types.is_bool_dtype(lt) and not pd.api.types.is_bool_dtype(rt):
                both_int = pd.api.types.is_integer_dtype(lt) and pd.api.types.is_integer_dtype(rt)
                # Integers compare as integers (float64 would merge distinct 64-bit ids).
                types[key] = "Int64" if both_int else "float64"
            elif pd.api.types.is_string_dtype(lt) and pd.api.types.is_string_dtype(rt):
                types[key] = pd.StringDtype("pyarrow")
            elif (
                pd.api.types.is_datetime64_any_dtype(lt)
                and pd.api.types.is_datetime64_any_dtype(rt)
                and getattr(lt, "tz", None) is None
                and getattr(rt, "tz", None) is None
            ):
                types[key] = "datetime64[us]"
            else:
                raise ColumnError(
                    f"{self.where} ({self.name}): key {key!r} is {lt} on the left but {rt} in {self.spec.source.uri!r}",
                    hint="cast one side (a `cast` op, or fix the data) so the keys compare equal",
                )
        return types

    def _right_meta(self) -> pd.DataFrame:
        return self._project(self._require_bound().meta)

    def describe(self, meta):
        self._require_bound()
        self.require_columns(meta, self.spec.left_keys)
        right_meta = self._right_meta()
        clash = sorted((set(right_meta.columns) - set(self.spec.left_keys)) & set(meta.columns))
        if clash:
            raise ColumnError(
                f"{self.where} ({self.name}): column(s) {clash} exist on both sides of the join",
                hint=f"set `{self.where}.prefix` (e.g. `prefix: right_`) or pick `{self.where}.columns`",
            )
        self._key_types(meta, right_meta)
        values = right_meta.drop(columns=self.spec.left_keys)
        return meta.assign(**{c: values[c] for c in values.columns})

    # -- applying ----------------------------------------------------------------------------
    def _broadcast(self) -> bool:
        if self.spec.strategy != "auto":
            return self.spec.strategy == "broadcast"
        nbytes = self._require_bound().nbytes
        return nbytes is not None and nbytes <= self.spec.broadcast_limit

    def apply(self, df):
        return self._merge(df)[0]

    def apply_measured(self, df):
        """The joined frame, and its row counts, unmatched rows and right-key duplicates (lazy).

        The counts are built on the merged frame itself, so computing them with the statistics
        of the fit pass costs no second merge.
        """
        out, merged, right, tmp = self._merge(df)
        sizes = right.groupby(tmp).size()
        return out, {
            "rows_in": count_rows(df),
            "rows_out": count_rows(out),
            "unmatched": (merged[_MATCH] == "left_only").sum(),
            "right_rows": count_rows(right),
            "duplicate_keys": (sizes > 1).sum(),
            "max_rows_per_key": sizes.max(),
        }

    def _merge(self, df):
        """The output, the merged frame with its match indicator, the right side and the key columns."""
        table = self._require_bound()
        keys = self.spec.left_keys
        right = self._project(table.frame)
        types = self._key_types(df._meta, right._meta)
        tmp = [f"__dpipe_key{i}__" for i in range(len(keys))]
        left = df.assign(**{t: df[k].astype(types[k]) for t, k in zip(tmp, keys)})
        # A missing key matches nothing (pandas would pair it with the right side's missing key).
        right = right.assign(**{t: right[k].astype(types[k]) for t, k in zip(tmp, keys)}).drop(columns=keys)
        right = right.dropna(subset=tmp)
        if self._broadcast():
            # One partition: merged blockwise into every left partition, no shuffle of the left.
            right = right.repartition(npartitions=1)
        import dask.dataframe as dd

        merged = dd.merge(left, right, how="left", on=tmp, indicator=_MATCH)
        # Prediction scores every row it is given: only training drops unmatched rows.
        training = LABEL in df.columns
        out = merged[merged[_MATCH] == "both"] if self.spec.how == "inner" and training else merged
        return out.drop(columns=[_MATCH, *tmp]), merged, right, tmp

    def check(self, measured: Mapping[str, Any]) -> dict[str, Any]:
        m = {k: to_builtin(v) for k, v in measured.items()}
        m["max_rows_per_key"] = m["max_rows_per_key"] or 0
        keys, uri = self.spec.right_keys, self.spec.source.uri
        where = f"{self.where} ({self.name} {uri!r} on {keys})"
        if self.spec.validate_keys == "many_to_one" and m["duplicate_keys"]:
            raise DataError(
                f"{where}: {m['duplicate_keys']} key(s) have more than one row in the right table (up to"
                f" {m['max_rows_per_key']}); the join would repeat {m['rows_in']} left rows into"
                f" {m['rows_out'] if self.spec.how == 'left' else 'more'} rows",
                hint=f"make the right keys unique (`{self.where}.source.filters`), or set `validate: many_to_many`",
            )
        rows_in = m["rows_in"]
        m["unmatched_fraction"] = round(m["unmatched"] / rows_in, 6) if rows_in else 0.0
        limit = self.spec.max_unmatched_fraction
        if limit is not None and m["unmatched_fraction"] > limit:
            raise DataError(
                f"{where}: {m['unmatched']} of {rows_in} rows ({m['unmatched_fraction']:.1%}) found no match,"
                f" more than max_unmatched_fraction {limit}",
                hint="check the keys' values and types on both sides, or raise `max_unmatched_fraction`",
            )
        m["strategy"] = "broadcast" if self._broadcast() else "shuffle"
        return m


class Aggregate(Op):
    """Group-by statistics per entity, fitted on the training rows and joined back by key.

    Examples
    --------
    ``{op: aggregate, by: [tailnum], columns: {dep_delay: [mean, max]}}`` adds
    ``tailnum_count``, ``tailnum_dep_delay_mean`` and ``tailnum_dep_delay_max``.
    """

    name = "aggregate"
    stateful = True
    #: The fitted statistics, one list per column: the ``by`` keys, then the outputs.
    state = ("table_",)

    def __init__(self, spec, where):
        super().__init__(spec, where)
        self._frame: pd.DataFrame | None = None  # ``table_`` as a lookup frame, built on first use

    def __getstate__(self):
        return {**self.__dict__, "_frame": None}

    def _outputs(self) -> list[str]:
        prefix = self.spec.output_prefix
        names = [f"{prefix}count"] if self.spec.count else []
        return names + [f"{prefix}{c}_{agg}" for c, aggs in self.spec.columns.items() for agg in aggs]

    def input_columns(self) -> set[str]:
        return set(self.spec.by) | set(self.spec.columns)

    def output_columns(self) -> set[str]:
        return set(self._outputs())

    def describe(self, meta):
        self.require_columns(meta, self.spec.by)
        numeric = [c for c, aggs in self.spec.columns.items() if set(aggs) - {"count", "nunique"}]
        self.require_columns(meta, numeric, numeric=True)
        self.require_columns(meta, self.spec.columns)
        clash = sorted(set(self._outputs()) & set(meta.columns))
        if clash:
            raise ColumnError(
                f"{self.where} ({self.name}): output column(s) {clash} already exist",
                hint=f"set `{self.where}.prefix`",
            )
        return meta.assign(**{c: pd.Series(dtype="float64") for c in self._outputs()})

    def fit(self, df):
        grouped = df.groupby(list(self.spec.by), dropna=True)
        stats = {}
        if self.spec.count:
            stats["count"] = grouped.size(split_out=1)
        for column, aggs in self.spec.columns.items():
            for agg in aggs:
                # A mean is kept as its sum and count, so the statistics of two runs merge.
                group = grouped[column]
                stats[f"{column}:{agg}"] = (
                    group.agg(["sum", "count"], split_out=1) if agg == "mean" else getattr(group, agg)(split_out=1)
                )
        return stats

    #: How each aggregate's statistic merges (a mean's is its sum and count); std and nunique do not.
    _MERGES = {"count": merge_sums, "sum": merge_sums, "mean": merge_sums, "min": merge_minimum, "max": merge_maximum}

    def not_incremental(self) -> str | None:
        unmergeable = sorted({a for aggs in self.spec.columns.values() for a in aggs} - set(self._MERGES))
        if unmergeable:
            return f"its {unmergeable} per group cannot be merged across runs (count, sum, mean, min and max can)"
        return None

    def merge(self, parts):
        return {key: self._MERGES[key.rpartition(":")[2]]([p[key] for p in parts]) for key in parts[0]}

    def finalize(self, stats):
        prefix = self.spec.output_prefix
        series = {}
        if self.spec.count:
            series[f"{prefix}count"] = stats["count"]
        for column, aggs in self.spec.columns.items():
            for agg in aggs:
                value = stats[f"{column}:{agg}"]
                if agg == "mean":
                    value = (value["sum"] / value["count"]).where(value["count"] > 0)
                series[f"{prefix}{column}_{agg}"] = value
        table = pd.DataFrame(series).reset_index()
        self.table_ = {c: [to_builtin(v) for v in table[c]] for c in table.columns}
        self._frame = None

    def state_loaded(self):
        self._frame = None

    def _lookup_table(self, key_dtypes: dict) -> pd.DataFrame:
        if self._frame is None or dict(self._frame.index.to_frame().dtypes) != key_dtypes:
            table = pd.DataFrame(self.table_)
            table = table.astype({c: key_dtypes[c] for c in self.spec.by})
            table = table.astype({c: "float64" for c in self._outputs()})
            self._frame = table.set_index(list(self.spec.by))
        return self._frame

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        # Keys as plain values: a categorical key's categories differ between partitions.
        keys = pd.DataFrame({c: plain(pdf[c]) for c in self.spec.by}, index=pdf.index)
        table = self._lookup_table(dict(keys.dtypes))
        index = pd.MultiIndex.from_frame(keys) if len(self.spec.by) > 1 else pd.Index(keys[self.spec.by[0]])
        rows = table.index.get_indexer(index) if len(table) else np.full(len(pdf), -1)
        found = rows >= 0
        out = {}
        for c in self._outputs():
            values = table[c].to_numpy()[np.where(found, rows, 0)] if len(table) else np.zeros(len(pdf))
            values = np.where(found, values, 0.0 if c == f"{self.spec.output_prefix}count" else np.nan)
            out[c] = pd.Series(values.astype("float64"), index=pdf.index)
        return pdf.assign(**out)


class Dedupe(Op):
    """One row per key; rows are shuffled by key so duplicates from any files meet.

    Examples
    --------
    ``{op: dedupe, key: [flight_id], order_by: updated_at, keep: last}``
    """

    name = "dedupe"
    across_datums = "it compares rows of every datum, and an incremental run reads the new ones only"
    filters_rows = True

    def input_columns(self) -> set[str]:
        return set(self.spec.key) | ({self.spec.order_by} if self.spec.order_by else set())

    def output_columns(self) -> set[str]:
        return set()

    def describe(self, meta):
        self.require_columns(meta, self.input_columns())
        return meta

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        if self.spec.order_by:
            # A missing `order_by` never wins: it sorts away from the end that is kept.
            last = "last" if self.spec.keep == "first" else "first"
            pdf = pdf.sort_values(self.spec.order_by, kind="stable", na_position=last)
        # Rows with a missing key are not duplicates of each other: they all pass.
        known = pdf[list(self.spec.key)].notna().all(axis=1)
        kept = pdf[known].drop_duplicates(subset=list(self.spec.key), keep=self.spec.keep)
        return pd.concat([kept, pdf[~known]]) if not known.all() else kept

    def apply(self, df):
        shuffled = df.shuffle(on=list(self.spec.key)) if df.npartitions > 1 else df
        return shuffled.map_partitions(self.transform, meta=self.describe(df._meta))
