"""Credentials never reach a log, a parameter or a stored file: the one place that scrubs them.

- :func:`redact_params` drops keys that name secrets and masks ``user:password@`` in values
  (what goes to MLflow params and ``metrics.jsonl``);
- :func:`safe_uri` masks ``user:password@`` in a URI shown in a message;
- :func:`split_uri_credentials` / :func:`adopt_uri_credentials` move credentials out of
  ``MLFLOW_TRACKING_URI`` into ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``
  (MLflow prints the tracking URI as given when a run ends).

Pure Python (no MLflow import), so every step can call it first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import unquote

__all__ = ["adopt_uri_credentials", "redact_params", "safe_uri", "split_uri_credentials"]

_SECRET_KEY = re.compile(r"(secret|password|passwd|token|credential|access_key|api_key)", re.I)
# scheme://user:password@ anywhere in a text (a URI inside a parameter or message).
_EMBEDDED = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
# scheme://user[:password]@ at the start of a URI (what split_uri_credentials takes apart).
_USERINFO = re.compile(
    r"^(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^/@:\s]*)(?::(?P<pw>[^/@\s]*))?@"
)


def safe_uri(text: str) -> str:
    """``text`` with every ``://user:password@`` replaced by ``://***@``."""
    return _EMBEDDED.sub("://***@", str(text))


def redact_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Drop keys that name secrets and mask values that embed credentials (``user:pw@host``)."""
    return {
        key: safe_uri(str(value)) for key, value in params.items() if not _SECRET_KEY.search(key)
    }


def split_uri_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """Split ``scheme://user:password@host/...`` into the bare URI, user and password.

    Returns:
        ``(uri without credentials, user or None, password or None)``, both
        URL-unquoted; a URI without credentials comes back unchanged.
    """
    m = _USERINFO.match(uri or "")
    if m is None:
        return uri, None, None
    user, pw = m.group("user"), m.group("pw")
    return (
        m.group("scheme") + uri[m.end() :],
        unquote(user) if user else None,
        unquote(pw) if pw is not None else None,
    )


def adopt_uri_credentials(environ: MutableMapping[str, str] | None = None) -> bool:
    """Move credentials out of ``MLFLOW_TRACKING_URI`` into the username/password variables.

    MLflow prints the tracking URI as given (``View run ... at: <uri>/#/...``) when a
    run ends, so ``http://user:password@host`` would put the password into every step's
    log. Credentials already in ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``
    take precedence (as they do in MLflow's HTTP client); the URI loses its credentials
    either way. Only the ``user:password@`` form (MLflow's basic auth) is handled.

    Args:
        environ: The variables to edit (default: ``os.environ``).

    Returns:
        Whether the URI held credentials (and was rewritten).
    """
    env = os.environ if environ is None else environ
    clean, user, pw = split_uri_credentials(env.get("MLFLOW_TRACKING_URI", ""))
    if user is None or pw is None:
        return False
    env["MLFLOW_TRACKING_URI"] = clean
    if not env.get("MLFLOW_TRACKING_USERNAME"):
        env["MLFLOW_TRACKING_USERNAME"] = user
    if not env.get("MLFLOW_TRACKING_PASSWORD"):
        env["MLFLOW_TRACKING_PASSWORD"] = pw
    return True
