"""The job spec: what to read, which features to build, what to train, where to write.

Every section rejects unknown keys so a misspelt option is an error, never silently ignored.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dpipe.expr import check_expression
from dpipe.spec.base import Strict
from dpipe.spec.connectors import SinkSpec
from dpipe.spec.features import OpSpec
from dpipe.spec.incremental import IncrementalSpec, TrainIncrementalSpec
from dpipe.spec.lineage import LineageSpec
from dpipe.spec.monitor import MonitorSpec
from dpipe.spec.quality import CheckSpec, QuarantineSpec, check_names_unique
from dpipe.spec.registry import RegistrySpec
from dpipe.spec.source import SourceSpec
from dpipe.spec.tune import TuneSpec


class LabelJoin(Strict):
    """A table the label comes from, looked up by key (training only; prediction never reads it).

    Rows without a match have no label: they are dropped and counted in the manifest.
    """

    source: SourceSpec
    on: list[str] | None = Field(default=None, min_length=1)
    left_on: list[str] | None = Field(default=None, min_length=1)
    right_on: list[str] | None = Field(default=None, min_length=1)
    max_unmatched_fraction: float | None = Field(default=None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _keys(self):
        if self.on is not None and (self.left_on or self.right_on):
            raise ValueError("give either `on` or `left_on` + `right_on`, not both")
        if self.on is None and not (self.left_on and self.right_on and len(self.left_on) == len(self.right_on)):
            raise ValueError("give the join keys: `on`, or `left_on` + `right_on` of the same length")
        return self


class LabelSpec(Strict):
    """The training target: an existing column, or an expression such as ``arr_delay > 15``.

    With ``join``, the column or the expression's columns come from another table matched by
    key (e.g. outcomes recorded after the fact). Columns the label is computed from are never used
    as features (that would leak the target). Rows whose label is missing are dropped and counted
    in the manifest.
    """

    column: str | None = None
    expr: str | None = None
    join: LabelJoin | None = None

    @field_validator("expr")
    @classmethod
    def _check_expr(cls, expr):
        return None if expr is None else check_expression(expr)

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.column is None) == (self.expr is None):
            raise ValueError("give exactly one of `column` or `expr`")
        return self


class SplitSpec(Strict):
    """Which rows train, validate and test the model.

    ``by: random`` (the default): a row goes to a side by a hash of its ``key`` columns (default:
    every source column) and ``seed``, so the same row lands on the same side on every run,
    whatever the partitioning or order of the files. ``by: group``: the hash of the group ``key``
    alone, so every row of a group (a customer, an aircraft) lands on the same side. ``by: time``:
    rows before ``valid_from`` train, rows from ``valid_from`` validate, rows from ``test_from``
    test (or ``valid_fraction`` / ``test_fraction`` of the time range of ``column``).

    Validation rows drive early stopping; test rows (``test_fraction`` or ``test_from``) are never
    seen by training, early stopping or any fitted statistic and are reported apart. ``folds: k``
    cross-validates: k models on the training rows (by time: an expanding window), then the model
    of all training rows is saved (``fold_models: true`` saves the fold models too).
    """

    by: Literal["random", "time", "group"] = "random"
    #: Default 0.2, or the folds' share with ``folds``.
    valid_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    test_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    seed: int = 0
    #: ``by: random``: the columns hashed (default: every source column); ``by: group``: the group.
    key: list[str] | None = Field(default=None, min_length=1)
    #: ``by: time``: the date-time column.
    column: str | None = None
    valid_from: str | None = None
    test_from: str | None = None
    folds: int | None = Field(default=None, ge=2, le=20)
    fold_models: bool = False

    @field_validator("valid_from", "test_from", mode="before")
    @classmethod
    def _timestamp(cls, value, info):
        if value is None:
            return None
        text = value.isoformat() if isinstance(value, dt.date) else str(value)
        try:
            dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{info.field_name}: {text!r} is not a date or date-time; write it as ISO 8601, e.g. 2013-10-01"
                " or 2013-10-01T06:00:00+00:00"
            ) from None
        return text

    @model_validator(mode="after")
    def _consistent(self):
        given = [k for k in ("column", "valid_from", "test_from") if getattr(self, k) is not None]
        if self.by != "time" and given:
            raise ValueError(f"{given} only apply to `by: time`")
        if self.by == "group" and not self.key:
            raise ValueError("`by: group` needs the group columns: `key: [customer_id]`")
        if self.by == "time":
            if self.column is None:
                raise ValueError("`by: time` needs the date-time `column` to split on")
            if self.key is not None:
                raise ValueError("`key` does not apply to `by: time` (the time `column` decides the side)")
            if self.valid_from is not None and self.valid_fraction is not None:
                raise ValueError("give `valid_from` or `valid_fraction`, not both")
            if self.test_from is not None and self.test_fraction:
                raise ValueError("give `test_from` or `test_fraction`, not both")
            if self.valid_from and self.test_from and _instant(self.valid_from) >= _instant(self.test_from):
                raise ValueError(f"`valid_from` ({self.valid_from}) must be before `test_from` ({self.test_from})")
        if self.folds is not None:
            if self.valid_fraction is not None or self.valid_from is not None:
                raise ValueError(
                    "with `folds` the folds are the validation rows: leave out `valid_fraction`/`valid_from`"
                )
        elif self.valid_from is None and self.valid_fraction is None:
            self.valid_fraction = 0.2
        if (self.valid_fraction or 0.0) + self.test_fraction >= 1.0:
            raise ValueError(
                f"`valid_fraction` ({self.valid_fraction}) and `test_fraction` ({self.test_fraction}) add up to"
                " 1 or more: no rows would be left to train on"
            )
        if self.fold_models and self.folds is None:
            raise ValueError("`fold_models` needs `folds`")
        return self

    @property
    def has_test(self) -> bool:
        return self.test_fraction > 0 or self.test_from is not None

    @property
    def needs_range(self) -> bool:
        """A time split by fractions of the time range (or by time folds): the range is measured."""
        return self.by == "time" and (
            self.valid_from is None and self.folds is None or self.test_fraction > 0 or self.folds is not None
        )


def _instant(text: str) -> dt.datetime:
    """An ISO date-time comparable with any other (naive ones read as UTC)."""
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


#: ``train.checkpoint_every`` unless set. Measured (``python -m benchmarks.checkpoint --rows 2e5
#: --repeat 3``, 100 rounds): training took 1.095x as long with a checkpoint every round, 1.030x
#: every 5, 0.995x every 10 (within the noise of +-10%); a restart repeats at most this many rounds.
CHECKPOINT_EVERY = 10

#: The ``train`` settings that change how training survives faults, not what it computes.
RESILIENCE = ("checkpoint_every", "max_restarts", "restart_wait", "collective_timeout")
#: The ``train`` settings that choose where the rows are held while training (the same model, up
#: to the bins of XGBoost's sketch, which merges per-worker sketches across workers).
MEMORY = ("memory", "scratch", "layout")
#: Settings of each section that change how a job runs, not what it computes: left out of the
#: spec's digest, so changing one does not make an unchanged job run again.
NOT_COMPUTED = {"train": (*RESILIENCE, *MEMORY), "cluster": ("persist",)}
#: Settings added after specs were first digested, left out of the digest at their default so
#: that adding them changed no existing job's digest.
LATER_DEFAULTS = {"train": {"device": "cpu"}}


class TrainSpec(Strict):
    """Distributed XGBoost settings. ``params`` go to XGBoost unchanged.

    ``eval_metric`` is evaluated on the validation rows every round (the last metric drives early
    stopping) and, with ``eval_train`` (the default), on the training rows too, which gives the
    full learning curve but costs time on large data (AUC sorts every round).
    """

    objective: str = "binary:logistic"
    num_boost_round: int = Field(default=100, ge=1)
    early_stopping_rounds: int | None = Field(default=10, ge=1)
    eval_metric: list[str] = Field(default_factory=list)
    eval_train: bool = True
    params: dict[str, Any] = Field(default_factory=dict)
    features: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    #: A checkpoint every this many rounds (written by rank 0 as UBJ into the run's staging
    #: output), where training goes on from after a lost worker; ``null``: none (a restart trains
    #: from the first round).
    checkpoint_every: int | None = Field(default=CHECKPOINT_EVERY, ge=1)
    #: How many times training goes on after losing a worker before the run fails (0: never).
    max_restarts: int = Field(default=2, ge=0)
    #: Seconds a restart waits for the cluster to have as many workers as before; it then goes on
    #: with the workers it has.
    restart_wait: float = Field(default=30.0, ge=0)
    #: Seconds one of XGBoost's collective operations may wait for the other workers before the
    #: training call fails (a worker that hangs rather than dies; XGBoost's own default is longer).
    collective_timeout: int = Field(default=600, ge=1)
    #: Where XGBoost trains: ``cuda`` checks every worker for a GPU and XGBoost's CUDA build
    #: before the job reads anything (:mod:`dpipe.device`); the saved model predicts on any device.
    device: Literal["cpu", "cuda"] = "cpu"
    #: Where the transformed rows are while XGBoost trains: ``memory`` (placed on the workers,
    #: ``xgboost.dask``), ``external`` (written to disk as shards, XGBoost's external-memory
    #: matrices on every worker: data larger than the workers' memory; :mod:`dpipe.external`), or
    #: ``auto``: external when training in memory would take more than 60% of the workers' memory
    #: past what they hold idle.
    memory: Literal["auto", "memory", "external"] = "auto"
    #: The directory the shards of external-memory training go to, which every worker must read
    #: (default: Dask's ``temporary-directory``, else the system's; removed after the run).
    scratch: str | None = None
    #: Which workers XGBoost trains on (:mod:`dpipe.layout`): ``all`` (each worker holding rows,
    #: ``xgboost.dask``'s way) or ``one`` (the rows copied onto one worker, which trains with every
    #: thread of its host; no all-reduce between workers).
    layout: Literal["all", "one"] = "all"

    @field_validator("params")
    @classmethod
    def _no_duplicated_settings(cls, params):
        for key in ("objective", "eval_metric", "num_boost_round", "n_estimators", "device"):
            if key in params:
                raise ValueError(f"set `train.{key}` instead of `train.params.{key}`")
        return params


class ReportSpec(Strict):
    """What the bundle's evaluation (``evaluation.json``) and ``report.html`` show.

    ``slices`` are columns of the transformed rows (a categorical feature, an id or any column the
    ops keep) whose values get metrics of their own; ``threshold`` makes a classifier's confusion
    matrix and threshold metrics.
    """

    slices: list[str] = Field(default_factory=list)
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    #: Write ``report.html`` into the bundle (``evaluation.json`` is always written).
    html: bool = True


class OutputSpec(Strict):
    """Where the model bundle goes (any fsspec URL)."""

    uri: str = Field(min_length=1)
    overwrite: bool = True
    valid_predictions: bool = False
    #: Write ``test_predictions/`` (id columns, label, prediction of the test rows) into the bundle.
    test_predictions: bool = False
    storage_options: dict[str, Any] = Field(default_factory=dict)


class SecuritySpec(Strict):
    """TLS to an existing scheduler (Dask's ``distributed.Security``): the CA that signed the
    cluster's certificates, and this client's certificate and key (one PEM may hold both)."""

    tls_ca_file: str = Field(min_length=1)
    tls_cert: str = Field(min_length=1)
    tls_key: str | None = None
    #: Refuse an unencrypted connection (a ``tcp://`` address).
    require_encryption: bool = True


class ClusterSpec(Strict):
    """An existing scheduler's ``address`` (with ``security`` for TLS), or the shape of the
    embedded LocalCluster."""

    address: str | None = None
    security: SecuritySpec | None = None
    timeout: float = Field(default=10.0, gt=0, description="seconds to wait for the scheduler at `address`")
    n_workers: int | None = Field(default=None, ge=1)
    threads_per_worker: int | None = Field(default=None, ge=1)
    memory_limit: str | int | None = None
    processes: bool = True
    dashboard_address: str | None = ":0"
    #: Keep the rows a job reads in worker memory for its passes after the first (quality
    #: pre-pass, fit phases, the load): ``auto`` when their estimated size is within a quarter of
    #: the workers' memory limit (:mod:`dpipe.keep`), ``always`` or ``never``.
    persist: Literal["auto", "always", "never"] = "auto"

    @model_validator(mode="after")
    def _address_or_local(self):
        local = [k for k in ("n_workers", "threads_per_worker", "memory_limit") if getattr(self, k) is not None]
        if self.address and local:
            raise ValueError(f"{local} only apply to the embedded LocalCluster, not with `address`")
        tls = self.security is not None and self.security.require_encryption
        if tls and self.address is not None and self.address.startswith("tcp://"):
            raise ValueError(
                f"`security` encrypts the connection, but `address` {self.address!r} is plain tcp://:"
                " write it as tls://HOST:PORT"
            )
        return self


class JobSpec(Strict):
    """A whole job. Build it from YAML with :func:`dpipe.load_job` or directly in Python.

    Examples
    --------
    >>> job = JobSpec(
    ...     name="demo",
    ...     source={"uri": "data/demo/events"},
    ...     label={"column": "converted"},
    ...     output={"uri": "runs/demo"},
    ... )
    """

    kind: Literal["train"] = "train"
    name: str = Field(default="job", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    source: SourceSpec
    id_columns: list[str] = Field(default_factory=list)
    features: list[OpSpec] = Field(default_factory=list)  # type: ignore[valid-type]  # built from the op table
    label: LabelSpec
    split: SplitSpec = Field(default_factory=SplitSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    output: OutputSpec
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    checks: list[CheckSpec] = Field(default_factory=list)
    quarantine: QuarantineSpec | None = Field(default=None, validate_default=True)
    #: New-data-only runs (``incremental: true``, or ``dpipe run --incremental``).
    incremental: TrainIncrementalSpec = Field(default_factory=lambda: TrainIncrementalSpec(enabled=False))
    #: Where the run's OpenLineage events go (default: JSON files in ``$DPIPE_HOME/openlineage``).
    lineage: LineageSpec = Field(default_factory=LineageSpec)
    #: The evaluation and ``report.html`` written into the bundle.
    report: ReportSpec = Field(default_factory=ReportSpec)
    #: When new data has drifted from this model's (``dpipe monitor``).
    monitor: MonitorSpec = Field(default_factory=MonitorSpec)
    #: The model registry the bundle is registered in (``registry.name``) and promoted through.
    registry: RegistrySpec | None = None
    #: A hyperparameter search over ``train.params`` on the placed rows (Optuna).
    tune: TuneSpec | None = None

    @field_validator("checks")
    @classmethod
    def _unique_check_names(cls, checks):
        return check_names_unique(checks)

    @model_validator(mode="after")
    def _external_memory(self):
        if self.train.memory != "external":
            return self
        if self.split.folds is not None:
            raise ValueError(
                "train.memory: external trains one model on the validation side; `split.folds` is not supported with it (use `memory: memory` or `auto`)"
            )
        if self.tune is not None:
            raise ValueError(
                "train.memory: external is not supported with `tune` (trials keep their matrices in memory); use `memory: auto`"
            )
        return self

    @model_validator(mode="after")
    def _tunable(self):
        if self.tune is None:
            return self
        if self.split.folds is not None:
            raise ValueError("tune: trials are judged on the validation side; `split.folds` leaves none")
        metric = self.tune.metric
        if metric is not None and self.train.eval_metric and metric not in self.train.eval_metric:
            raise ValueError(
                f"tune.metric: {metric!r} is not evaluated; `train.eval_metric` is {self.train.eval_metric}"
            )
        return self

    @field_validator("quarantine")
    @classmethod
    def _quarantine_configured(cls, quarantine, info):
        if quarantine is not None and quarantine.uri is not None:
            raise ValueError(
                "a training job keeps quarantined rows in its bundle: leave `quarantine.uri` out"
                " (it is for features jobs)"
            )
        wanting = [f"checks[{i}]" for i, c in enumerate(info.data.get("checks", [])) if c.action == "quarantine"]
        if wanting and quarantine is None:
            raise ValueError(
                f"{', '.join(wanting)} quarantine rows but the job has no `quarantine` section;"
                " add one, e.g. `quarantine: {max_fraction: 0.01}`"
            )
        return quarantine


class PipelineFrom(Strict):
    """A model bundle whose fitted feature pipeline a features job applies unchanged."""

    uri: str = Field(min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)


class FeaturesJobSpec(Strict):
    """A job without training: source -> quality checks -> feature ops -> a sink.

    The ops are fitted on the job's own data, or taken fitted from a bundle (``pipeline_from``) so
    a scoring or analytics consumer gets exactly the training transforms. ``columns`` selects the
    output columns (default: all). The output is committed once, with the fitted pipeline and the
    run's manifest stored with the commit (a table's commit metadata, or ``_dpipe_manifest.json``
    beside a folder's files).

    Examples
    --------
    >>> job = FeaturesJobSpec(
    ...     kind="features",
    ...     source={"uri": "data/demo/events"},
    ...     features=[{"op": "standard_scale", "columns": ["income"]}],
    ...     output={"format": "delta", "uri": "lake/features", "mode": "append"},
    ... )
    """

    kind: Literal["features"]
    name: str = Field(default="job", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    source: SourceSpec
    features: list[OpSpec] = Field(default_factory=list)  # type: ignore[valid-type]  # built from the op table
    pipeline_from: PipelineFrom | None = None
    columns: list[str] | None = Field(default=None, min_length=1)
    output: SinkSpec
    #: The commit's transaction id: a rerun with the same one commits nothing (exactly once).
    #: Default: derived from the spec and exactly what was read, which only identifies a retry for
    #: versioned sources (files, Delta, Iceberg, DuckDB files); for a live database give one that
    #: names the run, e.g. ``orders-${RUN_DATE}`` from the scheduler.
    txn: str | None = Field(default=None, min_length=1, max_length=200)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    checks: list[CheckSpec] = Field(default_factory=list)
    quarantine: QuarantineSpec | None = Field(default=None, validate_default=True)
    #: New-data-only runs (``incremental: true``, or ``dpipe run --incremental``).
    incremental: IncrementalSpec = Field(default_factory=lambda: IncrementalSpec(enabled=False))
    #: Where the run's OpenLineage events go (default: JSON files in ``$DPIPE_HOME/openlineage``).
    lineage: LineageSpec = Field(default_factory=LineageSpec)

    @field_validator("pipeline_from", mode="before")
    @classmethod
    def _uri_alone(cls, value):
        return {"uri": value} if isinstance(value, str) else value

    @field_validator("checks")
    @classmethod
    def _unique_check_names(cls, checks):
        return check_names_unique(checks)

    @model_validator(mode="after")
    def _one_pipeline(self):
        if self.pipeline_from is not None and self.features:
            raise ValueError(
                "give either `features` (fitted on this job's data) or `pipeline_from` (a bundle's fitted ops), not both"
            )
        wanting = [f"checks[{i}]" for i, c in enumerate(self.checks) if c.action == "quarantine"]
        if wanting and self.quarantine is None:
            raise ValueError(
                f"{', '.join(wanting)} quarantine rows but the job has no `quarantine` section;"
                " add one, e.g. `quarantine: {uri: runs/features-quarantine, max_fraction: 0.01}`"
            )
        q = self.quarantine
        if q is not None and q.uri is None and (wanting or q.bad_files == "skip"):
            raise ValueError(
                "`quarantine.uri` is required in a features job: quarantined rows and skipped files are"
                " written there (a training job keeps them in its bundle)"
            )
        return self


#: Any job a spec file can hold, told apart by ``kind`` (``train`` when left out).
AnyJob = JobSpec | FeaturesJobSpec
