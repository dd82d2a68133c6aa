"""Feature ops, one family per module, looked up by the ``op`` name of their spec."""

from __future__ import annotations

from dpipe.ops.base import Op
from dpipe.ops.cleanup import FillMissing
from dpipe.ops.encoding import Categorical
from dpipe.ops.rows import Derive, FilterRows
from dpipe.ops.scaling import StandardScale

#: op name -> implementation.
REGISTRY: dict[str, type[Op]] = {
    cls.name: cls for cls in (FillMissing, FilterRows, Derive, StandardScale, Categorical)
}


def build_op(spec, where: str) -> Op:
    """Instantiate the op for one validated ``features[i]`` spec entry."""
    return REGISTRY[spec.op](spec, where)


__all__ = ["REGISTRY", "Categorical", "Derive", "FillMissing", "FilterRows", "Op", "StandardScale", "build_op"]
