"""Names in the registry: model and alias names, and ``models:/`` URIs.

``models:/churn@champion`` (an alias), ``models:/churn/3`` (a version), ``models:/churn`` or
``models:/churn/latest`` (the highest version); the same forms as MLflow's model URIs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dpipe.errors import SpecError
from dpipe.spec.registry import name_problem

SCHEME = "models:/"
#: The environment variable naming the registry when none is given (``--registry``, ``registry=``).
REGISTRY_VARIABLE = "DPIPE_REGISTRY"
LATEST = "latest"


@dataclass(frozen=True)
class ModelRef:
    """A model name with one version, one alias, or neither (the highest version)."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{SCHEME}{self.name}@{self.alias}"
        return f"{SCHEME}{self.name}" + (f"/{self.version}" if self.version is not None else "")


def is_model_uri(uri: object) -> bool:
    return isinstance(uri, str) and uri.startswith(SCHEME)


def check_name(name: str, where: str = "name") -> str:
    """``name`` if it can name a model, else :class:`SpecError` saying why."""
    problem = name_problem(name, "name")
    if problem:
        raise SpecError(f"registry: {where}: {problem}", hint="e.g. churn, churn-v2, fraud_model")
    return name


def check_alias(alias: str, where: str = "alias") -> str:
    """``alias`` if it can name an alias, else :class:`SpecError` saying why."""
    problem = name_problem(alias, "alias")
    if problem:
        raise SpecError(f"registry: {where}: {problem}", hint="e.g. champion, challenger, staging")
    return alias


def parse_version(text: str | int, where: str = "version") -> int | str | None:
    """A version number (``3``), an alias (``champion``) or ``None`` (``latest``) from a user's text."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 1:
            raise SpecError(f"registry: {where}: versions are numbered from 1; got {text}")
        return text
    text = str(text)
    if text.isdigit():
        return parse_version(int(text), where)
    if text == LATEST:
        return None
    return check_alias(text, where)


def parse_model_uri(uri: str) -> ModelRef:
    """Split a ``models:/`` URI into a :class:`ModelRef`.

    Examples
    --------
    >>> parse_model_uri("models:/churn@champion")
    ModelRef(name='churn', version=None, alias='champion')
    >>> parse_model_uri("models:/churn/3").version
    3
    """
    if not is_model_uri(uri):
        raise SpecError(f"model URI: expected one starting with {SCHEME!r}; got {uri!r}")
    rest = uri[len(SCHEME) :].strip("/")
    forms = "models:/NAME, models:/NAME/VERSION or models:/NAME@ALIAS"
    if "@" in rest:
        name, _, alias = rest.partition("@")
        if "/" in name or not alias:
            raise SpecError(f"model URI: {uri!r} is not one of {forms}", hint="e.g. models:/churn@champion")
        return ModelRef(check_name(name, f"{uri!r}"), alias=check_alias(alias, f"{uri!r}"))
    name, _, version = rest.partition("/")
    if not version:
        return ModelRef(check_name(name, f"{uri!r}"))
    if "/" in version or not (version.isdigit() or version == LATEST):
        raise SpecError(f"model URI: {uri!r} is not one of {forms}", hint="e.g. models:/churn/3")
    number = parse_version(version, f"{uri!r}")
    return ModelRef(check_name(name, f"{uri!r}"), version=number if isinstance(number, int) else None)


def registry_uri(registry: str | None, *, where: str = "registry") -> str:
    """The registry URL given, else ``$DPIPE_REGISTRY``, else a :class:`SpecError`."""
    uri = registry or os.environ.get(REGISTRY_VARIABLE)
    if not uri:
        raise SpecError(
            f"{where}: no model registry given",
            hint=f"pass --registry URL (a folder or e.g. s3://bucket/registry) or set {REGISTRY_VARIABLE}",
        )
    return uri
