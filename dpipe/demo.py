"""Deterministic synthetic demo data: a customer-conversion table, Hive-partitioned by date.

The label depends non-linearly on numeric and categorical columns, some values are missing, and
``country`` has a long tail of rare values, so every feature op of the quickstart job matters.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dpipe.io.fs import resolve, storage_errors

COUNTRIES = ["US", "GB", "DE", "FR", "NL", "ES", "IT", "SE", "PL", "BR", "IN", "JP", "CA", "AU", "MX"]
DEVICES = ["mobile", "desktop", "tablet"]
PLANS = ["free", "basic", "pro", "team"]


def make_events(rows: int, *, days: int = 10, seed: int = 0, start: str = "2024-01-01") -> dict[str, pa.Table]:
    """Return ``{date: table}`` with ``rows`` rows spread evenly over ``days`` dates."""
    rng = np.random.default_rng(seed)
    n = rows
    age = rng.normal(40, 12, n).clip(18, 90).round()
    income = np.exp(rng.normal(10.5, 0.6, n)).round(2)
    sessions = rng.poisson(6, n).astype("int64")
    tenure = rng.exponential(300, n).round()
    pages = rng.gamma(2.0, 3.0, n).round(1)
    # Zipf-like country popularity: a few big markets and a tail of rare ones.
    weights = 1.0 / np.arange(1, len(COUNTRIES) + 1) ** 1.3
    country = rng.choice(COUNTRIES, n, p=weights / weights.sum())
    device = rng.choice(DEVICES, n, p=[0.6, 0.3, 0.1])
    plan = rng.choice(PLANS, n, p=[0.5, 0.25, 0.2, 0.05])

    country_effect = {c: e for c, e in zip(COUNTRIES, rng.normal(0, 0.6, len(COUNTRIES)))}
    plan_effect = {"free": -0.8, "basic": 0.0, "pro": 0.7, "team": 1.2}
    logit = (
        -1.0
        + 0.04 * (age - 40)
        - 0.0008 * (age - 40) ** 2
        + 0.9 * np.tanh((np.log(income) - 10.5) * 2)
        + 0.25 * np.sqrt(sessions)
        - 0.0015 * tenure
        + np.where(device == "desktop", 0.5, np.where(device == "tablet", -0.3, 0.0))
        + np.vectorize(country_effect.get)(country)
        + np.vectorize(plan_effect.get)(plan)
        + 0.08 * pages * (device == "mobile")
    )
    converted = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int8")

    def with_nulls(values, frac):
        mask = rng.random(n) < frac
        return pa.array(values, mask=mask)

    table = pa.table(
        {
            "event_id": pa.array(np.arange(n, dtype="int64")),
            "age": with_nulls(age, 0.05),
            "income": with_nulls(income, 0.03),
            "sessions": pa.array(sessions),
            "tenure_days": with_nulls(tenure, 0.02),
            "pages_per_session": pa.array(pages),
            "country": with_nulls(country.astype(object), 0.01).cast(pa.string()),
            "device": pa.array(device.astype(object), pa.string()),
            "plan": pa.array(plan.astype(object), pa.string()),
            "converted": pa.array(converted),
        }
    )
    first = dt.date.fromisoformat(start)
    day_of_row = np.arange(n) * days // max(n, 1)
    return {
        (first + dt.timedelta(days=int(d))).isoformat(): table.filter(pa.array(day_of_row == d))
        for d in range(days)
    }


def write_demo_data(
    uri: str, *, rows: int = 200_000, days: int = 10, seed: int = 0, storage_options: dict | None = None
) -> list[str]:
    """Write the demo table under ``uri/events/date=YYYY-MM-DD/part-0.parquet``; return the files.

    Examples
    --------
    >>> files = write_demo_data("data/demo", rows=50_000)
    """
    fs, root = resolve(uri, storage_options, where="demo-data")
    written = []
    with storage_errors("demo-data", uri):
        for date, table in make_events(rows, days=days, seed=seed).items():
            path = f"{root.rstrip('/')}/events/date={date}/part-0.parquet"
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with fs.open(path, "wb") as f:
                pq.write_table(table, f)
            written.append(path)
    return written
