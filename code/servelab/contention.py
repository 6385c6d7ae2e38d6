"""CPU taken by *other* programs while we measure, and retrying contended points.

Shared machines (CI runners, laptops with a browser open) steal cores for
seconds at a time. We read the machine's busy time from ``/proc/stat``,
subtract what this process tree used, and call the rest *outside load*, in
cores. A point measured while outside load was high is measured again.
Taught in: chapters/00_setup.ipynb.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

import psutil

T = TypeVar("T")
_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU-seconds spent not idle by all CPUs since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    values = [int(v) for v in fields]
    # user nice system idle iowait irq softirq steal guest guest_nice;
    # guest time is already counted in user, so stop at steal.
    idle = values[3] + values[4]
    busy = sum(values[:8]) - idle
    return busy / _TICKS


def tree_cpu_seconds(root: psutil.Process | None = None) -> float:
    """CPU-seconds used by ``root`` and all its live descendants, plus reaped children."""
    root = root or psutil.Process()
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return total


class OutsideLoad:
    """Context manager measuring other programs' CPU use, in cores.

    >>> with OutsideLoad() as load:
    ...     work()
    >>> load.cores  # e.g. 0.03 on a quiet machine, 1.0 if another job took a core
    """

    def __init__(self, root: psutil.Process | None = None) -> None:
        self.root = root or psutil.Process()
        self.cores = 0.0
        self.own_cores = 0.0
        self.seconds = 0.0

    def __enter__(self) -> "OutsideLoad":
        self._t0 = time.monotonic()
        self._busy0 = machine_busy_seconds()
        self._own0 = tree_cpu_seconds(self.root)
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = max(time.monotonic() - self._t0, 1e-9)
        busy = machine_busy_seconds() - self._busy0
        own = tree_cpu_seconds(self.root) - self._own0
        self.own_cores = own / self.seconds
        # Tick granularity (10 ms) can make this slightly negative on short windows.
        self.cores = max(0.0, (busy - own) / self.seconds)


@dataclass
class Measured(Generic[T]):
    """A measurement with the outside load seen while it ran."""

    value: T
    outside_cores: float
    attempts: int
    contended: bool


def default_threshold() -> float:
    """Outside load (cores) above which a point counts as contended.

    A quarter core on a 2-core machine shifts timings by ~10%; scale with cores.
    """
    return 0.25 * max(1, min(4, len(os.sched_getaffinity(0)) // 2))


#: After this many measurements in a row stayed contended despite their retries, the outside load
#: is not a burst but a neighbour that stays (a CI job, a busy loop): retrying then only multiplies a
#: chapter's run time, so later measurements make no retries until one is quiet again.
PERSISTENT_AFTER = 3
_contended_streak = 0


def persistent_load() -> bool:
    """True while the last :data:`PERSISTENT_AFTER` measurements all stayed contended."""
    return _contended_streak >= PERSISTENT_AFTER


def measure_uncontended(
    fn: Callable[[], T],
    *,
    threshold: float | None = None,
    retries: int = 3,
    pause: float = 0.5,
) -> Measured[T]:
    """Run ``fn`` until outside load stays under ``threshold`` cores.

    Makes at most ``1 + retries`` attempts, pausing between them so a
    transient job can finish (not after the last: no attempt follows it; and
    none while :func:`persistent_load`). Returns the least contended attempt,
    flagged ``contended`` if even that one was over the threshold.
    """
    global _contended_streak
    threshold = default_threshold() if threshold is None else threshold
    if persistent_load():
        retries = 0
    best: Measured[T] | None = None
    last = retries + 1
    for attempt in range(1, last + 1):
        with OutsideLoad() as load:
            value = fn()
        current = Measured(value, load.cores, attempt, load.cores > threshold)
        if best is None or current.outside_cores < best.outside_cores:
            best = current
        if not current.contended:
            break
        if attempt < last:
            time.sleep(pause)
    assert best is not None
    best.attempts = attempt
    _contended_streak = _contended_streak + 1 if best.contended else 0
    return best
