"""Is the endpoint there, and are we let in? MLflow and HTTP hosts, checked in seconds.

Every check is the same: a few short requests (``timeout_s`` each; a fault that may pass,
such as a refused connection, a timeout or a 5xx answer, is tried ``attempts`` times with a
short pause), so an endpoint that does not answer is reported within
``attempts * timeout_s`` plus a second, never after a client's own minutes of retries. A
failure raises one exception whose message names the endpoint (credentials masked with
:func:`fashion_attr.credentials.safe_uri`), what failed (connection refused, DNS, timeout,
HTTP 401/403, ...) and the fix:

- :class:`EndpointConfigError` (a ``ValueError``: exit 2, never retried): the URI is
  malformed, its host name does not exist, the credentials are refused (401/403) or the
  URL does not lead to the service (404);
- :class:`EndpointUnreachableError` (a ``RuntimeError`` with ``retryable = True``: exit 3):
  the endpoint could not be reached (refused, timed out, temporary DNS failure, 5xx).

:func:`prepare_mlflow_client` bounds MLflow's own client the same way (its HTTP timeout
and retries default to 120 s and 7 retries with backoff: over 4 minutes against a server
that does not answer) and silences GitPython's "Bad git executable" warning, unless the
user set those variables. The tracker and the registry call it before their first MLflow
request, after :func:`check_mlflow`. S3 is checked by :func:`fashion_attr.storage.check_access`
(one request without retries; preflight writes a probe object).

Floor 1: the standard library and :mod:`fashion_attr.credentials`; ``requests`` is imported
when a check runs.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from fashion_attr.credentials import safe_uri, split_uri_credentials

__all__ = [
    "MLFLOW_CLIENT_DEFAULTS",
    "EndpointConfigError",
    "EndpointError",
    "EndpointUnreachableError",
    "check_http",
    "check_mlflow",
    "prepare_mlflow_client",
]

#: What :func:`prepare_mlflow_client` sets when the variable is not set: MLflow's client
#: then gives up on an unanswered request after 3 tries of 20 s (about 65 s at worst, not
#: 4 minutes); :func:`check_mlflow` reports a server that is down in seconds before that.
MLFLOW_CLIENT_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    # Without a git executable (the image), GitPython prints a 15-line warning on import.
    "GIT_PYTHON_REFRESH": "quiet",
}
_PAUSE_S = 0.5  # between two tries of a fault that may pass
_MLFLOW_FIX = (
    "check MLFLOW_TRACKING_URI (Kubernetes config map pipeline-config) and that the tracking "
    "server is up"
)
_MLFLOW_AUTH_FIX = (
    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (Kubernetes secret "
    "mlflow-credentials) for a user of this server"
)


class EndpointError(Exception):
    """An endpoint check failed (base of the two kinds below).

    Attributes:
        endpoint: the endpoint, credentials masked.
        what: what failed, in a few words (``connection refused``, ``HTTP 401``, ...).
    """

    retryable = False

    def __init__(self, message: str, *, endpoint: str = "", what: str = "") -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.what = what


class EndpointConfigError(EndpointError, ValueError):
    """A user error: bad URI, unknown host, refused credentials, wrong path (exit 2)."""


class EndpointUnreachableError(EndpointError, RuntimeError):
    """A fault: the endpoint could not be reached (exit 3; a retry may succeed)."""

    retryable = True


# --------------------------------------------------------------------------- helpers
def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception behind it (causes, contexts, urllib3's ``reason``)."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__, getattr(e, "reason", None)]
        stack += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]


def _classify(exc: BaseException, where: str, timeout_s: float) -> tuple[str, bool]:
    """``(what failed, is a user error)`` for a network-level failure.

    Args:
        exc: what the client raised.
        where: the URL, or ``host:port``.
        timeout_s: the timeout used, for the message.
    """
    host = _host_port(where) if "://" in where else where
    name = host.rsplit(":", 1)[0]
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, socket.gaierror):
            if e.errno == getattr(socket, "EAI_AGAIN", -3):
                return f"DNS lookup of {name} failed for now ({e.strerror})", False
            return f"DNS: the host name {name} does not resolve ({e.strerror})", True
    for e in chain:
        if isinstance(e, ConnectionRefusedError) or (
            isinstance(e, OSError) and e.errno == errno.ECONNREFUSED
        ):
            return f"connection refused: nothing listens on {host}", False
    for e in chain:
        if isinstance(e, TimeoutError) or "timeout" in type(e).__name__.lower():
            return f"timeout: no answer from {host} within {timeout_s:g} s", False
    for e in chain:
        if isinstance(e, ssl.SSLError) or type(e).__name__ == "SSLError":
            return f"TLS failed with {host} ({_first_line(e)})", True
    for e in chain:
        if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return f"network unreachable: no route to {host}", False
    return f"cannot connect to {host} ({type(exc).__name__}: {_first_line(exc)})", False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


_T = TypeVar("_T")


def _tries(
    attempt: Callable[[], _T], attempts: int, fault: type[BaseException] = EndpointUnreachableError
) -> _T:
    """Call ``attempt`` up to ``attempts`` times while it raises ``fault``."""
    attempts = max(int(attempts), 1)
    for i in range(attempts):
        try:
            return attempt()
        except fault:
            if i == attempts - 1:
                raise
            time.sleep(_PAUSE_S)
    raise AssertionError("unreachable")  # pragma: no cover


def _host_port(url: str) -> str:
    parsed = urlparse(url)
    if parsed.port:
        return f"{parsed.hostname}:{parsed.port}"
    default = {"https": 443, "http": 80}.get(parsed.scheme)
    return f"{parsed.hostname}:{default}" if default else str(parsed.hostname)


def _http_get(
    url: str,
    *,
    shown: str,
    label: str,
    fix: str,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
    verify: bool | str = True,
) -> Any:
    """One GET of ``url``; a failure raises the :class:`EndpointError` naming ``shown``."""
    import requests

    try:
        return requests.get(
            url, headers=dict(headers or {}), timeout=timeout_s, verify=verify, allow_redirects=True
        )
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, ValueError) as exc:
        raise EndpointConfigError(
            f"{label} at {shown}: not a valid URL ({_first_line(exc)}). Fix: {fix}",
            endpoint=shown,
            what="bad URL",
        ) from None
    except requests.exceptions.RequestException as exc:
        what, user = _classify(exc, url, timeout_s)
        kind = EndpointConfigError if user else EndpointUnreachableError
        raise kind(f"{label} at {shown}: {what}. Fix: {fix}", endpoint=shown, what=what) from None


def _answer(response: Any, *, label: str, shown: str, fix: str, auth_fix: str) -> None:
    """Judge an HTTP answer: 401/403 and 404 are user errors, 5xx a fault."""
    code = int(response.status_code)
    if code in (401, 403):
        reason = "refused the credentials" if code == 401 else "denied access"
        raise EndpointConfigError(
            f"{label} at {shown} {reason} (HTTP {code}). Fix: {auth_fix}",
            endpoint=shown,
            what=f"HTTP {code}",
        )
    if code == 404:
        raise EndpointConfigError(
            f"{label} at {shown}: HTTP 404 for {urlparse(response.url).path or '/'}: the URL "
            f"does not lead to the service (wrong path or port). Fix: {fix}",
            endpoint=shown,
            what="HTTP 404",
        )
    if code >= 500:
        raise EndpointUnreachableError(
            f"{label} at {shown}: the server failed (HTTP {code} {response.reason}). Fix: {fix}",
            endpoint=shown,
            what=f"HTTP {code}",
        )


# --------------------------------------------------------------------------- checks
def check_http(
    url: str,
    *,
    timeout_s: float = 5.0,
    attempts: int = 2,
    headers: Mapping[str, str] | None = None,
    label: str = "HTTP endpoint",
    fix: str = "check the URL and that the service is up",
    auth_fix: str = "check the credentials or token the client sends",
) -> int:
    """Check that ``url`` answers (the KFP API's ``/apis/v2beta1/healthz``, say).

    Any answer but 401/403 (credentials), 404 (wrong path) and 5xx (server failure)
    counts as reachable.

    Args:
        url: ``http(s)://host[:port]/path``.
        timeout_s: per request (connect and read).
        attempts: tries for a fault that may pass (refused, timeout, 5xx).
        headers: sent with the request (e.g. ``Authorization``).
        label: the service, for the message (``"the KFP API"``).
        fix: what to do when it cannot be reached or the URL is wrong.
        auth_fix: what to do on 401/403.

    Returns:
        The HTTP status code.

    Raises:
        EndpointConfigError: bad URL, unknown host, 401/403 or 404.
        EndpointUnreachableError: refused, timed out, temporary DNS failure or 5xx.
    """
    shown = safe_uri(url)
    if urlparse(url).scheme not in ("http", "https") or not urlparse(url).hostname:
        raise EndpointConfigError(
            f"{label} at {shown}: not an http(s):// URL. Fix: {fix}",
            endpoint=shown,
            what="bad URL",
        )

    def attempt() -> int:
        response = _http_get(
            url, shown=shown, label=label, fix=fix, timeout_s=timeout_s, headers=headers
        )
        _answer(response, label=label, shown=shown, fix=fix, auth_fix=auth_fix)
        return int(response.status_code)

    return _tries(attempt, attempts)


def _mlflow_auth(user: str | None, password: str | None) -> dict[str, str]:
    import base64

    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or user
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or password
    if user and password:
        token = base64.standard_b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    return {}


def _mlflow_verify() -> bool | str:
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("1", "true"):
        return False
    return os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True


def _check_sqlite(shown: str, path: str) -> None:
    """SQLite creates the database file but not its folder: the folder must exist."""
    if path in ("", ":memory:"):
        return
    folder = Path(path).expanduser().parent
    if not folder.is_dir():
        raise EndpointConfigError(
            f"MLflow store {shown}: the folder {folder} does not exist (SQLite does not create "
            "it). Fix: create it, or point MLFLOW_TRACKING_URI at a file in an existing folder "
            "(sqlite:////abs/path/mlflow.db)",
            endpoint=shown,
            what="no such folder",
        )


def _check_tcp(uri: str, timeout_s: float, attempts: int) -> None:
    parsed = urlparse(uri)
    shown = safe_uri(uri)
    if not parsed.hostname:
        return  # e.g. a database on a local socket: MLflow's first call tells
    port = parsed.port or {"postgresql": 5432, "mysql": 3306, "mssql": 1433}.get(
        parsed.scheme.split("+")[0], 0
    )
    if not port:
        return

    def attempt() -> None:
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
        except OSError as exc:
            what, user = _classify(exc, f"{parsed.hostname}:{port}", timeout_s)
            kind = EndpointConfigError if user else EndpointUnreachableError
            raise kind(
                f"MLflow's database at {shown}: {what}. Fix: {_MLFLOW_FIX}",
                endpoint=shown,
                what=what,
            ) from None

    _tries(attempt, attempts)


def check_mlflow(uri: str | None = None, *, timeout_s: float = 5.0, attempts: int = 2) -> None:
    """Check the MLflow tracking server: set, reachable, and letting us in.

    An ``http(s)://`` server gets one authenticated request (``experiments/search``, one
    result) with the credentials MLflow's client would send (``MLFLOW_TRACKING_USERNAME``/
    ``PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``, else those in the URI); a ``sqlite:`` or
    local store must have an existing folder; a database URI must accept a TCP connection.
    Nothing is created or written.

    Args:
        uri: the tracking URI; default ``MLFLOW_TRACKING_URI``.
        timeout_s: per request.
        attempts: tries for a fault that may pass.

    Raises:
        EndpointConfigError: no URI, a malformed one, an unknown host, refused
            credentials (401/403) or not an MLflow server (404).
        EndpointUnreachableError: the server could not be reached (refused, timeout, 5xx).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        raise EndpointConfigError(
            "MLFLOW_TRACKING_URI is not set. Fix: point it at the MLflow server (Kubernetes "
            "config map pipeline-config) or a sqlite:///... file for a local run",
            what="not set",
        )
    clean, user, password = split_uri_credentials(uri)
    shown = safe_uri(uri)
    scheme = urlparse(clean).scheme.lower()
    if scheme in ("", "file"):
        return  # a local folder store: MLflow creates it
    if scheme == "sqlite":
        _check_sqlite(shown, clean[len("sqlite:///") :] if clean.startswith("sqlite:///") else "")
        return
    if scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
        _check_tcp(uri, timeout_s, attempts)
        return
    if scheme.startswith("databricks"):
        return  # the Databricks SDK authenticates; its first call tells
    if scheme not in ("http", "https") or not urlparse(clean).hostname:
        raise EndpointConfigError(
            f"MLFLOW_TRACKING_URI {shown}: not a tracking URI (http(s)://host:port, "
            "sqlite:///path, a database URI or a folder). Fix: correct MLFLOW_TRACKING_URI",
            endpoint=shown,
            what="bad URI",
        )
    url = clean.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    headers = _mlflow_auth(user, password)
    verify = _mlflow_verify()

    def attempt() -> None:
        response = _http_get(
            url,
            shown=shown,
            label="MLflow",
            fix=_MLFLOW_FIX,
            timeout_s=timeout_s,
            headers=headers,
            verify=verify,
        )
        _answer(response, label="MLflow", shown=shown, fix=_MLFLOW_FIX, auth_fix=_MLFLOW_AUTH_FIX)

    _tries(attempt, attempts)


def prepare_mlflow_client(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Bound MLflow's HTTP client and quiet GitPython, unless the variables are set.

    See :data:`MLFLOW_CLIENT_DEFAULTS`. MLflow reads these variables at each request, so
    calling this before the first MLflow call of a process is enough.

    Args:
        environ: the variables to edit (default ``os.environ``).

    Returns:
        The variables this call set (those the user had set are left alone).
    """
    env = os.environ if environ is None else environ
    applied = {k: v for k, v in MLFLOW_CLIENT_DEFAULTS.items() if not env.get(k)}
    env.update(applied)
    return applied
