"""Safe, vectorised expressions over the columns of a pandas partition.

An expression is parsed with :mod:`ast` and only a small whitelist of nodes is accepted: column
names, literals, arithmetic, comparisons, ``and``/``or``/``not``, ``x in [..]``, ``a if c else b``
and a few functions. Nothing is ever passed to Python's ``eval``. Column names that are not
identifiers are written in backticks, as in ``pandas.eval``: ```dep time` > 600``.

Parsing needs only the standard library, so specs are checked without importing pandas.
"""

from __future__ import annotations

import ast
import re
from functools import cached_property
from typing import Any

from dpipe.errors import ExpressionError

_BACKTICK = re.compile(r"`([^`]+)`")

_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a**b,
    ast.BitAnd: lambda a, b: a & b,
    ast.BitOr: lambda a, b: a | b,
}
_CMPOPS = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
}


def _np():
    import numpy as np

    return np


def _where(cond, a, b):
    import pandas as pd

    np = _np()
    cond = _as_bool(cond)
    index = next((x.index for x in (cond, a, b) if isinstance(x, pd.Series)), None)
    out = np.where(cond, _numpy(a), _numpy(b))
    return pd.Series(out, index=index) if index is not None else out


def _numpy(x):
    """Nullable numbers and booleans (``Int64``, ``boolean``) as float64 with NaN for missing:
    numpy would turn them into an object array holding ``pd.NA``."""
    import pandas as pd

    dtype = getattr(x, "dtype", None)
    nullable = isinstance(dtype, pd.api.extensions.ExtensionDtype) and pd.api.types.is_numeric_dtype(dtype)
    return x.to_numpy(dtype="float64", na_value=_np().nan) if nullable else x


def _isnull(x):
    import pandas as pd

    return pd.isna(x)


def _clip(x, lower=None, upper=None):
    return x.clip(lower, upper) if hasattr(x, "clip") else _np().clip(x, lower, upper)


#: Functions an expression may call, by name.
FUNCTIONS: dict[str, Any] = {
    "abs": lambda x: abs(x),
    "sqrt": lambda x: _np().sqrt(x),
    "exp": lambda x: _np().exp(x),
    "log": lambda x: _np().log(x),
    "log1p": lambda x: _np().log1p(x),
    "log10": lambda x: _np().log10(x),
    "floor": lambda x: _np().floor(x),
    "ceil": lambda x: _np().ceil(x),
    "isnull": _isnull,
    "notnull": lambda x: ~_isnull(x),
    "where": _where,
    "clip": _clip,
}


def _as_bool(x):
    """A boolean mask where missing counts as False."""
    import pandas as pd

    if isinstance(x, pd.Series):
        if x.dtype != bool:
            x = _logical(x).fillna(False).astype(bool)
        return x
    return x


def _logical(x):
    """Three-valued logic (pandas' nullable ``boolean``): missing stays missing through and/or/not."""
    import pandas as pd

    if isinstance(x, pd.Series) and x.dtype != "boolean":
        if not (pd.api.types.is_bool_dtype(x.dtype) or x.dtype == object or x.isna().all()):
            raise TypeError(f"expected a condition, got values of type {x.dtype}")
        return x.astype("boolean")
    return x


def _missing(*operands):
    """Rows where any operand is missing (None when no operand is a Series)."""
    import pandas as pd

    out = None
    for x in operands:
        if isinstance(x, pd.Series):
            out = x.isna() if out is None else (out | x.isna())
    return out


