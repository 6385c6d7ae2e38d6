"""Latency statistics: percentiles, summaries and repeat-until-stable timing.

Taught in: chapters/01_latency.ipynb.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with numpy's default linear interpolation.

    Infinite values (requests that never finished) are kept: they push the
    tail to infinity rather than silently disappearing.
    """
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("percentile of an empty sample")
    if np.isinf(arr).any():
        # np.percentile interpolates inf - inf into nan; sort-based rank is safe.
        arr = np.sort(arr)
        rank = q / 100 * (arr.size - 1)
        lo, hi = math.floor(rank), math.ceil(rank)
        if math.isinf(arr[hi]):
            return math.inf
        return float(arr[lo] + (arr[hi] - arr[lo]) * (rank - lo))
    return float(np.percentile(arr, q))


@dataclass(frozen=True)
class LatencySummary:
    """The numbers a latency sample is usually reduced to (same unit as the input)."""

    n: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    def as_ms(self) -> dict[str, float]:
        """Seconds → milliseconds, for display."""
        return {k: (v * 1e3 if k != "n" else v) for k, v in self.__dict__.items()}


def summarize(latencies: Sequence[float]) -> LatencySummary:
    """Count, mean, p50, p95, p99 and max of a latency sample."""
    arr = np.asarray(latencies, dtype=float)
    return LatencySummary(
        n=int(arr.size),
        mean=float(arr.mean()),
        p50=percentile(arr, 50),
        p95=percentile(arr, 95),
        p99=percentile(arr, 99),
        max=float(arr.max()),
    )


@dataclass
class Timing:
    """Repeated timings of one piece of work, in seconds."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def spread(self) -> float:
        """Relative inter-quartile range: (q75 - q25) / median."""
        q25, q75 = np.percentile(self.samples, [25, 75])
        return float((q75 - q25) / self.median) if self.median > 0 else 0.0

    @property
    def best(self) -> float:
        return float(min(self.samples))


def time_call(
    fn: Callable[[], object],
    *,
    warmup: int = 1,
    repeats: int = 5,
    max_seconds: float | None = None,
) -> Timing:
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed calls.

    ``max_seconds`` bounds the total (at least one timed call always runs).
    """
    for _ in range(warmup):
        fn()
    timing = Timing()
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        timing.samples.append(time.perf_counter() - t0)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return timing


def fastest_seconds(fn: Callable[[], object], *, tries: int = 10, warmup: int = 2) -> float:
    """The fastest of ``tries`` timed calls of ``fn``, after ``warmup`` untimed ones.

    A rate is what the machine can do, and outside work only ever slows a call
    down, so we keep the fastest.
    """
    return time_call(fn, warmup=warmup, repeats=tries).best


def repeat_until_stable(
    fn: Callable[[], object],
    *,
    warmup: int = 1,
    min_repeats: int = 3,
    max_repeats: int = 20,
    rel_spread: float = 0.10,
    max_seconds: float = 5.0,
    inner: int | None = None,
) -> Timing:
    """Time ``fn`` until the relative IQR falls below ``rel_spread``.

    Each sample calls ``fn`` ``inner`` times and records the mean, so work much
    shorter than the timer's resolution is still measured well. ``inner=None``
    picks it so one sample lasts about 5 ms. Stops after ``max_repeats``
    samples or ``max_seconds``, whichever comes first.
    """
    for _ in range(warmup):
        fn()
    if inner is None:
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-7)
        inner = max(1, min(10_000, int(0.005 / one)))
    timing = Timing()
    start = time.perf_counter()
    while len(timing.samples) < max_repeats:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        timing.samples.append((time.perf_counter() - t0) / inner)
        enough = len(timing.samples) >= min_repeats
        if enough and (timing.spread <= rel_spread or time.perf_counter() - start > max_seconds):
            break
    return timing


def ratio(a: float, b: float) -> float:
    """``a / b``, infinite when ``b`` is 0 (a rate of 0 within an SLO makes any gain infinite)."""
    return a / b if b else float("inf")
