"""Promotion: move an alias to a version only when it beats the version holding the alias.

The gate (:class:`dpipe.spec.registry.GateSpec`) names a metric, a margin and a direction; the
caller's ``scores(bundle_uri)`` gives a bundle's metrics on the gate's evaluation rows, the same
rows for the candidate and for the current holder. The decision, promoted or not, is recorded in
the journal with both scores; a promotion's decision is also stored in the alias move itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from dpipe.errors import SpecError
from dpipe.registry.refs import check_alias
from dpipe.spec.registry import GateSpec

if TYPE_CHECKING:
    from dpipe.registry.store import Registry

Scores = Callable[[str], Mapping[str, float]]
#: How many times a promotion is judged again because another writer moved the alias meanwhile.
ATTEMPTS = 50


@dataclass(frozen=True)
class Decision:
    """What :func:`promote` decided, and on what evidence."""

    name: str
    alias: str
    candidate: int
    #: The version that held the alias when the decision was taken (``None``: nobody).
    champion: int | None
    promoted: bool
    reason: str
    metric: str | None = None
    direction: str | None = None
    margin: float | None = None
    candidate_score: float | None = None
    champion_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate_spec(gate: Any) -> GateSpec | None:
    """A :class:`GateSpec` from a spec model, a dict (``{"metric": "auc", "margin": 0.002}``) or ``None``."""
    if gate is None or isinstance(gate, GateSpec):
        return gate
    try:
        return GateSpec.model_validate(gate)
    except ValidationError as exc:
        problems = [
            (".".join(map(str, e["loc"])) or "gate", e["msg"].removeprefix("Value error, "))
            for e in exc.errors(include_url=False)
        ]
        text = "; ".join(f"gate.{loc}: {msg}" for loc, msg in problems)
        raise SpecError(f"promote: invalid gate: {text}", problems=problems) from None


def judge(gate: GateSpec, candidate: float, champion: float) -> tuple[bool, str]:
    """Whether ``candidate`` beats ``champion`` by more than the gate's margin, and why (in words)."""
    gain = candidate - champion if gate.direction == "maximize" else champion - candidate
    better = "higher" if gate.direction == "maximize" else "lower"
    verdict = gain > gate.margin
    word = "beats" if verdict else "does not beat"
    return verdict, (
        f"{gate.metric} {candidate:.6g} vs {champion:.6g}: the candidate {word} the champion by more than"
        f" {gate.margin:g} ({better} is better; difference {gain:+.6g})"
    )


def promote(
    registry: Registry,
    name: str,
    version: int | str,
    alias: str = "champion",
    *,
    gate: Any = None,
    scores: Scores | None = None,
) -> Decision:
    """Move ``alias`` of ``name`` to ``version`` if it passes ``gate`` (always, without a gate).

    With a gate, ``scores(bundle_uri)`` must return the bundle's metrics on the gate's evaluation
    rows; the candidate is promoted when there is no current holder of the alias, or when its
    metric beats the holder's by more than ``margin``. The move is conditional on the alias not
    having moved since the holder was read; if another writer moved it, the candidate is judged
    again against the new holder. Each bundle is scored at most once.

    Examples
    --------
    >>> decision = promote(reg, "churn", 4, gate={"metric": "auc", "margin": 0.002}, scores=evaluate)
    >>> decision.promoted, decision.candidate_score, decision.champion_score
    (True, 0.912, 0.905)
    """
    check_alias(alias)
    spec = gate_spec(gate)
    if spec is not None and scores is None:
        raise SpecError(
            f"promote: the gate on {spec.metric!r} needs the scores of both bundles",
            hint="pass scores=callable(bundle_uri) -> {metric: value}, or no gate for an unconditional move",
        )
    candidate = registry.show(name, version)
    scored: dict[int, float] = {}

    def score(number: int) -> float:
        if number not in scored:
            assert spec is not None and scores is not None
            uri = registry.show(name, number).uri
            scored[number] = _metric(scores(uri), spec.metric, name, number)
        return scored[number]

    for _ in range(ATTEMPTS):
        head = registry.head(name, alias)
        champion = head.version if head is not None else None
        decision = _decide(spec, name, alias, candidate.number, champion, score)
        if decision.promoted:
            move = registry.move_alias(
                name, alias, candidate.number, head=head, reason="promote", decision=decision.to_dict()
            )
            if move is None:
                continue  # the alias moved while we scored: judge again against its new holder
        registry.write_journal(name, "promote", **decision.to_dict())
        return decision
    raise registry.contention(name, f"alias {alias!r}")


def _decide(
    spec: GateSpec | None, name: str, alias: str, candidate: int, champion: int | None, score: Callable[[int], float]
) -> Decision:
    decision = Decision(name, alias, candidate, champion, promoted=False, reason="")
    if champion == candidate:
        return replace(decision, reason=f"version {candidate} already holds {alias!r}")
    if spec is None:
        return replace(decision, promoted=True, reason="no gate: moved unconditionally")
    mine = score(candidate)
    decision = replace(decision, metric=spec.metric, direction=spec.direction, margin=spec.margin, candidate_score=mine)
    if champion is None:
        return replace(decision, promoted=True, reason=f"no version holds {alias!r} yet")
    theirs = score(champion)
    promoted, reason = judge(spec, mine, theirs)
    return replace(decision, promoted=promoted, reason=reason, champion_score=theirs)


def _metric(values: Mapping[str, float], metric: str, name: str, number: int) -> float:
    if not isinstance(values, Mapping) or metric not in values:
        got = sorted(values) if isinstance(values, Mapping) else type(values).__name__
        raise SpecError(
            f"promote: the gate's metric {metric!r} is not among the scores of {name!r} version {number}; scores: {got}",
            hint="name a metric the evaluation computes (gate.metric)",
        )
    value = float(values[metric])
    if math.isnan(value):
        raise SpecError(f"promote: {metric!r} of {name!r} version {number} is NaN; it cannot be compared")
    return value
