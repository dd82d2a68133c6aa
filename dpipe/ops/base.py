"""The feature-op contract.

An op is built from its spec model and its location in the spec (``features[2]``), and then:

* ``input_columns`` / ``output_columns`` name what it reads and writes, so the planner knows
  which ops can be fitted together and columns are checked against the schema before any compute;
* ``describe(meta)`` maps an empty pandas frame to the frame the op would produce (schema checks);
* stateful ops return lazy Dask statistics from ``fit(df)``; the pipeline computes the statistics
  of every ready op in one ``dask.compute`` and hands the results to ``finalize``, which stores
  plain JSON-able values in the attributes the op names in ``state`` (each ending in ``_``);
  ``get_state`` / ``set_state`` save and load exactly those, and ``fitted`` derives from them;
* ``transform(pdf)`` is a pure function of one pandas partition; it never mutates its input;
* ``apply(df)`` applies the op to a Dask DataFrame: ``map_partitions(transform)`` unless the op
  needs rows of other partitions (joins, dedupe), which override it (``partition_wise`` is then
  false);
* ops that change the row set (``filters_rows``) are measured in the fit pass:
  ``apply_measured(df)`` returns the output frame with lazy measurements of it, computed with the
  statistics, and ``check`` turns them into a report, or a :class:`~dpipe.errors.DataError`
  when a join explodes or loses too many rows;
* ops that read other tables name them in ``sources()``; the runner reads them and hands them
  over with ``bind`` (the op never does I/O itself);
* ops with ``needs_label`` (target encoding) see the internal label, validation and fold columns
  in training frames (:mod:`dpipe.columns`) and never at prediction;
* incremental runs merge the computed statistics of earlier rows with those of new rows
  (:meth:`merge`, by the ``merges`` an op declares per statistic); an op that cannot be merged, or
  whose output depends on rows of other datums (``dedupe``), says why in :meth:`not_incremental`.

Stateful ops never add or drop rows: only stateless ops such as ``filter`` may.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import pandas as pd

from dpipe.errors import BundleError, ColumnError, StateError

NUMERIC_HINT = "cast or encode the column first, or remove it from the op"
#: The dtype of text columns the ops produce.
STRING = pd.StringDtype("pyarrow")


class Op:
    """Base class of feature ops. Subclasses set ``name`` and override what they need.

    An op of your own that sets no ``name`` is named by its import path (``mypkg.features:Winsorize``),
    the way a spec refers to it; messages and fit reports show that name.

    Fitted state is declared once, in ``state``: the names of the attributes ``finalize`` sets,
    each ending in ``_`` (``("mean_", "scale_")``). They are saved as JSON under their names
    without the ``_`` (``{"mean": ..., "scale": ...}``); before the fit they are unset (or None).
    """

    name: ClassVar[str]
    #: The fitted attributes, saved and loaded by ``get_state`` / ``set_state``.
    state: ClassVar[tuple[str, ...]] = ()
    filters_rows: ClassVar[bool] = False
    needs_label: ClassVar[bool] = False
    #: How each statistic ``fit`` returns is merged with the same statistic of other rows, by the
    #: statistic's name up to its ``:`` (``"moments"``, ``"counts"`` for ``"counts:city"``); see
    #: the ``merge_*`` functions of :mod:`dpipe.ops.stats`. An op without them cannot be refitted
    #: incrementally.
    merges: ClassVar[Mapping[str, Callable[[list[Any]], Any]]] = {}
    #: Why each partition's output depends on rows of other partitions (a dedupe, a forward fill),
    #: so an incremental run, which sees new datums only, would differ; ``None`` when it does not.
    across_datums: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not hasattr(cls, "name"):
            cls.name = f"{cls.__module__}:{cls.__qualname__}"
        bad = [a for a in cls.state if not a.endswith("_") or a.startswith("_")]
        if bad:
            raise TypeError(f"{cls.__qualname__}.state: fitted attributes are public and end in '_', got {bad}")

    def __init__(self, spec, where: str):
        self.spec = spec
        self.where = where

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where})"

    @property
    def stateful(self) -> bool:
        """Whether ``fit`` learns state from the training rows.

        Ops where this is fixed set a class attribute (``stateful = True``); ops where it depends
        on the spec (``clip`` with ``quantiles``) override this property. An op of your own may
        also assign it in ``__init__`` (``self.stateful = spec.learn``).
        """
        return bool(self.__dict__.get("_stateful", False))

    @stateful.setter
    def stateful(self, value: bool) -> None:
        self.__dict__["_stateful"] = bool(value)

    @property
    def partition_wise(self) -> bool:
        """Whether ``transform`` alone is right on each partition, so the pipeline may chain it
        with its neighbours in one ``map_partitions``: true unless the op has its own ``apply``
        (or assigns ``self.partition_wise = False`` in ``__init__``)."""
        return bool(self.__dict__.get("_partition_wise", type(self).apply is Op.apply))

    @partition_wise.setter
    def partition_wise(self, value: bool) -> None:
        self.__dict__["_partition_wise"] = bool(value)

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
            bad = {c: str(meta[c].dtype) for c in columns if not is_numeric(meta[c])}
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
        """Store computed statistics as JSON-able values in the attributes named by ``state``."""

    @property
    def fitted(self) -> bool:
        return not self.stateful or self.get_state() is not None

    def get_state(self) -> dict[str, Any] | None:
        """The attributes named by ``state``, keyed without their ``_``; None while all are unset."""
        values = {attr: getattr(self, attr, None) for attr in self.state}
        if all(v is None for v in values.values()):
            return None
        return {attr.removesuffix("_"): value for attr, value in values.items()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Set the attributes named by ``state`` from saved state (a copy: nothing is shared)."""
        expected = {attr.removesuffix("_") for attr in self.state}
        if set(state) != expected:
            raise BundleError(
                f"{self.where} ({self.name}): saved state has the keys {sorted(state)}; this op reads"
                f" {sorted(expected)}",
                hint="re-train the model with this dpipe version",
            )
        for attr in self.state:
            setattr(self, attr, copy.deepcopy(state[attr.removesuffix("_")]))
        self.state_loaded()

    def state_loaded(self) -> None:
        """Called by ``set_state`` once the attributes are set: normalise them, reset caches."""

    # -- incremental runs --------------------------------------------------------------------
    def not_incremental(self) -> str | None:
        """Why an incremental run cannot use this op (``None`` when it can)."""
        if self.across_datums is not None:
            return self.across_datums
        if self.stateful and not self.merges:
            return "its statistics cannot be merged across runs (the op declares no `merges`)"
        return None

    def merge(self, parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Computed statistics of disjoint sets of rows (what ``fit`` returned, computed) merged
        into those of all of them, statistic by statistic with ``merges``."""
        merged = {}
        for key in parts[0]:
            merger = self.merges.get(key.split(":", 1)[0])
            if merger is None:
                raise StateError(
                    f"{self.where} ({self.name}): no merge for its statistic {key!r}",
                    hint="run without `incremental`, or declare how it merges in the op's `merges`",
                )
            merged[key] = merger([p[key] for p in parts])
        return merged

    # -- fitted together with what follows --------------------------------------------------
    @property
    def fills_missing(self) -> bool:
        """Whether this (stateful) op does nothing but replace the missing values of each of its
        columns by one learned constant. The statistics a later op learns from those columns
        then follow from the columns before it (:func:`dpipe.ops.stats.filled`), so the
        pipeline fits both in one pass; :meth:`fills` gives the constants once fitted."""
        return False

    def fills(self, meta: pd.DataFrame) -> dict[str, float]:
        """The fitted constants of a :attr:`fills_missing` op as float64, exactly as its
        ``transform`` stores them in columns of ``meta``'s dtypes (a float32 column holds the
        float32 value); a column left missing (no value seen at fit time) is absent."""
        raise NotImplementedError(f"{self.where} ({self.name}) does not only fill missing values")

    # -- other tables ------------------------------------------------------------------------
    def sources(self) -> dict[str, Any]:
        """Source specs of the tables this op reads, by name (none by default)."""
        return {}

    def bind(self, tables: dict[str, Any]) -> None:
        """Receive the opened tables (:class:`dpipe.io.OpenedSource`) named by ``sources()``."""

    # -- applying ----------------------------------------------------------------------------
    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError

    def apply(self, df):
        """This op over a Dask DataFrame (lazy)."""
        return df.map_partitions(self.transform, meta=self.describe(df._meta))

    # -- measuring ---------------------------------------------------------------------------
    def apply_measured(self, df) -> tuple[Any, dict[str, Any]]:
        """``apply(df)`` and lazy measurements of what it did to the rows, for the fit pass.

        The measurements are :meth:`diagnose` of the input and the returned frame, so one
        computation gives both. Ops whose measurements need the intermediate frames of their own
        ``apply`` (a join's merge) override this instead, returning them with the output.
        """
        out = self.apply(df)
        return out, self.diagnose(df, out)

    def diagnose(self, before, after) -> dict[str, Any]:
        """Lazy measurements of what the op did to the rows: ``rows_in`` and ``rows_out`` for
        ops that change the row set (``filters_rows``), nothing for the others."""
        if not self.filters_rows:
            return {}
        return {"rows_in": count_rows(before), "rows_out": count_rows(after)}

    def check(self, measured: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON-able report of ``measured``; raise :class:`DataError` if it is unacceptable."""
        return {k: to_builtin(v) for k, v in measured.items()}


def count_rows(df):
    """Lazy number of rows of a Dask DataFrame (no column is materialised)."""
    return df.map_partitions(len, meta=("rows", "int64")).sum()


def is_numeric(s: pd.Series) -> bool:
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


def plain(values):
    """A categorical Series or Index as its values (categories differ between partitions); others as is."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.astype(values.dtype.categories.dtype)
    return values


def value_dtype(dtype):
    """The dtype of a categorical's values; other dtypes as they are."""
    return dtype.categories.dtype if isinstance(dtype, pd.CategoricalDtype) else dtype


def is_temporal(dtype) -> bool:
    """Date-time, time-delta and period dtypes."""
    is_time = pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype)
    return is_time or isinstance(dtype, pd.PeriodDtype)
