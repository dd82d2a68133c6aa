"""Which evaluation an objective gets, and the facts :mod:`.measure` and :mod:`.finish` share."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from dpipe.errors import SpecError

Kind = Literal["binary", "multiclass", "regression"]

#: Objective, or its family (``reg:*``) -> what kind of evaluation it gets.
OBJECTIVE_KINDS: dict[str, Kind] = {
    "binary:logistic": "binary",
    "binary:hinge": "binary",
    "multi:softprob": "multiclass",
    "multi:softmax": "multiclass",
    "reg:*": "regression",
    "count:*": "regression",
}
#: Objectives (or families) that cannot be evaluated here, and why.
REFUSED = {
    "binary:logitraw": "it predicts margins, not probabilities; train with binary:logistic",
    "rank:*": "ranking is evaluated per query group (NDCG, MAP), which this evaluation does not do",
    "survival:*": "survival objectives predict hazards or times against censored labels",
}

#: The sums each kind keeps per group of rows (``n`` is the row count).
STATS: dict[str, tuple[str, ...]] = {
    "binary": ("n", "pos", "neg", "psum", "logloss", "brier", "tp", "fp", "fn", "tn"),
    "regression": ("n", "err", "sq", "abs", "y", "y2", "p", "outside"),
    "multiclass": ("n", "correct", "logloss"),
}
#: The parts (what ``key`` means) measured per slice value too; the others only over all rows.
SLICED = {"total", "bin", "cell"}

OTHER = "(other)"
MISSING = "(missing)"
#: Residual buckets: ``|r|`` in ``[TINY * GAMMA**(k-1), TINY * GAMMA**k)`` is bucket ``±k``.
TINY, GAMMA = 1e-12, 1.02


def kind_of(objective: str) -> Kind:
    """The kind of evaluation of an XGBoost objective: ``binary``, ``multiclass`` or ``regression``.

    Raises :class:`~dpipe.errors.SpecError` for objectives whose predictions cannot be scored
    against the label row by row (ranking, survival, raw margins).

    Examples
    --------
    >>> kind_of("binary:logistic"), kind_of("reg:squarederror"), kind_of("count:poisson")
    ('binary', 'regression', 'regression')
    """
    family, colon, _ = objective.partition(":")
    for key in (objective, f"{family}:*") if colon else (objective,):
        if key in REFUSED:
            raise SpecError(
                f"evaluation: objective {objective!r} cannot be evaluated: {REFUSED[key]}",
                hint="evaluate its predictions yourself from `valid_predictions/`",
            )
        if key in OBJECTIVE_KINDS:
            return OBJECTIVE_KINDS[key]
    raise SpecError(
        f"evaluation: unknown objective {objective!r}; expected binary:*, multi:*, reg:* or count:*",
        hint="check `train.objective`",
    )


def residual_key(err: np.ndarray) -> np.ndarray:
    """Signed logarithmic bucket of each residual: 0 for ``|r| < TINY``, else ``±k``."""
    size = np.abs(err)
    k = 1 + np.floor(np.log(np.maximum(size, TINY) / TINY) / math.log(GAMMA))
    return np.where(size < TINY, 0, np.sign(err) * k).astype("int64")


def residual_value(key: np.ndarray) -> np.ndarray:
    """The middle of each residual bucket (0 for bucket 0)."""
    k = np.abs(key).astype("float64")
    middle = TINY * GAMMA ** (k - 1) * (1 + GAMMA) / 2
    return np.where(key == 0, 0.0, np.sign(key) * middle)
