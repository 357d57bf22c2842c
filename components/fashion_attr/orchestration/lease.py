"""One writer per output folder: a lease that concurrent runs on the same inputs wait on.

A training step's output folder is named by everything that changes its result
(:mod:`~fashion_attr.orchestration.identity`), so two runs with the same inputs (a manual
submit while the nightly run is going, a retried pod racing its predecessor) would
otherwise train into the same folder at once. The first run takes the lease
``<out>/_lease.json``; any other run waits for it and then reuses the finished result
(it finds ``result.json``) or, if the holder died, takes the lease over and resumes from
its checkpoint.

The lease is created with a conditional write (S3 ``If-None-Match: *``, a local
``O_EXCL``) and renewed by a heartbeat thread; it names its pipeline run (``owner``) and
its holder (host and process). It is taken over, never waited on, when

- its owner is this pipeline run (a retry of this very task: the earlier attempt's pod
  is gone or going),
- it has expired (its holder stopped renewing it: killed, or its node lost), or
- its holder is a process of this host that no longer exists (a local ``kill -9``: the
  rerun resumes at once instead of waiting for the expiry).

Take-overs are conditional on the lease not having changed since it was read (S3
``If-Match``, a local ``flock``), so two waiters never both win.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from fashion_attr import storage

__all__ = ["LEASE_NAME", "LeaseLostError", "OutputLease"]

log = logging.getLogger(__name__)
LEASE_NAME = "_lease.json"


class LeaseLostError(RuntimeError):
    """Another run took the lease over while this one still held it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class OutputLease:
    """The lease on one output folder (use as a context manager).

    Args:
        out: the output folder (local or ``s3://``).
        owner: the pipeline run (or other scope) this attempt belongs to.
        ttl_s: seconds a lease lives without renewal.
        poll_s: seconds between looks while waiting for another run.
        on_wait: called once with the other holder's record when this run has to wait.
        clock: the time source (tests).
    """

    def __init__(
        self,
        out: str,
        owner: str,
        *,
        ttl_s: float = 120.0,
        poll_s: float = 5.0,
        on_wait: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.uri = storage.join(out, LEASE_NAME)
        self.owner, self.ttl_s, self.poll_s = owner, ttl_s, poll_s
        self.on_wait, self.clock = on_wait, clock
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._tag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: LeaseLostError | None = None
        self.waited = False

    def _record(self) -> bytes:
        return json.dumps(
            {"owner": self.owner, "holder": self.holder, "expires": self.clock() + self.ttl_s}
        ).encode()

    def _takeover_reason(self, record: dict[str, Any]) -> str | None:
        if record.get("owner") == self.owner:
            return "an earlier attempt of this run held it"
        if float(record.get("expires", 0)) < self.clock():
            return "it expired (its holder stopped renewing it)"
        host, _, pid = str(record.get("holder", "")).rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            return f"its holder, process {pid} of this host, is gone"
        return None

    def acquire(self, timeout_s: float | None = None) -> None:
        """Take the lease, waiting while another live run holds it.

        Raises:
            TimeoutError: still held by another run after ``timeout_s``.
        """
        deadline = None if timeout_s is None else self.clock() + timeout_s
        while True:
            self._tag = storage.create_exclusive(self.uri, self._record())
            if self._tag is not None:
                break
            current = storage.read_tagged(self.uri)
            if current is None:
                continue  # released between the two calls: try again at once
            data, tag = current
            try:
                record = json.loads(data)
            except ValueError:
                record = {}  # a torn or foreign file: treat as expired
            reason = self._takeover_reason(record) if record else "it was unreadable"
            if reason is not None:
                self._tag = storage.replace_if_tagged(self.uri, self._record(), tag)
                if self._tag is not None:
                    log.info("took over the lease %s: %s", self.uri, reason)
                    break
                continue  # another waiter changed it first: look again
            if reason is None:
                if not self.waited and self.on_wait is not None:
                    self.on_wait(record)
                self.waited = True
                if deadline is not None and self.clock() >= deadline:
                    raise TimeoutError(
                        f"{self.uri} is still held by run {record.get('owner')} "
                        f"({record.get('holder')}) after {timeout_s:g} s"
                    )
                time.sleep(self.poll_s)
        self._stop.clear()
        self._lost = None
        self._thread = threading.Thread(target=self._heartbeat, name="lease", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        """Push the expiry forward.

        Raises:
            LeaseLostError: another run took the lease over meanwhile.
        """
        tag = None
        if self._tag is not None:
            tag = storage.replace_if_tagged(self.uri, self._record(), self._tag)
        if tag is None:
            raise LeaseLostError(
                f"{self.uri}: another run took the lease over while this one held it (this "
                f"run stopped renewing it for over {self.ttl_s:g} s: a paused process or a "
                "storage outage), so both may have written into the folder. Fix: rerun; the "
                "rerun resumes from the last good checkpoint or reuses the other run's result"
            )
        self._tag = tag

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except LeaseLostError as exc:
                # Not swallowed: release() raises it, so the step fails instead of
                # reporting a result from a folder another run now owns.
                log.error("%s", exc)
                self._lost = exc
                return
            except Exception as exc:  # a storage hiccup: the next beat tries again
                log.warning("renewing %s failed: %s", self.uri, exc)

    def release(self) -> None:
        """Stop renewing and remove the lease if this run still holds it.

        Raises:
            LeaseLostError: the heartbeat found the lease taken over by another run (the
                other run's lease is left in place).
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        lost, self._lost = self._lost, None
        current = storage.read_tagged(self.uri)
        if lost is None and current is not None and current[1] == self._tag:
            storage.delete(self.uri)
        self._tag = None
        if lost is not None:
            raise lost

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            self.release()
        except LeaseLostError:
            if exc_type is None:  # the step's own error, if any, is the one to report
                raise
