"""Test helper: an HTTP reverse proxy that injects S3 faults in front of a (moto) S3 server.

Not a test module. Test files import it after putting ``tests/`` on ``sys.path``::

    sys.path.insert(0, str(Path(__file__).parent))
    from faultproxy import FaultProxy

    with FaultProxy(moto_endpoint, fault_rate=0.2, seed=0) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        ...
    print(proxy.stats.faults)  # Counter of injected faults by kind

Each request is read whole (headers and body), then a seeded ``random.Random``
decides, in arrival order, whether to inject a fault and which one:

``500``         answered ``500 InternalError`` (S3 XML error body), not forwarded.
``503``         answered ``503 ServiceUnavailable``, not forwarded.
``slowdown``    answered ``503 SlowDown`` ("Please reduce your request rate."), not forwarded.
``drop``        the connection is closed without an answer, not forwarded.
``drop_after``  forwarded (the upstream write happens), then the connection is closed
                without an answer: the client must retry an operation that already
                succeeded, so it must be idempotent.

Otherwise the request goes upstream unchanged (the ``Host`` header included, so
SigV4 signatures stay as the client computed them) and the answer comes back.
HEAD answers keep the upstream ``Content-Length`` and carry no body, as S3 does.

Bounded: at most ``max_faults_per_request`` faults in a row for one (method,
path, query) so that a client with a retry budget always gets through; at most
``max_faults`` faults in all (then it only forwards); and the server shuts
itself down after ``lifetime_s`` seconds even if a test forgets to stop it.

``always=(status, code)`` answers EVERY request with that S3 error instead (e.g.
``(403, "InvalidAccessKeyId")`` to stand in for bad credentials, which moto
does not check); HEAD requests get the status without a body, as S3 answers them.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import random
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["FAULT_KINDS", "FaultProxy", "ProxyStats", "s3_error_body"]

FAULT_KINDS: tuple[str, ...] = ("500", "503", "slowdown", "drop", "drop_after")
_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
}
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}


def s3_error_body(code: str, message: str, resource: str) -> bytes:
    """The XML error document S3 answers with (``<Error><Code>...``)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>FAULTPROXY</RequestId></Error>"
    ).encode()


@dataclass
class ProxyStats:
    """What the proxy saw and did (read it after the run; guarded by the proxy's lock).

    Attributes:
        requests: Requests received.
        forwarded: Requests sent upstream (``drop_after`` included).
        faults: Injected faults by kind.
        by_method: Requests received by HTTP method.
    """

    requests: int = 0
    forwarded: int = 0
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    by_method: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def total_faults(self) -> int:
        """All injected faults."""
        return sum(self.faults.values())


class FaultProxy:
    """A threaded reverse proxy on 127.0.0.1 that injects S3 faults (see the module docstring).

    Args:
        upstream: Base URL of the real server (``http://127.0.0.1:port``).
        fault_rate: Probability that a request gets a fault (0 turns faults off).
        kinds: The fault kinds to draw from, uniformly.
        seed: Seed of the fault decisions (taken in request arrival order).
        max_faults_per_request: Most faults in a row for one (method, path, query).
        max_faults: Most faults in all (``None``: unbounded).
        always: ``(status, code)``: answer every request with this S3 error.
        lifetime_s: The proxy stops itself after this many seconds.
    """

    def __init__(
        self,
        upstream: str,
        *,
        fault_rate: float = 0.2,
        kinds: tuple[str, ...] = FAULT_KINDS,
        seed: int = 0,
        max_faults_per_request: int = 3,
        max_faults: int | None = None,
        always: tuple[int, str] | None = None,
        lifetime_s: float = 300.0,
    ) -> None:
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; allowed: {FAULT_KINDS}")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate={fault_rate} must lie in [0, 1]")
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.fault_rate = fault_rate
        self.kinds = tuple(kinds)
        self.max_faults_per_request = max_faults_per_request
        self.max_faults = max_faults
        self.always = always
        self.lifetime_s = lifetime_s
        self.stats = ProxyStats()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._streak: dict[tuple[str, str], int] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="faultproxy", daemon=True
        )
        self._thread.start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._timer is not None and threading.current_thread() is not self._timer:
            self._timer.cancel()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- decisions ---------------------------------------------------------------------------
    def decide(self, method: str, target: str) -> str | None:
        """The fault to inject for this request (``None``: forward it); counts it."""
        with self._lock:
            self.stats.requests += 1
            self.stats.by_method[method] += 1
            if self.always is not None:
                self.stats.faults["always"] += 1
                return "always"
            # Draw first, so that the sequence of decisions depends on the seed only.
            draw = self._rng.random()
            kind = self.kinds[self._rng.randrange(len(self.kinds))] if self.kinds else None
            key = (method, target)
            capped = self._streak.get(key, 0) >= self.max_faults_per_request or (
                self.max_faults is not None and self.stats.total_faults >= self.max_faults
            )
            if kind is None or draw >= self.fault_rate or capped:
                self._streak.pop(key, None)
                return None
            self._streak[key] = self._streak.get(key, 0) + 1
            self.stats.faults[kind] += 1
            return kind

    def count_forwarded(self) -> None:
        """Record one request sent upstream."""
        with self._lock:
            self.stats.forwarded += 1


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return  # quiet: tests read ProxyStats instead

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _answer_error(self, status: int, code: str, message: str) -> None:
        body = s3_error_body(code, message, self.path.split("?", 1)[0])
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", "FAULTPROXY")
        if code == "SlowDown":
            self.send_header("Retry-After", "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        owner = self.owner
        conn = http.client.HTTPConnection(owner.upstream_host, owner.upstream_port, timeout=60)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            owner.count_forwarded()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()

    def _handle(self) -> None:
        body = self._read_body()
        kind = self.owner.decide(self.command, self.path)
        if kind == "always":
            status, code = self.owner.always  # type: ignore[misc]
            self._answer_error(status, code, "injected by faultproxy (always)")
            return
        if kind in _ERRORS:
            self._answer_error(*_ERRORS[kind])
            return
        if kind == "drop":
            self._drop()
            return
        status, reason, headers, data = self._forward(body)
        if kind == "drop_after":
            self._drop()
            return
        self.send_response(status, reason)
        for name, value in headers:
            low = name.lower()
            if low in _HOP_BY_HOP or low in ("content-length", "date", "server"):
                continue
            self.send_header(name, value)
        if self.command == "HEAD":
            length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
            self.send_header("Content-Length", length)
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815
