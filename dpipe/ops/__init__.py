"""Feature ops, one family per module, looked up by the ``op`` name of their spec."""

from __future__ import annotations

from dpipe.ops.base import Op
from dpipe.ops.cleanup import Cast, Clip, Drop, DropMissing, FillMissing, Rename, Select
from dpipe.ops.encoding import Categorical, HashBucket
from dpipe.ops.rows import Derive, FilterRows
from dpipe.ops.scaling import MinMaxScale, RobustScale, StandardScale
from dpipe.ops.transform import Bucketize, DatetimeParts, Log, Power

_OPS = (
    FillMissing, DropMissing, Cast, Clip, Rename, Select, Drop, FilterRows, Derive,
    DatetimeParts, Log, Power, Bucketize,
    StandardScale, MinMaxScale, RobustScale,
    Categorical, HashBucket,
)  # fmt: skip

#: op name -> implementation.
REGISTRY: dict[str, type[Op]] = {cls.name: cls for cls in _OPS}


def build_op(spec, where: str) -> Op:
    """Instantiate the op for one validated ``features[i]`` spec entry."""
    return REGISTRY[spec.op](spec, where)


__all__ = [
    "REGISTRY", "Bucketize", "Cast", "Categorical", "Clip", "DatetimeParts", "Derive", "Drop", "DropMissing",
    "FillMissing", "FilterRows", "HashBucket", "Log", "MinMaxScale", "Op", "Power", "Rename", "RobustScale",
    "Select", "StandardScale", "build_op",
]  # fmt: skip
