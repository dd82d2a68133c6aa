"""Names of a package imported when first used (PEP 562), for packages whose modules are heavy.

The CLI builds every command's parser from its package (``dpipe.report.cli``,
``dpipe.registry.cli``), which imports the package's ``__init__``: that must not import the
bundle, XGBoost and Dask for ``dpipe --help`` or ``dpipe validate``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``names`` maps each name to the module it comes
    from, imported (and the name kept in the package) on first use."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        setattr(importlib.import_module(package), name, value)
        return value

    return __getattr__
