"""User-defined ops, referenced from a spec by import path (``mypkg.features:Winsorize``).

Importing the op's module is the one place the spec layer runs user code: it is needed to
validate the op's parameters when the job is loaded rather than mid-run. The check that the class
is a dpipe op imports :mod:`dpipe.ops.base` (pandas, not Dask).
"""

from __future__ import annotations

import importlib

from pydantic import Field, ValidationError, model_validator

from dpipe.spec.base import Strict


class CustomOp(Strict):
    """An op class of your own, named by import path: ``{op: "mypkg.features:Winsorize", ...}``.

    The class subclasses :class:`dpipe.ops.Op` and declares its parameters as a pydantic model
    ``Params``; every key of the entry except ``op`` is validated by it when the job is loaded.
    """

    op: str = Field(pattern=r"^[A-Za-z_][\w.]*[:.][A-Za-z_]\w*$")

    model_config = {"extra": "allow"}

    @model_validator(mode="after")
    def _params(self):
        validate_params(self.op, self.model_extra or {})
        return self

    @property
    def params(self) -> dict:
        return dict(self.model_extra or {})


def load_op_class(path: str) -> type:
    """Import ``module:Class`` (or ``module.Class``) and check it is a dpipe op.

    Examples
    --------
    >>> load_op_class("dpipe.ops.scaling:StandardScale").name
    'standard_scale'
    """
    module_name, _, class_name = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import op {path!r}: {exc}; the module must be importable on the client and on every"
            " worker (install it, or add its folder to PYTHONPATH)"
        ) from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"module {module_name!r} has no {class_name!r} (op {path!r})")
    from dpipe.ops.base import Op

    if not (isinstance(cls, type) and issubclass(cls, Op)):
        raise ValueError(f"{path!r} is not a subclass of dpipe.ops.Op")
    return cls


def validate_params(path: str, params: dict):
    """Validate the keys of a custom op entry against the op's ``Params`` model."""
    cls = load_op_class(path)
    model = getattr(cls, "Params", None)
    if model is None:
        if params:
            raise ValueError(f"op {path!r} declares no `Params` model, so it takes no keys; got {sorted(params)}")
        return None
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<op>'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        )
        # Every problem of `exc` is in the message: its traceback (pydantic internals) is noise.
        raise ValueError(f"op {path!r}: {problems}") from None
