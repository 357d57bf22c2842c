"""How many CPUs this process may use: the container's limit, not the node's core count.

A pod limited to 4 CPUs on a 64-core node sees 64 cores through ``os.cpu_count()``;
torch would start 64 intra-op threads, the loader and ingest as many workers, and the
CFS quota would throttle them all (measured on the 2-core development machine with one
core busy: the demo GAN step fell from 350-420 to 9-25 images/s). :func:`cpu_budget`
reads the limit the kernel enforces, in this order:

1. ``FA_CPUS`` (an explicit override, a positive number);
2. the cgroup CPU quota: cgroup v2 ``cpu.max`` (``<quota> <period>``), or cgroup v1
   ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, of this process's own cgroup (read from
   ``/proc/self/cgroup``) or of the cgroup root a container sees;
3. the CPUs this process may be scheduled on (``os.sched_getaffinity``).

A fractional quota rounds up (1.5 CPUs: 2 threads). :func:`apply_cpu_budget` sets
torch's thread count from it; the data loader and ingest cap their worker counts with it.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

__all__ = ["CPU_ENV", "apply_cpu_budget", "cap_workers", "cpu_budget", "rank_budget"]

log = logging.getLogger(__name__)
CPU_ENV = "FA_CPUS"
_CGROUP = Path("/sys/fs/cgroup")


def _quota_v2(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _quota_v1(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def _cgroup_quota(proc_cgroup: str, root: Path = _CGROUP) -> float | None:
    """The CPU quota of the cgroup named in ``/proc/self/cgroup`` text, or None."""
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        rel = path.strip().lstrip("/")
        if hierarchy == "0" and controllers == "":
            for folder in (root / rel, root):
                quota = _quota_v2(folder)
                if quota is not None:
                    return quota
        elif "cpu" in controllers.split(","):
            for mount in (root / controllers, root / "cpu", root / "cpu,cpuacct"):
                for folder in (mount / rel, mount):
                    quota = _quota_v1(folder)
                    if quota is not None:
                        return quota
    return None


def cpu_budget() -> int:
    """The CPUs this process may use (see the module docstring), at least 1.

    Raises:
        ValueError: ``FA_CPUS`` is set but not a positive number (names the fix).
    """
    configured = os.environ.get(CPU_ENV, "").strip()
    if configured:
        try:
            value = float(configured)
        except ValueError:
            value = 0.0
        if not value > 0:
            raise ValueError(f"{CPU_ENV}={configured!r}. Fix: set it to a positive number of CPUs")
        return max(1, math.ceil(value))
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    try:
        quota = _cgroup_quota(Path("/proc/self/cgroup").read_text())
    except OSError:
        quota = None
    if quota is None:
        return max(1, affinity)
    return max(1, min(affinity, math.ceil(quota)))


def rank_budget() -> int:
    """This process's share of :func:`cpu_budget` when ``torchrun`` runs several on a node."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cpu_budget() // max(local_world, 1))


def cap_workers(wanted: int, what: str, *, keep_one: bool = True) -> int:
    """``wanted`` worker processes, at most this process's CPU share (less one for itself).

    Args:
        wanted: the configured count.
        what: the pool, for the log line (``loader workers``).
        keep_one: leave one CPU to the process that feeds the workers.
    """
    cap = max(rank_budget() - (1 if keep_one else 0), 0 if keep_one else 1)
    if wanted > cap:
        log.info("%s: %d -> %d (CPU budget %d)", what, wanted, cap, rank_budget())
        return cap
    return wanted


def apply_cpu_budget() -> int:
    """Size torch's intra-op thread pool to this process's CPU share; return it."""
    import torch

    budget = rank_budget()
    if torch.get_num_threads() != budget:
        log.info("CPU budget %d (container limit or %s): torch threads %d -> %d", budget,
                 CPU_ENV, torch.get_num_threads(), budget)  # fmt: skip
        torch.set_num_threads(budget)
    return budget
