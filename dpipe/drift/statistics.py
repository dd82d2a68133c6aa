"""Drift statistics of a batch's counts against a profile: PSI, Jensen-Shannon, KS, rates."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from dpipe.drift.counts import EXAMPLES, SEP, count_key

#: The fraction an empty bin counts as in PSI (and only there).
EPSILON = 1e-4


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two distributions (fractions); empty bins count as :data:`EPSILON`."""
    r = np.maximum(np.asarray(reference, dtype="float64"), EPSILON)
    c = np.maximum(np.asarray(current, dtype="float64"), EPSILON)
    return float(((c - r) * np.log(c / r)).sum())


def js_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two distributions (normalised here)."""
    p = np.asarray(reference, dtype="float64")
    q = np.asarray(current, dtype="float64")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float((a[mask] * np.log2(a[mask] / m[mask])).sum())

    return float(math.sqrt(max(0.0, (kl(p) + kl(q)) / 2)))


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    """The largest difference of two CDFs given by fractions on the same bins (at the bin edges)."""
    r = np.cumsum(reference) / np.sum(reference)
    c = np.cumsum(current) / np.sum(current)
    return float(np.abs(r - c).max())


def _decode(counts: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, list[tuple[str, int]]]]:
    dense: dict[str, np.ndarray] = {}
    examples: dict[str, list[tuple[str, int]]] = {}
    for key, group in counts.groupby("key", sort=False):
        if str(key).endswith(SEP + "example"):
            top = group.groupby("value")["n"].sum().sort_values(ascending=False, kind="stable").head(EXAMPLES)
            examples[str(key)] = [(str(v), int(n)) for v, n in top.items()]
        else:
            group = group.sort_values("i")
            dense[str(key)] = group["n"].to_numpy(dtype="float64")
    return dense, examples


def compare(profile: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """Drift statistics of a batch (the computed :func:`current_measures`) against a profile.

    Returns a JSON-able dict: ``rows``, ``features`` (per feature ``psi``, ``js``, ``ks``,
    ``missing_rate``, ``missing_rate_change``, ``unseen_rate`` and ``unseen_examples``),
    ``prediction`` (per column, and the ``worst``), ``labels`` (the summed sums, for
    :func:`metrics`) and ``worst`` (the feature of the largest PSI).
    """
    dense, examples = _decode(current["counts"])
    rows = int(dense.get(count_key("rows", "", "rows"), np.zeros(1))[0])
    features = {name: _compare_one("feature", name, ref, dense, examples) for name, ref in profile["features"].items()}
    out: dict[str, Any] = {"rows": rows, "reference_rows": profile.get("rows"), "features": features}
    reference = (profile.get("prediction") or {}).get("columns", {})
    columns = {
        c: _compare_one("prediction", c, ref, dense, examples)
        for c, ref in reference.items()
        if count_key("prediction", c, "bins") in dense
    }
    out["prediction"] = {"columns": columns, "worst": _worst(columns)} if columns else None
    labels = {
        key.split(SEP)[2]: v.tolist() for key, v in dense.items() if key.startswith("labels" + SEP)
    }  # field -> sums
    family = next((key.split(SEP)[1] for key in dense if key.startswith("labels" + SEP)), None)
    out["labels"] = {"family": family, "sums": labels} if family else None
    out["worst"] = _worst(features)
    return out


def _worst(table: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    scored = [(v["psi"], k) for k, v in table.items() if v.get("psi") is not None]
    if not scored:
        return None
    value, name = max(scored)
    return {"name": name, "psi": value}


def _compare_one(
    group: str,
    name: str,
    ref: Mapping[str, Any],
    dense: Mapping[str, np.ndarray],
    examples: Mapping[str, list[tuple[str, int]]],
) -> dict[str, Any]:
    field = "bins" if ref["kind"] == "numeric" else "categories"
    counts = dense.get(count_key(group, name, field))
    missing = float(dense.get(count_key(group, name, "missing"), np.zeros(1))[0])
    result: dict[str, Any] = {
        "kind": ref["kind"],
        "psi": None,
        "js": None,
        "ks": None,
        "missing_rate": None,
        "reference_missing_rate": ref["missing_rate"],
        "missing_rate_change": None,
    }
    if ref["kind"] == "categorical":
        result.update(unseen_rate=None, unseen_examples=[])
    if counts is None:
        return result
    total = counts.sum() + missing
    if total == 0:
        return result
    rate = missing / total
    ref_dist = np.append(np.asarray(ref["fractions"]) * (1 - ref["missing_rate"]), ref["missing_rate"])
    cur_dist = np.append(counts / total, rate)
    result.update(
        psi=psi(ref_dist, cur_dist),
        js=js_distance(ref_dist, cur_dist) if ref_dist.sum() > 0 else None,
        missing_rate=rate,
        missing_rate_change=rate - ref["missing_rate"],
    )
    if ref["kind"] == "numeric":
        fine = dense.get(count_key(group, name, "ks"))
        if fine is not None and fine.sum() > 0 and sum(ref["ks_fractions"]) > 0:
            result["ks"] = ks_statistic(np.asarray(ref["ks_fractions"]), fine)
    else:
        unseen = dense.get(count_key(group, name, "unseen"))
        if unseen is not None:
            result["unseen_rate"] = float(unseen[0] / total)
            result["unseen_examples"] = [
                {"value": v, "rows": n} for v, n in examples.get(count_key(group, name, "example"), [])
            ]
    return result
