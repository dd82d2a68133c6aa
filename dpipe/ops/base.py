"""The feature-op contract.

An op is built from its spec model and its location in the spec (``features[2]``), and then:

* ``input_columns`` / ``output_columns`` name what it reads and writes, so the planner knows
  which ops can be fitted together and columns are checked against the schema before any compute;
* ``describe(meta)`` maps an empty pandas frame to the frame the op would produce (schema checks);
* stateful ops return lazy Dask statistics from ``fit(df)``; the pipeline computes the statistics
  of every ready op in one ``dask.compute`` and hands the results to ``finalize``, which stores
  plain JSON-able state in attributes ending in ``_``;
* ``transform(pdf)`` is a pure function of one pandas partition; it never mutates its input;
* ``apply(df)`` applies the op to a Dask DataFrame: ``map_partitions(transform)`` unless the op
  needs rows of other partitions (joins, dedupe), which override it;
* ops that change the row set (``filters_rows``) are measured in the fit pass: ``diagnose``
  returns lazy counts computed with the statistics, and ``check`` turns them into a report, or
  a :class:`~dpipe.errors.DataError` when a join explodes or loses too many rows;
* ops that read other tables name them in ``sources()``; the runner reads them and hands them
  over with ``bind`` (the op never does I/O itself);
* ops with ``needs_label`` (target encoding) see the internal label, validation and fold columns
  in training frames (:mod:`dpipe.columns`) and never at prediction.

Stateful ops never add or drop rows: only stateless ops such as ``filter`` may.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd

from dpipe.errors import ColumnError

NUMERIC_HINT = "cast or encode the column first, or remove it from the op"


class Op:
    """Base class of feature ops. Subclasses set ``name`` and override what they need.

    An op of your own that sets no ``name`` is named by its import path (``mypkg.features:Winsorize``),
    the way a spec refers to it; messages and fit reports show that name.
    """

    name: ClassVar[str]
    stateful: ClassVar[bool] = False
    filters_rows: ClassVar[bool] = False
    needs_label: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not hasattr(cls, "name"):
            cls.name = f"{cls.__module__}:{cls.__qualname__}"

    def __init__(self, spec, where: str):
        self.spec = spec
        self.where = where
        #: ``transform`` alone is correct per partition (no ``apply`` of its own).
        self.partition_wise = type(self).apply is Op.apply

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where})"

    # -- columns -----------------------------------------------------------------------------
    def input_columns(self) -> set[str]:
        return set(getattr(self.spec, "columns", []) or [])

    def output_columns(self) -> set[str]:
        return set(getattr(self.spec, "columns", []) or [])

    def describe(self, meta: pd.DataFrame) -> pd.DataFrame:
        """The (empty) frame this op produces from ``meta``; raises if columns are wrong."""
        self.require_columns(meta, self.input_columns())
        return self.transform(meta) if not self.stateful else meta

    def require_columns(self, meta: pd.DataFrame, columns, *, numeric: bool = False) -> None:
        missing = sorted(c for c in columns if c not in meta.columns)
        if missing:
            import difflib

            available = [str(c) for c in meta.columns if not str(c).startswith("__dpipe")]
            close = {m: difflib.get_close_matches(m, available, n=1) for m in missing}
            guesses = [f"{c[0]!r} (for {m!r})" for m, c in close.items() if c]
            raise ColumnError(
                f"{self.where} ({self.name}): column(s) {missing} not found; available: {available}",
                hint=(f"did you mean {', '.join(guesses)}? " if guesses else "")
                + f"check `{self.where}` and the columns of `source`",
            )
        if numeric:
            bad = {c: str(meta[c].dtype) for c in columns if not _is_numeric(meta[c])}
            if bad:
                raise ColumnError(
                    f"{self.where} ({self.name}): needs numeric columns, got {bad}",
                    hint=NUMERIC_HINT,
                )

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, df) -> dict[str, Any]:
        """Lazy statistics (Dask collections) over the training rows. Stateless ops return {}."""
        return {}

    def finalize(self, stats: dict[str, Any]) -> None:
        """Store computed statistics as JSON-able state."""

    @property
    def fitted(self) -> bool:
        return not self.stateful or self.get_state() is not None

    def get_state(self) -> dict | None:
        return None

    def set_state(self, state: dict) -> None:
        raise NotImplementedError

    # -- other tables ------------------------------------------------------------------------
    def sources(self) -> dict[str, Any]:
        """Source specs of the tables this op reads, by name (none by default)."""
        return {}

    def bind(self, tables: dict[str, Any]) -> None:
        """Receive the opened tables (:class:`dpipe.io.sources.Source`) named by ``sources()``."""

    # -- applying ----------------------------------------------------------------------------
    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError

    def apply(self, df):
        """This op over a Dask DataFrame (lazy)."""
        return df.map_partitions(self.transform, meta=self.describe(df._meta))

    # -- measuring ---------------------------------------------------------------------------
    def diagnose(self, before, after) -> dict[str, Any]:
        """Lazy measurements of what the op did to the rows, computed in the fit pass."""
        if not self.filters_rows:
            return {}
        return {"rows_in": count_rows(before), "rows_out": count_rows(after)}

    def check(self, measured: dict[str, Any]) -> dict[str, Any]:
        """A JSON-able report of ``measured``; raise :class:`DataError` if it is unacceptable."""
        return {k: to_builtin(v) for k, v in measured.items()}


def count_rows(df):
    """Lazy number of rows of a Dask DataFrame (no column is materialised)."""
    return df.map_partitions(len, meta=("rows", "int64")).sum()


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)


def to_builtin(value):
    """numpy scalars -> Python scalars, NaN -> None, for JSON state."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
