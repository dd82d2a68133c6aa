"""Library versions recorded in bundles and fitted pipelines (a leaf module: imports no dpipe)."""

from __future__ import annotations

import contextlib
import importlib
import platform

LIBRARIES = ("dpipe", "dask", "distributed", "xgboost", "pandas", "pyarrow", "numpy", "fsspec", "s3fs")


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Versions of Python and of the libraries ``names`` that are installed.

    Examples
    --------
    >>> library_versions(("pandas",))
    {'python': '3.11.9', 'pandas': '3.0.6'}
    """
    versions = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(ImportError, AttributeError):
            versions[name] = importlib.import_module(name).__version__
    return versions
