"""New-data-only runs: can this job run so, what is new since its last committed run, what to do.

:func:`check_job` says, before any data is read, why a job cannot be fitted from its new datums
alone (an op whose statistics do not merge, a dedupe across datums). :func:`decide` diffs the
source's datums against the run state (:mod:`dpipe.state`) and picks one of three actions:

- ``increment``: only new datums; they are read, the old ones are not;
- ``full``: no usable state (a first run, another spec), or a datum changed or disappeared
  (``on_change: refit``): everything is processed again and a new state starts;
- ``nothing``: no new datum since the last run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from dpipe.errors import DataError, SpecError
from dpipe.io import BadFileLog, Increment, open_increment
from dpipe.pipeline import FeaturePipeline
from dpipe.state import STATE, RunState, fit_key

Log = Callable[[str], None]


@dataclass(frozen=True)
class Decision:
    """What an incremental run does, and why (the line it logs)."""

    action: Literal["increment", "full", "nothing"]
    reason: str
    #: The state of the last committed run (``None`` on a first run).
    state: RunState | None = None
    #: The new datums, opened (``increment``), or what was found (``nothing``).
    increment: Increment | None = None


def check_job(job: Any, pipeline: FeaturePipeline | None = None) -> None:
    """Raise a :class:`SpecError` naming every op or check that an incremental run cannot honour.

    Checked when the job is planned, before any data is read. ``pipeline`` is the fitted one a
    features job applies unchanged (``pipeline_from``): it learns nothing, so only ops that read
    other datums' rows matter.
    """
    pipeline = pipeline or FeaturePipeline.from_specs(job.features)
    if pipeline.fitted:
        problems = [f"{op.where} ({op.name}): {op.across_datums}" for op in pipeline.ops if op.across_datums]
    else:
        problems = pipeline.not_incremental()
    problems += [
        f"checks[{i}] (unique): it compares keys across every datum, and an incremental run reads the new ones only"
        for i, check in enumerate(job.checks)
        if check.check == "unique"
    ]
    if job.source.format in ("postgresql", "duckdb") and getattr(job.source, "watermark", None) is None:
        problems.append(
            f"source: the new rows of a {job.source.format} source are those above a `watermark` column;"
            " name one (`watermark: <a column that only grows>`, e.g. an insert time or a serial id)"
        )
    if getattr(job.incremental, "retrain", None) == "window" and job.source.format in ("postgresql", "duckdb"):
        problems.append(
            f"incremental.retrain: a window of datums needs datums that are files (a {job.source.format}"
            " source's are watermark ranges); retrain on `all` or `continue`"
        )
    split = getattr(job, "split", None)
    if split is not None and split.needs_range:
        problems.append(
            "split: cuts at fractions of the time range (or time folds) move as new data arrives, so earlier"
            " rows would change sides; give `valid_from` / `test_from` as dates"
        )
    if problems:
        raise SpecError(
            "incremental: this job cannot be fitted from new data alone:\n  - " + "\n  - ".join(problems),
            hint="change or remove those steps, or run without `--incremental` (every datum read again)",
        )


def decide(
    job: Any,
    state: RunState | None,
    *,
    bad_file_log: BadFileLog | None = None,
    max_datums: int | None = None,
    force: bool = False,
) -> Decision:
    """Diff the source's datums against ``state`` (only the listing, the table log or a
    ``max(watermark)`` query is read) and say what this run does.

    ``max_datums`` bounds the work: only the first new datums (by id) are taken, the others are
    left for the next run (a watch's next batch). ``force`` turns "nothing new" into a run over
    every datum (``dpipe run --force``)."""
    if state is None:
        return Decision("full", "no earlier run state: processing every datum")
    last = state.run_id or "?"
    if state.fit_key != fit_key(job):
        return Decision(
            "full", f"the spec changed since run {last[:12]} (source, features, label, split or checks): starting over"
        )
    inc = open_increment(job.source, state.seen, where="source", bad_file_log=bad_file_log)
    gone = [(d, "changed") for d in inc.changed] + [(d, "disappeared") for d in inc.missing]
    if gone:
        datum, how = gone[0]
        before = {d.id: d for d in state.datums}[datum.id]
        detail = f"version {before.version} -> {datum.version}" if how == "changed" else f"version {before.version}"
        what = f"datum {datum.id!r} {how} since run {before.run_id[:12]} read it ({detail})"
        more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
        if job.incremental.on_change == "fail":
            raise DataError(
                f"source: {what}{more}",
                hint="restore it, or set `incremental.on_change: refit` to process every datum again",
            )
        return Decision("full", f"{what}{more}: refitting from every datum")
    if not inc.new and force:
        return Decision("full", "forced (--force): processing every datum again", state)
    if not inc.new:
        return Decision("nothing", f"no new data since run {last[:12]}", state, inc)
    later = ""
    if max_datums is not None and len(inc.new) > max_datums and inc.source is not None:
        taken = sorted(inc.new, key=lambda d: d.id)[:max_datums]
        ids = {d.id for d in taken}
        deferred = {d.id for d in inc.new} - ids
        later = f" ({len(deferred)} more left for the next run: --max-datums {max_datums})"
        inc = Increment(
            inc.source.select(ids), tuple(taken), (), (), tuple(d for d in inc.current if d.id not in deferred)
        )
    return Decision("increment", f"{len(inc.new)} new datum(s) since run {last[:12]}{later}", state, inc)


def bundle_state(uri: str, storage_options: dict | None) -> RunState | None:
    """The run state saved in the bundle at ``uri`` (``None`` without a committed bundle or state)."""
    from dpipe.bundle import read_files
    from dpipe.errors import BundleError

    try:
        raw = read_files(uri, storage_options, (STATE,))
    except BundleError:
        return None
    try:
        data = json.loads(raw[STATE])
    except ValueError as exc:
        raise BundleError(
            f"bundle: {uri}/{STATE} is not JSON ({exc})",
            hint="run the job once without `--incremental` to write a new state",
        ) from exc
    return RunState.from_dict(data, where=f"bundle {uri}")
