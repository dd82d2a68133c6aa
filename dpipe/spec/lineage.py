"""A job's ``lineage:`` key: where its OpenLineage run events go.

Every run emits START, then COMPLETE or FAIL (:mod:`dpipe.openlineage`), with the datasets it read
and wrote. ``transport`` picks the destination:

- ``file`` (the default): one JSON event per file in ``path`` (default ``$DPIPE_HOME/openlineage``,
  ``DPIPE_HOME`` defaulting to ``~/.dpipe``);
- ``http``: POSTed to ``url`` + ``endpoint`` (Marquez and other OpenLineage servers), with
  ``api_key`` as a bearer token; a server that is down never fails the run, it logs one warning;
- ``console``: logged on the ``openlineage`` logger; ``none``: no events.

::

    lineage:
      openlineage:
        transport: http
        url: http://marquez:5000
        api_key: ${MARQUEZ_API_KEY}
        namespace: team-ml

``api_key`` is a secret: saved specs and manifests show ``***`` (its name matches
:data:`dpipe.spec.base.SECRET_KEY`).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from dpipe.spec.base import Strict

#: Where dpipe keeps what belongs to the user rather than to a job (OpenLineage files).
HOME_VARIABLE = "DPIPE_HOME"
DEFAULT_HOME = "~/.dpipe"


def dpipe_home() -> str:
    """``$DPIPE_HOME``, else ``~/.dpipe`` (expanded; not created)."""
    return os.path.expanduser(os.environ.get(HOME_VARIABLE) or DEFAULT_HOME)


class OpenLineageSpec(Strict):
    """Where the run events go (see the module docstring)."""

    transport: Literal["file", "http", "console", "none"] = "file"
    #: The folder of the ``file`` transport (default ``$DPIPE_HOME/openlineage``).
    path: str | None = Field(default=None, min_length=1)
    #: The server of the ``http`` transport, ``http(s)://host:port``.
    url: str | None = Field(default=None, min_length=1)
    endpoint: str = Field(default="api/v1/lineage", min_length=1)
    api_key: str | None = Field(default=None, min_length=1)
    #: The OpenLineage namespace of the job (its datasets are named by their storage).
    namespace: str = Field(default="dpipe", min_length=1)
    #: Seconds to wait for the ``http`` server.
    timeout: float = Field(default=5.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL such as http://localhost:5000; got {url!r}")
        return url

    @model_validator(mode="after")
    def _keys_of_the_transport(self) -> OpenLineageSpec:
        if self.transport == "http" and self.url is None:
            raise ValueError("`transport: http` needs `url`, the OpenLineage server (e.g. http://localhost:5000)")
        given = {"url": self.url, "api_key": self.api_key, "path": self.path}
        used = {"http": ("url", "api_key"), "file": ("path",)}.get(self.transport, ())
        stray = sorted(k for k, v in given.items() if v is not None and k not in used)
        if stray:
            raise ValueError(f"{stray} do not apply to `transport: {self.transport}`")
        return self

    def folder(self) -> str:
        """The ``file`` transport's folder: ``path``, else ``$DPIPE_HOME/openlineage``."""
        return os.path.expanduser(self.path) if self.path else os.path.join(dpipe_home(), "openlineage")


class LineageSpec(Strict):
    """A job's ``lineage:`` section. Leaving it out is ``{openlineage: {transport: file}}``."""

    openlineage: OpenLineageSpec = Field(default_factory=OpenLineageSpec)
