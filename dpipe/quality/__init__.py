"""Data-quality checks and quarantine, evaluated in the same Dask pass as the feature statistics.

Each check kind is a class in :mod:`dpipe.quality.checks` that carries its behaviour: its type
check against the schema, its row mask (row checks), its lazy measurements and the evaluation
of their values into a manifest entry and a problem message; :data:`REGISTRY` maps the spec's
``check`` name to it. :class:`QualityGate` runs a job's checks as stages that take explicit
inputs and return frozen results, so nothing depends on the order of calls beyond the data flow:

1. :func:`check_columns` while planning (no cluster yet): every column a check names exists in
   the source schema and has a type the check can compare.
2. :func:`bad_file_log` to learn where workers record the input files they skip
   (``quarantine.bad_files: skip``); it is handed to :func:`dpipe.io.read`.
3. ``QualityGate(job.checks, job.quarantine, source.files)``: configuration only.
4. ``gate.prepass(frame, compute)`` -> :class:`Prepass`, when ``gate.needs_prepass`` (a ``unique``
   check quarantines rows): the duplicated keys must be known before rows can be set aside, so
   that costs one pass over the key columns (counted in the manifest's ``quality.prepasses``).
   No other check needs it; without one it computes nothing.
5. ``gate.apply(frame, pre, quarantine_to=out)`` -> :class:`Checked`: ``.frame``, the rows the
   job trains on (the rows read minus quarantined rows), and ``.lazy``, the check counts, sample
   offending values, dataset statistics and (with ``quarantine_to``) the lazy write of the
   quarantined rows, all computed by the fit pass's single ``compute``. Apply it to as many
   frames as needed (the model's, the fit pass's projection), in any order.
6. ``gate.evaluate(values, rows_read=..., bad_files=...)``: turns the computed
   ``.lazy`` into the manifest's ``quality`` section, or raises one :class:`~dpipe.errors.DataError`
   listing every failed check and an exceeded quarantine limit.

Rows are checked as read from the source, before the label and any feature op. ``range``,
``allowed_values`` and ``regex`` ignore missing values (``not_null`` says a value must be there);
``unique`` ignores keys with a missing part and, quarantining, sets aside every row of a
duplicated key; ``row_count`` and ``null_fraction`` judge the rows read and can only fail. A row
that violates several quarantine checks is quarantined once, under the first of them in spec
order. Quarantined rows are written, with all their columns plus ``__check`` (the check's name)
and ``__source_file`` (the input file), as Parquet under ``quarantine/`` in the run's output,
which is committed atomically with the bundle.
"""

from dpipe.io import BadFileLog
from dpipe.quality.checks import REGISTRY, Check, Measured, Outcome, RowCheck, build_check
from dpipe.quality.gate import (
    BAD_FILES_DIR,
    CHECK_COLUMN,
    FILE_COLUMN,
    NO_PREPASS,
    QUARANTINE_DIR,
    Checked,
    Prepass,
    QualityGate,
    bad_file_log,
    check_columns,
)

__all__ = [
    "BAD_FILES_DIR", "CHECK_COLUMN", "FILE_COLUMN", "NO_PREPASS", "QUARANTINE_DIR", "REGISTRY", "BadFileLog", "Check",
    "Checked", "Measured", "Outcome", "Prepass", "QualityGate", "RowCheck", "bad_file_log", "build_check",
    "check_columns",
]  # fmt: skip
