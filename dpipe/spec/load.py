"""Load a job spec from YAML, apply ``--set`` overrides, and report every problem at once."""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dpipe.errors import SpecError
from dpipe.spec.base import redact
from dpipe.spec.features import CUSTOM_TAG, OP_MODELS, OP_NAMES
from dpipe.spec.models import LATER_DEFAULTS, NOT_COMPUTED, AnyJob, FeaturesJobSpec, JobSpec
from dpipe.spec.quality import CHECK_MODELS, CHECK_NAMES
from dpipe.spec.tasks import TASK_KINDS

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SpecLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only ``true``/``false``.

    YAML 1.1 (PyYAML's default) also reads ``on``/``off``/``yes``/``no`` as booleans, which
    would turn a join's ``on:`` key into ``True``.
    """


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_job(path: str | os.PathLike, overrides: list[str] | None = None) -> AnyJob:
    """Read a YAML job spec, apply ``key.path=value`` overrides, and validate it.

    ``${VAR}`` (or ``${VAR:-default}``) in any string is replaced by the environment variable, so
    secrets need not live in the file. The job name defaults to the file name. ``kind: features``
    gives a :class:`FeaturesJobSpec`; ``predict``, ``register`` and ``monitor`` the models of
    :mod:`dpipe.spec.tasks`; no ``kind`` a training :class:`JobSpec`.

    Examples
    --------
    >>> job = load_job("jobs/quickstart.yaml", overrides=["train.num_boost_round=50"])
    """
    path = Path(path)
    data = read_yaml(path, "job spec")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a job spec is a mapping of sections, got {type(data).__name__}")
    data.setdefault("name", re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem))
    return job_from_dict(data, overrides=overrides, origin=str(path))


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document in the spec file ``path`` (``what`` it is: "job spec", "flow spec"...),
    read with :class:`SpecLoader`; a missing file or bad YAML is a :class:`SpecError` naming it."""
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise SpecError(f"{what} {str(path)!r} not found", hint="check the path") from exc
    try:
        return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: not valid YAML{where}: {problem}") from exc


def load_entry(path: str | os.PathLike, role: str = "sink") -> Any:
    """Read one source or sink entry from a YAML file (``dpipe predict --output-spec sink.yaml``).

    ``${VAR}`` is replaced as in job specs. Returns the validated spec model of its kind.
    """
    from dpipe.spec.source import sink_spec, source_spec

    path = Path(path)
    data = read_yaml(path, f"{role} spec")
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a {role} spec is a mapping such as {{format: delta, uri: lake/scores}}")
    data = _interpolate_env(data, str(path))
    where = "output" if role == "sink" else "source"
    return sink_spec(data, where=f"{path}: {where}") if role == "sink" else source_spec(data, where=f"{path}: {where}")


#: Job models by ``kind``.
JOB_KINDS: dict[str, type[BaseModel]] = {"train": JobSpec, "features": FeaturesJobSpec, **TASK_KINDS}


def job_from_dict(data: dict, overrides: list[str] | None = None, origin: str = "<spec>") -> Any:
    """Validate a spec given as a plain dict (as YAML would load it): a :data:`AnyJob`."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        apply_override(data, item)
    data = _interpolate_env(data, origin)
    kind = data.get("kind", "train")
    model = JOB_KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        close = difflib.get_close_matches(str(kind), list(JOB_KINDS), n=1)
        raise SpecError(
            f"{origin}: kind: unknown job kind {kind!r}; expected one of {list(JOB_KINDS)}"
            + (f" (did you mean {close[0]!r}?)" if close else ""),
            hint="`train` (the default) trains a model; `features` writes transformed data to a sink; `predict`,"
            " `register` and `monitor` score with, register and watch a trained model",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # Every problem is in the SpecError. The ValidationError itself echoes the input values,
        # storage_options among them: never chained, so `--verbose` cannot print a credential.
        raise spec_error_from(exc, origin, model) from None


def apply_override(data: dict, item: str) -> None:
    """Set ``a.b[2].c=value`` in ``data``; the value is parsed as YAML (``50``, ``true``, ``[a, b]``)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. train.num_boost_round=50")
    try:
        value = yaml.load(raw, Loader=SpecLoader) if raw.strip() else ""  # noqa: S506
    except yaml.YAMLError:
        value = raw
    parts = [int(p) if p.isascii() and p.isdigit() else p for p in re.findall(r"[^.\[\]]+", key.strip())]
    if not parts:
        raise SpecError(f"--set {item!r}: {key.strip()!r} names no key", hint="e.g. train.num_boost_round=50")
    node: Any = data
    for i, part in enumerate(parts):
        where = format_loc(tuple(parts[: i + 1]))
        last = i == len(parts) - 1
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise SpecError(f"--set {key}: {where} is not an existing list item")
        elif not isinstance(node, dict):
            raise SpecError(f"--set {key}: {format_loc(tuple(parts[:i]))} is not a section")
        if not last:
            node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[parts[-1]] = value


def _interpolate_env(value: Any, origin: str, within: tuple[int, ...] = ()) -> Any:
    if isinstance(value, (dict, list)):
        # A YAML alias can make a section contain itself (`&a [*a]`): a spec is a tree.
        if id(value) in within:
            raise SpecError(f"{origin}: a YAML alias refers to a section that contains it", hint="expand the alias")
        inner = (*within, id(value))
        if isinstance(value, dict):
            return {k: _interpolate_env(v, origin, inner) for k, v in value.items()}
        return [_interpolate_env(v, origin, inner) for v in value]
    if isinstance(value, str) and "${" in value:

        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise SpecError(
                f"{origin}: environment variable {name!r} is not set",
                hint=f"export {name}=... or write ${{{name}:-default}}",
            )

        return _ENV.sub(sub, value)
    return value


def format_loc(loc: tuple) -> str:
    """``('features', 2, 'standard_scale', 'columns')`` -> ``features[2].columns``."""
    out = ""
    skip_tag = False
    for part in loc:
        if skip_tag:
            skip_tag = False
            # The discriminator tag: a check kind, an op name, or "custom" (ops named by import path).
            if part in (CHECK_NAMES if out.startswith("checks") else (*OP_NAMES, CUSTOM_TAG)):
                continue
        if isinstance(part, int):
            out += f"[{part}]"
            skip_tag = out.startswith(("features", "checks"))
        elif str(part).startswith(("function-after", "function-before", "tuple", "list[")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def spec_error_from(exc: ValidationError, origin: str, root: type[BaseModel] = JobSpec) -> SpecError:
    problems: list[tuple[str, str]] = []
    seen = set()
    for err in exc.errors(include_url=False):
        loc = format_loc(err["loc"])
        etype = err["type"]
        if etype == "extra_forbidden":
            msg = _unknown_key_message(err["loc"], root)
        elif etype == "union_tag_invalid" and loc.startswith("checks"):
            given = err.get("ctx", {}).get("tag")
            close = difflib.get_close_matches(str(given), CHECK_NAMES, n=1)
            msg = f"unknown check {given!r}; expected one of {list(CHECK_NAMES)}"
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        elif etype == "union_tag_not_found" and loc.startswith("checks"):
            msg = f"each check needs a `check` key, one of {list(CHECK_NAMES)}"
        elif etype == "union_tag_invalid":
            given = err.get("ctx", {}).get("tag")
            close = difflib.get_close_matches(str(given), OP_NAMES, n=1)
            msg = f"unknown op {given!r}; expected one of {list(OP_NAMES)}"
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        elif etype == "union_tag_not_found":
            msg = f"each feature needs an `op` key, one of {list(OP_NAMES)}"
        elif etype == "missing":
            msg = "required but missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and etype not in ("model_type",) and not loc.endswith("storage_options"):
                shown = err["input"]
                if not isinstance(shown, (dict, list, BaseModel)) and repr(shown) not in msg and str(shown) not in msg:
                    msg += f" (got {shown!r})"
        if (loc, msg) not in seen:
            seen.add((loc, msg))
            problems.append((loc, msg))
    return problems_error(
        f"{origin}: invalid job spec",
        problems,
        hint="fix the fields named above; `dpipe validate SPEC` re-checks without running",
    )


def problems_error(what: str, problems: list[tuple[str, str]], *, hint: str) -> SpecError:
    """One :class:`SpecError` listing every ``(location, message)`` problem under ``what``."""
    lines = "\n".join(f"  - {loc}: {msg}" for loc, msg in problems)
    n = len(problems)
    return SpecError(f"{what} ({n} problem{'s' if n > 1 else ''}):\n{lines}", hint=hint, problems=problems)


def _unknown_key_message(raw_loc: tuple, root: type[BaseModel] = JobSpec) -> str:
    model = _model_at(raw_loc[:-1], root)
    if model is None:
        return "unknown key"
    key = str(raw_loc[-1])
    allowed = sorted(model.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1)
    msg = f"unknown key; allowed keys: {allowed}"
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    return msg


def _model_at(raw_loc: tuple, root: type[BaseModel] = JobSpec):
    """The pydantic model of the section at a raw pydantic location, if it is a model."""
    if not raw_loc:
        return root
    if raw_loc[0] == "features":
        return OP_MODELS.get(raw_loc[2]) if len(raw_loc) == 3 else None
    if raw_loc[0] == "checks":
        return CHECK_MODELS.get(raw_loc[2]) if len(raw_loc) == 3 else None
    node: Any = root
    for part in raw_loc:
        if isinstance(node, type) and hasattr(node, "model_fields"):
            field = node.model_fields.get(str(part))
            node = field.annotation if field else None
        else:
            node = _item_type(node)
        if node is None:
            return None
    return node if isinstance(node, type) and hasattr(node, "model_fields") else None


def _item_type(annotation: Any) -> Any:
    """The type of a ``dict[str, X]``'s values or a ``list[X]``'s items (``X | None`` too), else ``None``."""
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (dict, list):
        return args[-1] if args else None
    if len(args) == 1:  # X | None
        return _item_type(args[0])
    return None


def redacted(job: Any) -> dict:
    """The resolved spec as a dict with every secret replaced by ``***`` (see :func:`redact`)."""
    return redact(job.model_dump(mode="json"))


def spec_digest(job: Any, leave_out: Collection[str] = ("lineage", "monitor", "registry")) -> str:
    """A sha256 of the redacted spec without the sections ``leave_out``: by default those that
    change nothing a job computes (where events go, how its model is watched and registered);
    never the settings of how it runs (:data:`~dpipe.spec.models.NOT_COMPUTED`: how training
    survives faults, whether the rows read stay in memory)."""
    spec = {k: v for k, v in redacted(job).items() if k not in leave_out}
    for section, keys in NOT_COMPUTED.items():
        if isinstance(spec.get(section), dict):
            spec[section] = {k: v for k, v in spec[section].items() if k not in keys}
    for section, defaults in LATER_DEFAULTS.items():
        if isinstance(spec.get(section), dict):
            spec[section] = {k: v for k, v in spec[section].items() if defaults.get(k, object()) != v}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
