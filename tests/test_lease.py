"""One writer per output folder: the lease concurrent runs on the same inputs wait on.

Local folders (O_EXCL + flock) and S3 through a real S3-compatible server (moto's, which
enforces ``If-None-Match: *`` and ``If-Match`` as AWS S3 and MinIO do).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fashion_attr import storage
from fashion_attr.orchestration.lease import LEASE_NAME, LeaseLostError, OutputLease


@pytest.fixture(params=["local", "s3"])
def out(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "runs" / "train_gan" / "0123456789abcdef")
    server = request.getfixturevalue("s3_server")
    return server.uri("runs/train_gan/0123456789abcdef")


def test_a_second_run_waits_until_the_first_releases(out: str) -> None:
    first = OutputLease(out, "run-1", ttl_s=30, poll_s=0.05)
    first.acquire()
    waited: list[dict[str, Any]] = []
    second = OutputLease(out, "run-2", ttl_s=30, poll_s=0.05, on_wait=waited.append)
    got: list[float] = []
    thread = threading.Thread(target=lambda: (second.acquire(), got.append(time.time())))
    thread.start()
    time.sleep(0.5)
    assert not got and waited and waited[0]["owner"] == "run-1"  # still waiting
    released = time.time()
    first.release()
    thread.join(timeout=10)
    assert got and got[0] >= released and second.waited
    record = json.loads(storage.read_text(storage.join(out, LEASE_NAME)))
    assert record["owner"] == "run-2"
    second.release()
    assert not storage.exists(storage.join(out, LEASE_NAME))


def test_a_retry_of_the_same_run_takes_its_lease_over_at_once(out: str) -> None:
    first = OutputLease(out, "run-1", ttl_s=30)
    first.acquire()
    first._stop.set()  # the first attempt's pod is gone: no more heartbeats
    retry = OutputLease(out, "run-1", ttl_s=30, poll_s=60)
    start = time.monotonic()
    retry.acquire()
    assert time.monotonic() - start < 5 and not retry.waited
    with pytest.raises(LeaseLostError):
        first.renew()  # the old holder learns it lost the lease
    retry.release()


def test_an_expired_lease_is_taken_over(out: str) -> None:
    now = [1000.0]
    stale = OutputLease(out, "run-1", ttl_s=10, clock=lambda: now[0])
    stale.acquire()
    stale._stop.set()
    now[0] += 11  # no renewal for longer than the ttl: the holder is dead
    other = OutputLease(out, "run-2", ttl_s=10, poll_s=60, clock=lambda: now[0])
    other.acquire()
    assert not other.waited
    other.release()


def test_a_killed_local_holder_is_taken_over_without_waiting_for_the_expiry(
    tmp_path: Path,
) -> None:
    out = str(tmp_path / "o")
    code = (
        "import sys; from fashion_attr.orchestration.lease import OutputLease; "
        f"OutputLease({out!r}, 'run-1', ttl_s=3600).acquire(); print('held', flush=True); "
        "import time; time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    proc.kill()  # kill -9: no release, an hour left on the lease
    proc.wait()
    rerun = OutputLease(out, "run-2", ttl_s=3600, poll_s=60)
    start = time.monotonic()
    rerun.acquire()
    assert time.monotonic() - start < 5 and not rerun.waited
    rerun.release()


def test_two_waiters_never_both_win_a_take_over(tmp_path: Path) -> None:
    """Racing take-overs of one expired lease: exactly one gets it, the other waits."""
    out = str(tmp_path / "o")
    storage.write_text(
        storage.join(out, LEASE_NAME),
        json.dumps({"owner": "dead", "holder": "elsewhere:1", "expires": 0}),
    )
    winners: list[str] = []
    barrier = threading.Barrier(2)

    def contend(name: str) -> None:
        lease = OutputLease(out, name, ttl_s=30, poll_s=0.05)
        barrier.wait()
        try:
            lease.acquire(timeout_s=1.0)
        except TimeoutError:
            return
        winners.append(name)
        time.sleep(1.5)  # hold it past the other's timeout
        lease.release()

    threads = [threading.Thread(target=contend, args=(n,)) for n in ("a", "b")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=20)
    assert len(winners) == 1


def test_the_heartbeat_keeps_a_long_step_s_lease_alive(tmp_path: Path) -> None:
    out = str(tmp_path / "o")
    lease = OutputLease(out, "run-1", ttl_s=0.6)
    lease.acquire()
    time.sleep(1.5)  # longer than the ttl: only renewals keep it
    record = json.loads(storage.read_text(storage.join(out, LEASE_NAME)))
    assert record["expires"] > time.time() and record["holder"].endswith(f":{os.getpid()}")
    lease.release()


def test_a_new_lease_is_never_seen_half_written_and_its_tag_is_the_written_one(
    out: str,
) -> None:
    """create/replace return the tag of their own write, as read_tagged then reads it.

    The old local create made the file (O_EXCL) and wrote it after: a waiter reading in
    between saw an empty lease, took it over as unreadable, and the creator then read the
    waiter's tag as its own, so both held the lease.
    """
    uri = storage.join(out, LEASE_NAME)
    tag = storage.create_exclusive(uri, b'{"owner": "a"}')
    assert tag is not None and storage.read_tagged(uri) == (b'{"owner": "a"}', tag)
    assert storage.create_exclusive(uri, b"{}") is None
    assert storage.replace_if_tagged(uri, b"x", "not-its-tag") is None
    new = storage.replace_if_tagged(uri, b'{"owner": "b"}', tag)
    assert new is not None and new != tag
    assert storage.read_tagged(uri) == (b'{"owner": "b"}', new)


def test_racing_creates_leave_one_holder_every_time(tmp_path: Path) -> None:
    """Two runs starting together on a fresh folder, 20 times: always exactly one holder."""
    for round_ in range(20):
        out = str(tmp_path / f"o{round_}")
        held: list[str] = []
        barrier = threading.Barrier(2)

        def contend(
            name: str,
            out: str = out,
            held: list[str] = held,
            barrier: threading.Barrier = barrier,
        ) -> None:
            lease = OutputLease(out, name, ttl_s=30, poll_s=0.02)
            barrier.wait()
            try:
                lease.acquire(timeout_s=0.15)
            except TimeoutError:
                return
            held.append(name)
            time.sleep(0.3)  # past the other's timeout
            lease.release()

        threads = [threading.Thread(target=contend, args=(n,)) for n in ("a", "b")]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=20)
        assert len(held) == 1, (round_, held)
    assert not list(tmp_path.glob("*/.*.new")), "no temporary lease file is left behind"


def test_a_lease_lost_to_another_run_fails_the_holder_and_keeps_the_other_s(
    tmp_path: Path,
) -> None:
    out = str(tmp_path / "o")
    uri = storage.join(out, LEASE_NAME)
    lease = OutputLease(out, "run-1", ttl_s=0.3)
    lease.acquire()
    taken = json.dumps({"owner": "run-2", "holder": "elsewhere:1", "expires": time.time() + 60})
    storage.write_text(uri, taken)  # another run took it over (this one looked paused)
    time.sleep(0.5)  # a heartbeat finds it
    with pytest.raises(LeaseLostError, match="Fix: rerun"):
        lease.release()
    assert json.loads(storage.read_text(uri))["owner"] == "run-2"
    # As a context manager the step's own error wins over the lost lease.
    other = OutputLease(str(tmp_path / "p"), "run-1", ttl_s=0.3)
    with pytest.raises(KeyError), other:
        storage.write_text(storage.join(str(tmp_path / "p"), LEASE_NAME), taken)
        time.sleep(0.5)
        raise KeyError("the step's own failure")
