"""The fit pass's collector: every consumer's lazy values, computed together, handed back by name.

A pass over the data computes the statistics of the ops fitted in it and, alongside them, what
other consumers measure on the same rows: row counts, the label distribution, data-quality
counts, join measurements. Each consumer registers its lazy values under its own name and gets
exactly those back, so nothing has to be stashed on an object between building the graph and
reading the results.

Examples
--------
>>> pass_ = Collector()
>>> pass_.register("rows", {"read": frame.map_partitions(len).sum()})
>>> pass_.register("features[0]", op.fit(frame))
>>> results = pass_.compute(dask.compute)
>>> results["rows"]["read"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

Compute = Callable[..., tuple[Any, ...]]


class Collector:
    """The lazy values of one computation, by consumer name."""

    def __init__(self) -> None:
        self._values: dict[str, dict[str, Any]] = {}

    def register(self, consumer: str, values: Mapping[str, Any]) -> None:
        """Add ``values`` (Dask collections or plain values) under ``consumer``.

        A consumer registers once per pass: registering a name twice is a programming error.
        """
        if consumer in self._values:
            raise ValueError(f"`consumer` {consumer!r} is already registered in this pass")
        self._values[consumer] = dict(values)

    def compute(self, compute: Compute) -> Collected:
        """Compute every registered value with one call of ``compute`` (none when there is nothing)."""
        keys = [(consumer, key) for consumer, values in self._values.items() for key in values]
        results = compute(*(self._values[c][k] for c, k in keys)) if keys else ()
        out: dict[str, dict[str, Any]] = {consumer: {} for consumer in self._values}
        for (consumer, key), value in zip(keys, results, strict=True):
            out[consumer][key] = value
        return Collected(out)


@dataclass(frozen=True)
class Collected(Mapping[str, Mapping[str, Any]]):
    """Computed values by consumer; a consumer that registered nothing gets an empty mapping."""

    by_consumer: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __getitem__(self, consumer: str) -> Mapping[str, Any]:
        return self.by_consumer[consumer]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_consumer)

    def __len__(self) -> int:
        return len(self.by_consumer)

    def of(self, consumer: str) -> Mapping[str, Any]:
        return self.by_consumer.get(consumer, {})