class Expression:
    """A parsed expression.

    Parameters
    ----------
    text
        The expression, e.g. ``"arr_delay > 15"`` or ``"log1p(income) / (age + 1)"``.
    where
        The spec location, used in error messages (``features[3].expr``).

    Examples
    --------
    >>> e = Expression("a * 2 + b")
    >>> sorted(e.columns)
    ['a', 'b']
    """

    def __init__(self, text: str, where: str = "expr"):
        self.text = text
        self.where = where
        self._names: dict[str, str] = {}

        def mask(m: re.Match) -> str:
            placeholder = f"__col{len(self._names)}__"
            self._names[placeholder] = m.group(1)
            return placeholder

        source = _BACKTICK.sub(mask, text.strip())
        try:
            self._tree = ast.parse(source, mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(
                f"{where}: cannot parse expression {text!r}: {exc.msg}",
                hint="expressions use Python syntax over column names, e.g. `amount > 0 and country == 'NL'`;"
                " quote odd column names in backticks",
            ) from exc
        self._check(self._tree.body)

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    @cached_property
    def columns(self) -> set[str]:
        """Names of the columns the expression reads."""
        return {self._column(n.id) for n in ast.walk(self._tree) if isinstance(n, ast.Name) and not self._is_func(n)}

    def _column(self, name: str) -> str:
        return self._names.get(name, name)

    def _is_func(self, node: ast.Name) -> bool:
        return any(isinstance(p, ast.Call) and p.func is node for p in ast.walk(self._tree))

    def _fail(self, what: str) -> None:
        raise ExpressionError(
            f"{self.where}: {what} is not allowed in expression {self.text!r}",
            hint="allowed: column names, numbers, strings, + - * / // % **, comparisons, and/or/not,"
            f" `x in [..]`, `a if cond else b`, and functions {sorted(FUNCTIONS)}",
        )

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.BoolOp | ast.BinOp | ast.UnaryOp | ast.Compare | ast.IfExp):
            if isinstance(node, ast.BinOp) and type(node.op) not in _BINOPS:
                self._fail(f"operator {type(node.op).__name__}")
            if isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.Not | ast.USub | ast.UAdd | ast.Invert):
                self._fail(f"operator {type(node.op).__name__}")
            if isinstance(node, ast.Compare):
                for op, right in zip(node.ops, node.comparators):
                    if isinstance(op, ast.In | ast.NotIn):
                        if not isinstance(right, ast.List | ast.Tuple | ast.Set):
                            self._fail("`in` with anything but a literal list")
                    elif type(op) not in _CMPOPS:
                        self._fail(f"comparison {type(op).__name__}")
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, ast.operator | ast.cmpop | ast.boolop | ast.unaryop):
                    self._check(child)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
                self._fail(f"calling {name!r}")
            if node.keywords:
                self._fail("keyword arguments")
            for arg in node.args:
                self._check(arg)
        elif isinstance(node, ast.List | ast.Tuple | ast.Set):
            for elt in node.elts:
                if not isinstance(elt, ast.Constant):
                    self._fail("a list of anything but literals")
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, int | float | str | bool | type(None)):
                self._fail(f"literal {node.value!r}")
        elif isinstance(node, ast.Name):
            if node.id.startswith("__") and node.id not in self._names:
                self._fail(f"name {node.id!r}")
        else:
            self._fail(f"`{ast.unparse(node)}` ({type(node).__name__})")

    def evaluate(self, df) -> Any:
        """Evaluate over a pandas DataFrame; returns a Series (or a scalar for constant expressions)."""
        missing = sorted(self.columns - set(df.columns))
        if missing:
            from dpipe.errors import ColumnError

            available = [str(c) for c in df.columns if not str(c).startswith("__dpipe")]
            raise ColumnError(
                f"{self.where}: expression {self.text!r} uses column(s) {missing} that do not exist;"
                f" available: {available}",
                hint=f"fix `{self.where}`",
            )
        import numpy as np

        try:
            with np.errstate(all="ignore"):  # log(0) is -inf and log(-1) NaN, as in numpy
                return self._eval(self._tree.body, df)
        except ExpressionError:
            raise
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise ExpressionError(
                f"{self.where}: expression {self.text!r} cannot be applied: {exc}",
                hint="check the column types the expression combines",
            ) from exc

    def mask(self, df):
        """Evaluate as a row filter: a boolean Series where missing counts as False."""
        import pandas as pd

        out = self.evaluate(df)
        if not isinstance(out, pd.Series):
            return pd.Series(bool(out), index=df.index)
        try:
            return _as_bool(out)
        except TypeError as exc:
            raise ExpressionError(
                f"{self.where}: expression {self.text!r} is not a condition: {exc}",
                hint="a filter needs a comparison, e.g. `n > 0` rather than `n`",
            ) from exc

    def _eval(self, node: ast.AST, df) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return df[self._column(node.id)]
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            return [e.value for e in node.elts if isinstance(e, ast.Constant)]  # checked: literals only
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](self._eval(node.left, df), self._eval(node.right, df))
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, df)
            if isinstance(node.op, ast.Not):
                return ~_logical(value) if hasattr(value, "fillna") else not value
            if isinstance(node.op, ast.Invert):
                return ~value
            return -value if isinstance(node.op, ast.USub) else +value
        if isinstance(node, ast.BoolOp):
            values = [_logical(self._eval(v, df)) for v in node.values]
            out = values[0]
            for v in values[1:]:
                out = (out & v) if isinstance(node.op, ast.And) else (out | v)
            return out
        if isinstance(node, ast.Compare):
            # SQL semantics: a comparison with a missing value is missing (false in a filter).
            left = self._eval(node.left, df)
            result = None
            for op, right_node in zip(node.ops, node.comparators):
                right = self._eval(right_node, df)
                if isinstance(op, ast.In | ast.NotIn):
                    part = left.isin(right) if hasattr(left, "isin") else left in right
                    if isinstance(op, ast.NotIn):
                        part = ~part if hasattr(part, "__invert__") and not isinstance(part, bool) else not part
                    missing = _missing(left)
                else:
                    part = _CMPOPS[type(op)](left, right)
                    missing = _missing(left, right)
                if missing is not None:
                    part = _logical(part).mask(missing)
                result = part if result is None else (_logical(result) & _logical(part))
                left = right
            return result
        if isinstance(node, ast.IfExp):
            return _where(self._eval(node.test, df), self._eval(node.body, df), self._eval(node.orelse, df))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return FUNCTIONS[node.func.id](*(self._eval(a, df) for a in node.args))
        raise AssertionError(f"unchecked node {type(node).__name__}")  # pragma: no cover


def check_expression(text: str) -> str:
    """Pydantic validator: parse ``text`` and raise ``ValueError`` with a short message if invalid."""
    try:
        Expression(text, where="")
    except ExpressionError as exc:
        raise ValueError(exc.message.removeprefix(": ")) from exc
    return text
