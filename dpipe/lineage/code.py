"""The code of a pipeline: which custom ops it runs, from which distribution and version."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any

__all__ = ["code_lineage"]


def code_lineage(ops: Iterable[Any]) -> dict[str, Any]:
    """The custom ops of a pipeline by import path, with the distribution and version they come from.

    ``ops`` are :class:`~dpipe.ops.Op` objects or spec entries (``{op: "mypkg.features:Winsorize"}``);
    built-in ops are not listed. An op whose module is not part of an installed distribution
    (a folder on ``PYTHONPATH``) has ``package`` and ``version`` ``None``.

    Examples
    --------
    >>> code_lineage(pipeline.ops)
    {'custom_ops': [{'op': 'mypkg.features:Winsorize', 'package': 'mypkg', 'version': '1.2.0'}]}
    """
    found: dict[str, dict[str, Any]] = {}
    distributions: Mapping[str, list[str]] | None = None
    for op in ops:
        path = _import_path(op)
        if path is None or path in found:
            continue
        if distributions is None:
            distributions = metadata.packages_distributions()
        top = path.replace(":", ".").split(".")[0]
        package = next(iter(distributions.get(top) or []), None)
        version = None
        if package is not None:
            try:
                version = metadata.version(package)
            except metadata.PackageNotFoundError:
                version = None
        found[path] = {"op": path, "package": package, "version": version}
    return {"custom_ops": list(found.values())}


def _import_path(op: Any) -> str | None:
    """``module:Class`` of a custom op (an Op object or a spec entry); ``None`` for a built-in one."""
    named = op.get("op") if isinstance(op, Mapping) else getattr(op, "op", None)
    if isinstance(named, str):  # a spec entry: built-in ops are plain names
        return named if (":" in named or "." in named) else None
    cls = type(op)
    if cls.__module__ == "dpipe" or cls.__module__.startswith("dpipe."):
        return None
    return f"{cls.__module__}:{cls.__qualname__}"
