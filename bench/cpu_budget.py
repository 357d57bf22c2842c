r"""Thread pools sized to the container's CPU limit: a step's speed under a CPU quota.

A pod limited to N CPUs on a bigger node sees the node's cores; torch then starts one
intra-op thread per core and the kernel's CFS quota throttles them all. This bench runs
the demo GAN step (``python -m fashion_attr.steps.train_gan``, ``tiny`` preset, a fixed
number of steps) inside a cgroup whose CPU quota is ``--quota`` CPUs, alternating:

- **before**: ``FA_CPUS`` set to the machine's core count, i.e. what the code did before it
  read the quota (torch threads = cores);
- **after**: no ``FA_CPUS``: the step reads the quota (:mod:`fashion_attr.resources`) and
  runs that many threads.

It prints images/s of each run and the after/before ratio (paired: A, B, A, B, ...).
Needs root and a writable cgroup v1 ``cpu`` hierarchy or cgroup v2 (it creates and
removes ``fa-bench-<pid>``); the development machine has both. Usage::

    sudo .venv/bin/python bench/cpu_budget.py --quota 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Cgroup:
    """A CPU-limited cgroup (v1 ``cpu`` controller, else v2) that child processes join."""

    def __init__(self, quota_cpus: float) -> None:
        name = f"fa-bench-{os.getpid()}"
        v1 = Path("/sys/fs/cgroup/cpu")
        if (v1 / "cpu.cfs_quota_us").exists():
            self.path = v1 / name
            self.path.mkdir()
            period = 100_000
            (self.path / "cpu.cfs_period_us").write_text(str(period))
            (self.path / "cpu.cfs_quota_us").write_text(str(int(quota_cpus * period)))
            self.procs = self.path / "tasks"
        else:
            self.path = Path("/sys/fs/cgroup") / name
            self.path.mkdir()
            (self.path / "cpu.max").write_text(f"{int(quota_cpus * 100_000)} 100000")
            self.procs = self.path / "cgroup.procs"

    def join(self) -> None:
        """Move the calling process in (a ``preexec_fn``: runs in the child)."""
        self.procs.write_text(str(os.getpid()))

    def remove(self) -> None:
        """Remove the cgroup (its processes have ended)."""
        try:
            self.path.rmdir()
        except OSError as exc:
            print(f"cpu_budget: could not remove {self.path}: {exc}", file=sys.stderr)


def run_step(data: str, out: Path, steps: int, env: dict[str, str], cgroup: Cgroup) -> float:
    """Images/s of one train_gan run of ``steps`` steps inside ``cgroup``."""
    cmd = [
        sys.executable,
        "-m",
        "fashion_attr.steps.train_gan",
        "--data",
        data,
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--no-resume",
        "--set",
        f"max_steps={steps}",
        "--set",
        "quality.enabled=false",
        "--set",
        "num_workers=0",
    ]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, preexec_fn=cgroup.join, cwd=ROOT)
    seconds = time.perf_counter() - start
    import yaml

    result = json.loads((out / "result.json").read_text())
    batch = int(yaml.safe_load(Path(result["config"]).read_text())["batch_size"])
    return result["steps"] * batch / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quota", type=float, default=1.0, help="CPUs of the cgroup's quota")
    p.add_argument("--steps", type=int, default=40, help="GAN steps per run")
    p.add_argument("--repeats", type=int, default=3, help="runs of each variant (paired)")
    p.add_argument("--images", type=int, default=600, help="demo images in the dataset")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    from fashion_attr.config import PreprocessConfig, load_config
    from fashion_attr.steps import preprocess

    work = Path(tempfile.mkdtemp(prefix="fa-bench-cpu-"))
    data = preprocess.run(
        load_config(PreprocessConfig, preset="tiny"),
        str(work / "datasets"),
        source=f"demo://?images={args.images}&seed=0",
        progress=False,
    ).uri
    base = {k: v for k, v in os.environ.items() if k != "FA_CPUS"}
    base["PYTHONPATH"] = f"{ROOT / 'components'}:{ROOT}"
    variants = {"before (threads = cores)": {**base, "FA_CPUS": str(cores)}, "after": base}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    cgroup = Cgroup(args.quota)
    try:
        for i in range(args.repeats):
            for name, env in variants.items():
                rate = run_step(data, work / f"gan-{i}", args.steps, env, cgroup)
                rates[name].append(rate)
                print(f"run {i + 1}: {name:<24} {rate:7.1f} img/s", flush=True)
    finally:
        cgroup.remove()
    print(f"\nCPU quota {args.quota:g} of {cores} cores; tiny GAN step, {args.steps} steps")
    for name, values in rates.items():
        print(
            f"{name:<24} median {statistics.median(values):7.1f} img/s "
            f"(min {min(values):.1f}, max {max(values):.1f}, n={len(values)})"
        )
    before, after = (statistics.median(v) for v in rates.values())
    print(f"after / before: {after / before:.2f}x")


if __name__ == "__main__":
    main()
