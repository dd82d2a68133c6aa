"""Feature ops, one family per module, looked up by the ``op`` name of their spec.

The built-in ops are listed once, in :data:`dpipe.spec.features.BUILTIN_OPS` (name -> spec model
and ``module:Class``); :data:`REGISTRY` imports a family only when one of its ops is first used, so
``import dpipe.ops.base`` costs pandas and not Dask. Ops of your own subclass :class:`Op` and are
named in a spec by import path (``{op: "mypkg.features:Winsorize", ...}``); see ``docs/ops.md``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from dpipe.ops.base import Op
from dpipe.spec.features import BUILTIN_OPS


class Registry(Mapping[str, type[Op]]):
    """Op name -> implementation class, imported from its ``module:Class`` path on first use.

    Examples
    --------
    >>> REGISTRY["standard_scale"]
    <class 'dpipe.ops.scaling.StandardScale'>
    """

    def __init__(self, paths: Mapping[str, str]):
        self.paths = dict(paths)
        self._classes: dict[str, type[Op]] = {}

    def __getitem__(self, name: str) -> type[Op]:
        if name not in self._classes:
            from dpipe.spec.custom import load_op_class

            self._classes[name] = load_op_class(self.paths[name])
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, name: object) -> bool:
        return name in self.paths  # without importing the op's family


#: Built-in op name -> implementation, derived from :data:`dpipe.spec.features.BUILTIN_OPS`.
REGISTRY = Registry({name: entry.implementation for name, entry in BUILTIN_OPS.items()})

# The classes by their own names (`from dpipe.ops import StandardScale`), imported on access.
_BY_CLASS = {path.rpartition(":")[2]: name for name, path in REGISTRY.paths.items()}


def __getattr__(attr: str):
    if attr in _BY_CLASS:
        return REGISTRY[_BY_CLASS[attr]]
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_BY_CLASS])


def build_op(spec, where: str) -> Op:
    """Instantiate the op for one validated ``features[i]`` spec entry (built-in or custom)."""
    if spec.op in REGISTRY:
        return REGISTRY[spec.op](spec, where)
    from dpipe.spec.custom import load_op_class, validate_params

    cls = load_op_class(spec.op)
    params = validate_params(spec.op, spec.params)
    op = cls(params if params is not None else spec, where)
    op.import_path = spec.op
    return op


def spec_dict(op: Op) -> dict:
    """The JSON-able spec entry an op was built from (``op`` key included)."""
    from dpipe.spec.load import redact

    path = getattr(op, "import_path", None)
    if path is None:
        # Credentials of joined tables are never saved; prediction passes its own.
        return redact(op.spec.model_dump(mode="json", by_alias=True))
    params = op.spec.model_dump(mode="json", by_alias=True) if hasattr(op.spec, "model_dump") else {}
    params.pop("op", None)
    return redact({"op": path, **params})


__all__ = ["REGISTRY", "Op", "Registry", "build_op", "spec_dict", *sorted(_BY_CLASS)]
