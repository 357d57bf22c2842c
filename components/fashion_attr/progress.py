"""Progress of long work on stderr: lines at an interval, or a bar in a terminal.

``FA_PROGRESS`` picks the form: ``auto`` (a tqdm bar when stderr is a terminal, else
lines), ``bar``, ``lines`` or ``off``; ``FA_PROGRESS_EVERY`` is the interval of the
lines in seconds (default 15). Lines suit logs (KFP, kubectl logs, CI): one per
interval, with the rate and the ETA, and a last one with the total time.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["CountProgress", "Progress", "progress_mode"]


def progress_mode(stream: Any, enabled: bool = True) -> str:
    """``bar``, ``lines`` or ``off`` for ``stream`` under ``FA_PROGRESS``."""
    if not enabled:
        return "off"
    mode = os.environ.get("FA_PROGRESS", "auto")
    if mode == "auto":
        isatty = getattr(stream, "isatty", lambda: False)
        mode = "bar" if isatty() else "lines"
    return mode


class Progress:
    """Progress of a training step on stderr: lines at an interval, or a bar in a terminal.

    Args:
        name: the step, printed first on each line.
        total_steps: the steps the run will reach.
        first_step: the step this process starts from (a resumed run).
        images_per_step: images per step over all ranks (for images/s).
        enabled: False on ranks other than 0.
        stream: where to print (default ``sys.stderr``).
    """

    def __init__(
        self,
        name: str,
        total_steps: int,
        first_step: int,
        images_per_step: int,
        *,
        enabled: bool = True,
        stream: Any = None,
    ) -> None:
        self.name = name
        self.total = max(total_steps, 1)
        self.first = first_step
        self.images_per_step = images_per_step
        self.stream = stream if stream is not None else sys.stderr
        self.mode = progress_mode(self.stream, enabled)
        self.every_s = float(os.environ.get("FA_PROGRESS_EVERY", "15"))
        self.t0 = time.monotonic()
        self.last_print = float("-inf")
        self.last_losses: dict[str, float] = {}
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total,
                initial=first_step,
                desc=name,
                unit="step",
                file=self.stream,
                dynamic_ncols=True,
            )

    def rate(self, step: int) -> float:
        """Images per second since this process started training."""
        return (step - self.first) * self.images_per_step / max(time.monotonic() - self.t0, 1e-9)

    def update(
        self, step: int, epoch: int, epochs: int, figures: Mapping[str, float], final: bool = False
    ) -> None:
        """Report ``step``; prints a line when the interval has passed (or at the end)."""
        if self.mode == "off":
            return
        losses = {k: v for k, v in figures.items() if k.startswith("loss") and "/" not in k}
        losses = self.last_losses = losses or self.last_losses
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=True)
            return
        now = time.monotonic()
        if not final and (
            step >= self.total  # the final line follows
            or (now - self.last_print < self.every_s and step != self.first + 1)
        ):
            return
        self.last_print = now
        done = step - self.first
        elapsed = now - self.t0
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        shown = " ".join(f"{k} {v:.4g}" for k, v in losses.items())
        print(
            f"{self.name}: step {step}/{self.total} ({100 * step / self.total:.0f}%) "
            f"epoch {min(epoch + 1, epochs)}/{epochs} | {self.rate(step):.1f} img/s | {shown} | "
            f"{'done in ' + _duration(elapsed) if final else 'ETA ' + _duration(eta)}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        """Close the bar (if any)."""
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):  # no step timed yet
        return "?"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class CountProgress:
    """Progress of work counted in items (images ingested, files hashed).

    Args:
        name: what is done, printed first on each line.
        total: items the work will reach.
        unit: the item's name (``img``).
        enabled: False turns it off.
        stream: where to print (default ``sys.stderr``).
    """

    def __init__(
        self, name: str, total: int, unit: str = "img", *, enabled: bool = True, stream: Any = None
    ) -> None:
        self.name, self.total, self.unit = name, max(total, 1), unit
        self.stream = stream if stream is not None else sys.stderr
        self.mode = progress_mode(self.stream, enabled)
        self.every_s = float(os.environ.get("FA_PROGRESS_EVERY", "15"))
        self.done = 0
        self.t0 = time.monotonic()
        self.last_print = self.t0
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, unit=unit, desc=name, file=self.stream, mininterval=1.0, smoothing=0.1
            )

    def update(self, n: int = 1) -> None:
        """``n`` more items done; prints a line when the interval has passed."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode == "lines" and time.monotonic() - self.last_print >= self.every_s:
            self._line(final=False)

    def _line(self, final: bool) -> None:
        now = time.monotonic()
        self.last_print = now
        elapsed = now - self.t0
        rate = self.done / max(elapsed, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        tail = f"done in {_duration(elapsed)}" if final else f"ETA {_duration(eta)}"
        print(
            f"{self.name}: {self.done}/{self.total} {self.unit} "
            f"({100 * self.done / self.total:.0f}%) | {rate:.1f} {self.unit}/s | {tail}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        """The last line (or close the bar)."""
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "lines":
            self._line(final=True)

    def __enter__(self) -> CountProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        elif self.bar is not None:
            self.bar.close()
