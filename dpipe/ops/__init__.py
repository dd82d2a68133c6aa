"""Feature ops, one family per module, looked up by the ``op`` name of their spec.

Ops of your own subclass :class:`Op` and are named in a spec by import path
(``{op: "mypkg.features:Winsorize", ...}``); see ``docs/ops.md``.
"""

from __future__ import annotations

from dpipe.ops.base import Op
from dpipe.ops.cleanup import Cast, Clip, Drop, DropMissing, FillMissing, Rename, Select
from dpipe.ops.encoding import Categorical, HashBucket, OneHot, TargetEncode
from dpipe.ops.rows import Derive, FilterRows
from dpipe.ops.scaling import MinMaxScale, RobustScale, StandardScale
from dpipe.ops.tables import Aggregate, Dedupe, Join
from dpipe.ops.transform import Bucketize, DatetimeParts, Log, Power

_OPS = (
    FillMissing, DropMissing, Cast, Clip, Rename, Select, Drop, FilterRows, Derive, Dedupe,
    DatetimeParts, Log, Power, Bucketize,
    StandardScale, MinMaxScale, RobustScale,
    Categorical, OneHot, HashBucket, TargetEncode,
    Join, Aggregate,
)  # fmt: skip

#: op name -> implementation.
REGISTRY: dict[str, type[Op]] = {cls.name: cls for cls in _OPS}


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


__all__ = [
    "REGISTRY", "Aggregate", "Bucketize", "Cast", "Categorical", "Clip", "DatetimeParts", "Dedupe", "Derive", "Drop",
    "DropMissing", "FillMissing", "FilterRows", "HashBucket", "Join", "Log", "MinMaxScale", "OneHot", "Op", "Power",
    "Rename", "RobustScale", "Select", "StandardScale", "TargetEncode", "build_op", "spec_dict",
]  # fmt: skip
