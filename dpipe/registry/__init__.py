"""The model registry: named, immutable versions of bundles, aliases that move, promotion gates.

- :class:`Registry` (:mod:`~dpipe.registry.store`): ``register``, ``versions``, ``names``,
  ``show``, ``set_alias``, ``resolve``, ``promote``, ``diff``, ``journal`` on any fsspec URL;
- :func:`resolve_model_uri`: ``models:/churn@champion`` -> the bundle URI to load;
- :mod:`~dpipe.registry.gate`: promotion decisions; :mod:`~dpipe.registry.diff`: version diffs;
  :mod:`~dpipe.io.atomic`: the exclusive create everything rests on.

See ``docs/registry.md``.

Examples
--------
>>> from dpipe.registry import Registry, resolve_model_uri
>>> reg = Registry("s3://ml/registry")
>>> v = reg.register("runs/churn", "churn", aliases=["challenger"])
>>> resolve_model_uri("models:/churn@challenger", registry="s3://ml/registry") == v.uri
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dpipe.lazy import lazy_names
from dpipe.registry.refs import REGISTRY_VARIABLE, ModelRef, is_model_uri, parse_model_uri, registry_uri

if TYPE_CHECKING:
    from dpipe.registry.gate import Decision
    from dpipe.registry.store import AliasMove, Registry, Version

#: Imported when first used: the CLI builds the `registry` commands' parsers from this package,
#: and the store and the gate import the bundle, XGBoost and Dask.
_LAZY = {
    "Decision": "dpipe.registry.gate",
    "AliasMove": "dpipe.registry.store",
    "Registry": "dpipe.registry.store",
    "Version": "dpipe.registry.store",
}


__getattr__ = lazy_names(__name__, _LAZY)


def resolve_model_uri(
    uri: str, registry: str | Registry | None = None, *, storage_options: dict[str, Any] | None = None
) -> str:
    """The bundle URI a ``models:/`` URI names; any other URI is returned as it is.

    ``registry`` is a :class:`Registry` or its URL (with ``storage_options``); by default the URL
    in ``$DPIPE_REGISTRY``.

    Examples
    --------
    >>> resolve_model_uri("models:/churn@champion", registry="s3://ml/registry")
    's3://ml/registry/churn/versions/3'
    >>> resolve_model_uri("runs/churn")
    'runs/churn'
    """
    if not is_model_uri(uri):
        return uri
    from dpipe.registry.store import Registry

    if not isinstance(registry, Registry):
        registry = Registry(registry_uri(registry, where=f"model URI {uri!r}"), storage_options)
    return registry.resolve(uri)


__all__ = [
    "REGISTRY_VARIABLE",
    "AliasMove",
    "Decision",
    "ModelRef",
    "Registry",
    "Version",
    "is_model_uri",
    "parse_model_uri",
    "registry_uri",
    "resolve_model_uri",
]
