"""CPU budgets from the container's limit (cgroup v1 and v2, FA_CPUS), not the node's cores."""

from __future__ import annotations

from pathlib import Path

import pytest
from fashion_attr import resources


def _v2(root: Path, rel: str, text: str) -> None:
    (root / rel).mkdir(parents=True, exist_ok=True)
    (root / rel / "cpu.max").write_text(text)


def _v1(root: Path, rel: str, quota: int, period: int = 100_000) -> None:
    folder = root / "cpu" / rel
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.cfs_quota_us").write_text(str(quota))
    (folder / "cpu.cfs_period_us").write_text(str(period))


def test_cgroup_v2_quota_of_the_process_own_cgroup(tmp_path: Path) -> None:
    _v2(tmp_path, "kubepods/pod1/c1", "250000 100000")  # limits.cpu: 2500m
    assert resources._cgroup_quota("0::/kubepods/pod1/c1\n", tmp_path) == 2.5
    _v2(tmp_path, "", "max 100000")  # a container's root without a limit
    assert resources._cgroup_quota("0::/\n", tmp_path) is None


def test_cgroup_v1_quota_and_no_limit(tmp_path: Path) -> None:
    _v1(tmp_path, "fa", 150_000)
    text = "12:memory:/x\n4:cpu,cpuacct:/fa\n"
    (tmp_path / "cpu,cpuacct").symlink_to(tmp_path / "cpu")
    assert resources._cgroup_quota(text, tmp_path) == 1.5
    _v1(tmp_path, "free", -1)
    assert resources._cgroup_quota("4:cpu:/free\n", tmp_path) is None


def test_the_budget_is_the_limit_rounded_up_and_fa_cpus_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FA_CPUS", raising=False)
    monkeypatch.setattr(resources, "_cgroup_quota", lambda text, root=None: 1.5)
    monkeypatch.setattr(resources.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert resources.cpu_budget() == 2  # 64 cores seen, 1.5 CPUs allowed
    monkeypatch.setenv("FA_CPUS", "3")
    assert resources.cpu_budget() == 3
    monkeypatch.setenv("FA_CPUS", "lots")
    with pytest.raises(ValueError, match="FA_CPUS"):
        resources.cpu_budget()


def test_workers_and_ranks_share_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FA_CPUS", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 ranks on this node
    assert resources.rank_budget() == 2
    assert resources.cap_workers(8, "loader workers") == 1  # one CPU left for the rank
    assert resources.cap_workers(8, "ingest workers", keep_one=False) == 2
    monkeypatch.setenv("FA_CPUS", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert resources.cap_workers(4, "loader workers") == 0  # decode in the process itself
    assert resources.cap_workers(0, "loader workers") == 0


def test_torch_threads_follow_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("FA_CPUS", "1")
    try:
        assert resources.apply_cpu_budget() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
