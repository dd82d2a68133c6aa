"""Spec models of the feature ops, and the one table of built-in ops.

Each entry of a job's ``features:`` is ``{op: <name>, ...params}``. The models are plain parameter
models, one module per op family as in :mod:`dpipe.ops`; :data:`BUILTIN_OPS` pairs each built-in
name with its model and the import path of its implementation, which is imported only when the op
is built (as fsspec's ``known_implementations`` names filesystem classes). So ``dpipe validate``
checks a spec without importing Dask or pandas, and :data:`dpipe.ops.REGISTRY` derives from the
same table.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple, Union

from pydantic import Discriminator, Tag

from dpipe.spec.base import Strict
from dpipe.spec.custom import CustomOp
from dpipe.spec.features.cleanup import CAST_TYPES, Cast, Clip, Drop, DropMissing, FillMissing, Rename, Select
from dpipe.spec.features.encoding import Categorical, HashBucket, OneHot, TargetEncode
from dpipe.spec.features.rows import Derive, FilterRows
from dpipe.spec.features.scaling import MinMaxScale, RobustScale, StandardScale
from dpipe.spec.features.tables import AGGREGATIONS, Aggregate, Dedupe, Join
from dpipe.spec.features.transform import DATETIME_PARTS, Bucketize, DatetimeParts, Log, Power


class BuiltinOp(NamedTuple):
    """A built-in op: the model of its spec entry and its implementation's ``module:Class`` path."""

    model: type[Strict]
    implementation: str


#: Built-in op name (a spec's ``op``) -> spec model and implementation; the single source of truth.
BUILTIN_OPS: dict[str, BuiltinOp] = {
    "fill_missing": BuiltinOp(FillMissing, "dpipe.ops.cleanup:FillMissing"),
    "drop_missing": BuiltinOp(DropMissing, "dpipe.ops.cleanup:DropMissing"),
    "cast": BuiltinOp(Cast, "dpipe.ops.cleanup:Cast"),
    "clip": BuiltinOp(Clip, "dpipe.ops.cleanup:Clip"),
    "rename": BuiltinOp(Rename, "dpipe.ops.cleanup:Rename"),
    "select": BuiltinOp(Select, "dpipe.ops.cleanup:Select"),
    "drop": BuiltinOp(Drop, "dpipe.ops.cleanup:Drop"),
    "filter": BuiltinOp(FilterRows, "dpipe.ops.rows:FilterRows"),
    "derive": BuiltinOp(Derive, "dpipe.ops.rows:Derive"),
    "dedupe": BuiltinOp(Dedupe, "dpipe.ops.tables:Dedupe"),
    "datetime_parts": BuiltinOp(DatetimeParts, "dpipe.ops.transform:DatetimeParts"),
    "log": BuiltinOp(Log, "dpipe.ops.transform:Log"),
    "power": BuiltinOp(Power, "dpipe.ops.transform:Power"),
    "bucketize": BuiltinOp(Bucketize, "dpipe.ops.transform:Bucketize"),
    "standard_scale": BuiltinOp(StandardScale, "dpipe.ops.scaling:StandardScale"),
    "minmax_scale": BuiltinOp(MinMaxScale, "dpipe.ops.scaling:MinMaxScale"),
    "robust_scale": BuiltinOp(RobustScale, "dpipe.ops.scaling:RobustScale"),
    "categorical": BuiltinOp(Categorical, "dpipe.ops.encoding:Categorical"),
    "one_hot": BuiltinOp(OneHot, "dpipe.ops.encoding:OneHot"),
    "hash_bucket": BuiltinOp(HashBucket, "dpipe.ops.encoding:HashBucket"),
    "target_encode": BuiltinOp(TargetEncode, "dpipe.ops.target:TargetEncode"),
    "join": BuiltinOp(Join, "dpipe.ops.tables:Join"),
    "aggregate": BuiltinOp(Aggregate, "dpipe.ops.tables:Aggregate"),
}

#: Spec model of each built-in op, by the name written in a spec's ``op`` field.
OP_MODELS: dict[str, type[Strict]] = {name: entry.model for name, entry in BUILTIN_OPS.items()}
OP_NAMES = tuple(OP_MODELS)
CUSTOM_TAG = "custom"


def _op_tag(value) -> str | None:
    op = value.get("op") if isinstance(value, dict) else getattr(value, "op", None)
    if op is None or (isinstance(op, str) and op in OP_MODELS):
        return op
    if isinstance(op, str) and ("." in op or ":" in op):
        return CUSTOM_TAG
    return str(op)


_TAGGED = tuple(Annotated[model, Tag(name)] for name, model in OP_MODELS.items())
# A Union built at run time from the op table has no static form: mypy sees OpSpec as Any.
OpSpec = Annotated[  # type: ignore[valid-type]
    Union.__getitem__((*_TAGGED, Annotated[CustomOp, Tag(CUSTOM_TAG)])),
    Discriminator(_op_tag),
]

__all__ = [
    "AGGREGATIONS", "BUILTIN_OPS", "CAST_TYPES", "CUSTOM_TAG", "DATETIME_PARTS", "OP_MODELS", "OP_NAMES",
    "Aggregate", "BuiltinOp", "Bucketize", "Cast", "Categorical", "Clip", "CustomOp", "DatetimeParts", "Dedupe",
    "Derive", "Drop", "DropMissing", "FillMissing", "FilterRows", "HashBucket", "Join", "Log", "MinMaxScale",
    "OneHot", "OpSpec", "Power", "Rename", "RobustScale", "Select", "StandardScale", "TargetEncode",
]  # fmt: skip
