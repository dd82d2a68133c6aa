"""The ``tune:`` section: a search over ``train.params``, driven by Optuna on placed data.

::

    tune:
      space:
        eta: {low: 0.01, high: 0.3, log: true}
        max_depth: {low: 3, high: 10}          # an integer parameter: integer values
        subsample: {low: 0.5, high: 1.0}
        grow_policy: {choices: [depthwise, lossguide]}
      metric: auc            # default: the last eval metric (the one early stopping watches)
      direction: maximize    # default from the metric: auc/aucpr/map/ndcg/pre maximize, others minimize
      n_trials: 20           # trials of the study in all, counting those of an interrupted tuning
      timeout: 30m           # or seconds: no trial starts after it
      pruning: {checkpoints: [0.1, 0.3]}   # fractions of num_boost_round; `pruning: false` turns it off
      seed: 0
      storage: runs/churn.tune.db          # default: beside a local output, else $DPIPE_HOME/tune/<job>.db
      study: churn-v2                      # default: the job's name and a digest of what the trials depend on

Only XGBoost's tree-booster parameters can be searched (:data:`TUNABLE`); ``max_bin`` cannot (the
quantile matrices are built once, with ``train.params.max_bin``), nor the objective, the metrics or
the number of rounds (:data:`REFUSED` says why for each). Imports neither Dask nor Optuna.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dpipe.spec.base import Strict
from dpipe.spec.incremental import parse_duration
from dpipe.spec.lineage import dpipe_home


# -- the parameters that can be searched -------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """A searchable XGBoost parameter: its kind and the values XGBoost accepts."""

    kind: Literal["float", "int", "choice"]
    #: The smallest value accepted, and whether it is excluded (``subsample`` must be above 0).
    minimum: float = 0.0
    open_minimum: bool = False
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def domain(self) -> str:
        if self.kind == "choice":
            return f"one of {list(self.choices)}"
        left = "(" if self.open_minimum else "["
        right = f"{self.maximum:g}]" if self.maximum is not None else "inf)"
        return f"{self.kind} in {left}{self.minimum:g}, {right}"

    def accepts(self, value: float) -> bool:
        above = value > self.minimum if self.open_minimum else value >= self.minimum
        return above and (self.maximum is None or value <= self.maximum)


_FRACTION = Param("float", 0.0, open_minimum=True, maximum=1.0)
_NON_NEGATIVE = Param("float")
#: XGBoost's tree-booster parameters (https://xgboost.readthedocs.io/en/stable/parameter.html).
TUNABLE: dict[str, Param] = {
    "eta": _NON_NEGATIVE,
    "learning_rate": _NON_NEGATIVE,
    "gamma": _NON_NEGATIVE,
    "min_split_loss": _NON_NEGATIVE,
    "max_depth": Param("int"),
    "min_child_weight": _NON_NEGATIVE,
    "max_delta_step": _NON_NEGATIVE,
    "subsample": _FRACTION,
    "sampling_method": Param("choice", choices=("uniform", "gradient_based")),
    "colsample_bytree": _FRACTION,
    "colsample_bylevel": _FRACTION,
    "colsample_bynode": _FRACTION,
    "lambda": _NON_NEGATIVE,
    "reg_lambda": _NON_NEGATIVE,
    "alpha": _NON_NEGATIVE,
    "reg_alpha": _NON_NEGATIVE,
    "scale_pos_weight": _NON_NEGATIVE,
    "grow_policy": Param("choice", choices=("depthwise", "lossguide")),
    "max_leaves": Param("int"),
    "num_parallel_tree": Param("int", 1.0),
    "max_cat_to_onehot": Param("int", 1.0),
    "max_cat_threshold": Param("int", 1.0),
}
#: Names XGBoost accepts for the same parameter: at most one of each group in a space.
ALIASES: tuple[tuple[str, str], ...] = (
    ("eta", "learning_rate"),
    ("gamma", "min_split_loss"),
    ("lambda", "reg_lambda"),
    ("alpha", "reg_alpha"),
)
#: Parameters a trial must not change, and why.
REFUSED: dict[str, str] = {
    "max_bin": "the quantile matrices are built once for every trial with `train.params.max_bin`; set it there",
    "objective": "every trial optimises `train.objective`; set it there",
    "eval_metric": "every trial is scored with `train.eval_metric`; set it there (and `tune.metric`)",
    "num_boost_round": "rounds are `train.num_boost_round` with early stopping; search `eta` instead",
    "n_estimators": "rounds are `train.num_boost_round` with early stopping; search `eta` instead",
    "early_stopping_rounds": "set `train.early_stopping_rounds`; every trial stops early the same way",
    "tree_method": "the matrices are quantile matrices: trials train with `hist`",
    "booster": "trials train tree boosters (gbtree), continued from checkpoint to checkpoint",
    "device": "trials run where the matrices were built; set `train.params.device`",
    "nthread": "a setting of the workers, not of the model; set it in `train.params`",
    "n_jobs": "a setting of the workers, not of the model; set it in `train.params`",
    "seed": "the random seed is not a hyperparameter; set `train.params.seed` (and `tune.seed` for the sampler)",
    "random_state": "the random seed is not a hyperparameter; set `train.params.seed` (and `tune.seed` for the sampler)",
}

#: Metrics (or prefixes before ``@``) where larger is better, as XGBoost's early stopping reads them.
MAXIMIZED = ("auc", "aucpr", "map", "ndcg", "pre", "interval-regression-accuracy")


def direction_of(metric: str) -> Literal["minimize", "maximize"]:
    """``maximize`` for ``auc``, ``aucpr``, ``map``, ``ndcg``, ``pre`` (and ``ndcg@5``...), else ``minimize``."""
    return "maximize" if metric.split("@")[0] in MAXIMIZED else "minimize"


# -- one dimension of the space ---------------------------------------------------------------
Choice = str | bool | int | float
_KEYS = ("low", "high", "log", "step", "type", "choices")


class Dimension(Strict):
    """A range (``low``, ``high``, ``log``, ``step``, ``type``) or ``choices`` for one parameter."""

    #: The parameter, from the key of ``space`` (not written in YAML).
    name: str = Field(default="", exclude=True)
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = Field(default=None, gt=0)
    #: Default: the parameter's own (``max_depth`` is ``int``, ``eta`` ``float``).
    type: Literal["int", "float"] | None = None
    choices: list[Choice] | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            unknown = [k for k in value if k not in (*_KEYS, "name")]
            if unknown:
                close = difflib.get_close_matches(str(unknown[0]), _KEYS, n=1)
                tip = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown key(s) {unknown}; a dimension takes {list(_KEYS)}{tip}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Dimension:
        # Messages leave the name out: their location (``tune.space.eta``) gives it.
        if self.name in REFUSED:
            raise ValueError(f"cannot be tuned: {REFUSED[self.name]}")
        param = TUNABLE.get(self.name)
        if self.name and param is None:
            close = difflib.get_close_matches(self.name, TUNABLE, n=1)
            tip = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"not a tunable XGBoost parameter{tip}; known: {sorted(TUNABLE)}")
        ranged = [k for k in ("low", "high", "step", "type") if getattr(self, k) is not None] + (
            ["log"] if self.log else []
        )
        if self.choices is not None:
            if ranged:
                raise ValueError(f"give either `choices` or a range (`low`, `high`), not both ({ranged})")
            self._check_choices(param)
        elif self.low is None or self.high is None:
            given = "neither" if self.low is None and self.high is None else "only one"
            raise ValueError(
                f"give a range `{{low: .., high: ..}}` or `choices: [..]`; got {given} of `low` and `high`"
            )
        else:
            self._check_range(param)
        return self

    def _check_choices(self, param: Param | None) -> None:
        assert self.choices is not None
        if not self.choices:
            raise ValueError("`choices` is empty; give at least one value")
        repeated = sorted({repr(c) for c in self.choices if self.choices.count(c) > 1})
        if repeated:
            raise ValueError(f"`choices` repeats {', '.join(repeated)}")
        if param is None:
            return
        if param.kind == "choice":
            bad = [c for c in self.choices if c not in param.choices]
        else:
            bad = [c for c in self.choices if not _number_for(param, c) or not param.accepts(float(c))]
        if bad:
            raise ValueError(f"choices {bad} are not valid values; XGBoost takes {param.domain()}")

    def _check_range(self, param: Param | None) -> None:
        low, high = self.low, self.high
        assert low is not None and high is not None
        if param is not None and param.kind == "choice":
            raise ValueError(f"takes {param.domain()}: give `choices`, not a range")
        if low >= high:
            what = "equals" if low == high else "is above"
            raise ValueError(
                f"empty range: low {low} {what} high {high}"
                + (f"; to fix the value, set `train.params.{self.name}`" if low == high and self.name else "")
            )
        if self.log and low <= 0:
            raise ValueError(f"`log: true` needs low above 0; got low {low}")
        if self.log and self.step is not None:
            raise ValueError("`step` and `log: true` cannot be combined")
        kind = self.type or (param.kind if param is not None else "float")
        if param is not None and param.kind == "int" and kind == "float":
            raise ValueError("an integer parameter: leave out `type` or write `type: int`")
        if kind == "int" and not (_whole(low) and _whole(high) and (self.step is None or _whole(self.step))):
            raise ValueError("an integer range needs whole-number `low`, `high` and `step`")
        if param is not None and not (param.accepts(float(low)) and param.accepts(float(high))):
            raise ValueError(f"range [{low}, {high}] leaves what XGBoost takes: {param.domain()}")

    @property
    def kind(self) -> Literal["int", "float", "choice"]:
        """How a trial samples it: ``choice``, ``int`` or ``float``."""
        if self.choices is not None:
            return "choice"
        param = TUNABLE.get(self.name)
        return self.type or ("int" if param is not None and param.kind == "int" else "float")


def _whole(x: float) -> bool:
    return float(x).is_integer()


def _number_for(param: Param, value: Choice) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return param.kind != "int" or _whole(value)


# -- pruning ----------------------------------------------------------------------------------
class PruningSpec(Strict):
    """Stop a trial at a checkpoint when its validation metric is worse than the pruner's bar.

    A trial trains up to each checkpoint (a fraction of ``train.num_boost_round``), reports its
    metric, and goes on (the same booster, on the same matrices) unless the pruner stops it.
    ``median``: worse than the median of earlier trials at that checkpoint; ``percentile``:
    outside the best ``percentile`` percent. No trial is pruned before ``startup_trials``
    trials completed.
    """

    enabled: bool = True
    checkpoints: list[float] = Field(default_factory=lambda: [0.1, 0.3], min_length=1)
    pruner: Literal["median", "percentile"] = "median"
    percentile: float = Field(default=50.0, gt=0, lt=100)
    startup_trials: int = Field(default=5, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value

    @field_validator("checkpoints")
    @classmethod
    def _fractions(cls, checkpoints: list[float]) -> list[float]:
        outside = [c for c in checkpoints if not 0 < c < 1]
        if outside:
            raise ValueError(f"checkpoints are fractions of `train.num_boost_round` between 0 and 1; got {outside}")
        if any(b <= a for a, b in zip(checkpoints, checkpoints[1:])):
            raise ValueError(f"checkpoints must increase; got {checkpoints}")
        return checkpoints

    def steps(self, num_boost_round: int) -> list[int]:
        """The checkpoints as numbers of rounds (at least 1, below ``num_boost_round``, distinct)."""
        if not self.enabled:
            return []
        rounds = {max(1, round(c * num_boost_round)) for c in self.checkpoints}
        return sorted(r for r in rounds if r < num_boost_round)


# -- the section ------------------------------------------------------------------------------
_STUDY = re.compile(r"^[A-Za-z0-9_.:-]+$")


class TuneSpec(Strict):
    """A hyperparameter search (see the module docstring for every key)."""

    space: dict[str, Dimension] = Field(min_length=1)
    #: Default: the last of the job's eval metrics.
    metric: str | None = Field(default=None, min_length=1)
    #: Default: :func:`direction_of` the metric.
    direction: Literal["minimize", "maximize"] | None = None
    n_trials: int = Field(default=20, ge=1)
    #: Seconds (or ``"30m"``, ``"2h"``) after which no new trial starts.
    timeout: float | None = Field(default=None, gt=0)
    pruning: PruningSpec = Field(default_factory=PruningSpec)
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    #: An SQLite file, or an SQLAlchemy URL (``sqlite:///...``, ``postgresql://...``).
    storage: str | None = Field(default=None, min_length=1)
    study: str | None = Field(default=None, min_length=1, max_length=200)
    #: Trials run at once (threads on the client); 1 is the measured choice (docs/tuning.md).
    parallel: int = Field(default=1, ge=1, le=64)

    @field_validator("space", mode="before")
    @classmethod
    def _named(cls, space: Any) -> Any:
        if isinstance(space, dict):
            return {k: {**v, "name": k} if isinstance(v, dict) else v for k, v in space.items()}
        return space

    @field_validator("space")
    @classmethod
    def _one_name_each(cls, space: dict[str, Dimension]) -> dict[str, Dimension]:
        both = [f"`{a}` and `{b}`" for a, b in ALIASES if a in space and b in space]
        if both:
            raise ValueError(f"{'; '.join(both)} are the same XGBoost parameter: search one of them")
        return space

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return parse_duration(value, "timeout").total_seconds()
        return value

    @field_validator("study")
    @classmethod
    def _study_name(cls, value: str | None) -> str | None:
        if value is not None and not _STUDY.match(value):
            raise ValueError(f"study names use letters, digits and `_.:-`; got {value!r}")
        return value

    def metric_for(self, metrics: list[str]) -> str:
        """The metric trials are compared on, among the job's eval ``metrics`` (in order)."""
        if not metrics:
            raise ValueError("the job evaluates no metric: set `train.eval_metric`")
        if self.metric is None:
            return metrics[-1]
        if self.metric not in metrics:
            raise ValueError(f"`tune.metric` {self.metric!r} is not one of the job's eval metrics {metrics}")
        return self.metric

    def direction_for(self, metric: str) -> Literal["minimize", "maximize"]:
        return self.direction or direction_of(metric)

    def identity(self) -> dict[str, Any]:
        """What a study's trials depend on; the budget (``n_trials``, ``timeout``, ``parallel``)
        and where it is kept are left out, so asking for more trials resumes the same study."""
        return self.model_dump(mode="json", include={"space", "metric", "direction", "pruning", "sampler", "seed"})


def is_url(uri: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri) is not None


def default_storage(job_name: str, output_uri: str) -> str:
    """Where a study is kept by default: ``<output>.tune.db`` beside a local output (so it
    outlives the output being replaced), else ``$DPIPE_HOME/tune/<job name>.db``."""
    local = output_uri.removeprefix("file://") if output_uri.startswith("file://") else output_uri
    if is_url(local):
        return os.path.join(dpipe_home(), "tune", f"{job_name}.db")
    return local.rstrip("/\\") + ".tune.db"
