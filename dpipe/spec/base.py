"""Shared base of all spec models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A spec section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


#: What a redacted secret reads as, in saved specs, manifests and messages.
REDACTED = "***"
#: Sections whose every value is a secret (credentials, endpoints with tokens).
SECRET_SECTIONS = ("storage_options",)
#: Keys anywhere in a spec whose value is a secret (``password``, ``s3.secret-access-key``, ``token``,
#: ``adls.account-key``, a REST catalog's ``header.Authorization``).
SECRET_KEY = re.compile(
    r"password|passwd|secret|token|credential|private[-_.]?key|access[-_.]?key|account[-_.]?key"
    r"|authorization|api[-_.]?key",
    re.IGNORECASE,
)
#: The password of a URL's user info: ``postgresql://user:PASSWORD@host/db``; the password may
#: itself hold ``@`` (libpq accepts it), so it runs to the last ``@`` before the host.
URL_PASSWORD = re.compile(
    r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:?#]*):(?P<password>[^/?#]*)@(?=[^@/?#]*(?:[/?#]|$))"
)
#: A password given as a URL query parameter or a libpq keyword (``?password=...``, ``password=...``).
PASSWORD_PARAMETER = re.compile(
    r"(?P<key>(?:^|[?&;\s])(?:password|passwd|sslpassword)\s*=\s*)(?P<value>[^&;\s]*)", re.IGNORECASE
)


def redact_url(url: str) -> str:
    """``postgresql://me:s3cret@db/x`` -> ``postgresql://me:***@db/x``; ``?password=...`` too; other strings unchanged."""
    url = URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{REDACTED}@", url)
    return PASSWORD_PARAMETER.sub(lambda m: f"{m.group('key')}{REDACTED}", url)


def redact(data: Any) -> Any:
    """Replace every secret in a nested dict/list (in place; also returned).

    ``storage_options`` values, values of secret-looking keys (``password``, ``token``,
    ``s3.secret-access-key``) and the passwords of URLs become ``***``; the keys stay, so a reader
    sees what was set.
    """
    if isinstance(data, dict):
        for key, value in data.items():
            if key in SECRET_SECTIONS and isinstance(value, dict):
                data[key] = {k: REDACTED for k in value}
            elif isinstance(key, str) and SECRET_KEY.search(key) and isinstance(value, (str, int, float)):
                data[key] = REDACTED
            elif isinstance(value, str):
                data[key] = redact_url(value)
            else:
                redact(value)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            if isinstance(item, str):
                data[i] = redact_url(item)
            else:
                redact(item)
    return data
