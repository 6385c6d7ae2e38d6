"""Small compute benchmarks that say how fast this machine is.

The setup chapter measures dense float32 matrix multiply throughput
(GFLOP/s) at 1..N torch threads: the number every later model latency is
bounded by. Taught in: chapters/00_setup.ipynb.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from servelab import claims, contention, hardware


def matmul_flops(n: int) -> int:
    """Floating-point operations in one n×n by n×n matrix multiply (a multiply and an add per term)."""
    return 2 * n**3


def gflops(n: int, seconds: float) -> float:
    """Throughput in GFLOP/s of one ``n``×``n`` matmul that took ``seconds``."""
    return matmul_flops(n) / seconds / 1e9


def _matmul(n: int) -> Callable[[], object]:
    """A zero-argument function multiplying two fixed random ``n``×``n`` float32 matrices."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator)
    b = torch.randn(n, n, generator=generator)
    out = torch.empty(n, n)
    return lambda: torch.mm(a, b, out=out)


def _seconds_per_call(fn: Callable[[], object], threads: int, calls: int) -> float:
    """Mean seconds per call of ``fn`` over ``calls`` calls with ``threads`` torch threads."""
    with hardware.torch_threads(threads):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls


def _calls_per_sample(fn: Callable[[], object], threads: int, sample_seconds: float) -> int:
    """How many calls last about ``sample_seconds`` (after one warm-up call)."""
    _seconds_per_call(fn, threads, 1)
    one = _seconds_per_call(fn, threads, 1)
    return max(1, round(sample_seconds / max(one, 1e-6)))


def measure_matmul_gflops(
    n: int = 1024, threads: int = 1, *, samples: int = 10, sample_seconds: float = 0.05
) -> float:
    """Median GFLOP/s of an ``n``×``n`` float32 ``torch.mm`` using ``threads`` intra-op threads.

    The previous torch thread count is restored afterwards.
    """
    if n < 1 or threads < 1:
        raise ValueError(f"need n >= 1 and threads >= 1, got n={n}, threads={threads}")
    fn = _matmul(n)
    calls = _calls_per_sample(fn, threads, sample_seconds)
    seconds = [_seconds_per_call(fn, threads, calls) for _ in range(samples)]
    return gflops(n, statistics.median(seconds))


@dataclass(frozen=True)
class ThreadPoint:
    """Matmul throughput at one thread count, with the outside load seen while measuring."""

    threads: int
    gflops: float  # from the median round
    peak_gflops: float  # from the fastest round: what the cores do when nothing interrupts them
    outside_cores: float  # the most any round saw other programs take
    contended: bool  # some round stayed contended after its retries


def matmul_thread_scaling(
    n: int = 1024, max_threads: int | None = None, *, rounds: int = 8, sample_seconds: float = 0.1
) -> list[ThreadPoint]:
    """Matmul GFLOP/s at 1..``max_threads`` threads (default: the usable cores).

    Thread counts are measured side by side: each round takes one sample (about
    ``sample_seconds``) at every thread count, so a slow spell on a shared machine
    lands on all of them rather than on one point. A round during which other
    programs took CPU is measured again (:func:`servelab.contention.measure_uncontended`).
    The previous torch thread count is restored afterwards.
    """
    max_threads = max_threads or hardware.usable_cores()
    if n < 1 or max_threads < 1 or rounds < 1:
        raise ValueError(f"need n, max_threads and rounds >= 1, got {n}, {max_threads}, {rounds}")
    counts = range(1, max_threads + 1)
    fn = _matmul(n)
    calls = {t: _calls_per_sample(fn, t, sample_seconds) for t in counts}
    one_round = lambda: {t: _seconds_per_call(fn, t, calls[t]) for t in counts}  # noqa: E731
    # Two retries a round bound the worst case on a busy machine to about 3 × rounds samples.
    measured = [contention.measure_uncontended(one_round, retries=2) for _ in range(rounds)]
    outside = max(m.outside_cores for m in measured)
    contended = any(m.contended for m in measured)
    points = []
    for t in counts:
        seconds = [m.value[t] for m in measured]
        median, fastest = gflops(n, statistics.median(seconds)), gflops(n, min(seconds))
        points.append(ThreadPoint(t, median, fastest, outside, contended))
    return points


# ---------------------------------------------------------------- claims (chapter 0's check cell)


def claim_sweep_covers_cores(points: Sequence[ThreadPoint], cores: int) -> claims.Claim:
    """The sweep measured every thread count from 1 to the usable cores."""
    counts = [p.threads for p in points]
    return claims.condition(
        "ch0.sweep_covers_cores", "The matmul sweep measures every thread count from 1 to the usable cores.",
        counts == list(range(1, cores + 1)), measured=f"threads {counts}", bound=f"1..{cores}",
        fail=f"the sweep should measure every thread count from 1 to the {cores} usable cores, it measured {counts}")


def claim_single_thread_gflops(single: ThreadPoint, floor: float = 1.0) -> claims.Claim:
    """One thread multiplies at more than ``floor`` GFLOP/s: anything less means a broken measurement."""
    return claims.condition(
        "ch0.single_thread_gflops", f"One thread multiplies matrices at more than {floor:g} GFLOP/s.",
        single.gflops > floor, measured=claims.fmt(single.gflops, " GFLOP/s", 1),
        bound=f"> {claims.fmt(floor, ' GFLOP/s', 1)}",
        fail=f"one thread multiplied at only {single.gflops:.2f} GFLOP/s; any CPU from the last 20 years does far "
             "more than 1 GFLOP/s, so the measurement (or torch's BLAS) is broken")


def claim_matmul_scales(points: Sequence[ThreadPoint], factor: float = 1.3) -> claims.Claim:
    """With all cores the fastest matmul round is more than ``factor`` times one thread's.

    Judged on the fastest rounds (interruptions only ever slow a matmul down), and only on a quiet
    machine: a slow spell on the 1-thread samples would inflate the ratio, so a contended sweep is
    no evidence either way.
    """
    claim_id, sentence = "ch0.matmul_scales", f"A large matmul on all cores beats one thread by more than {factor:g}×."
    if len(points) < 2:
        return claims.skipped(claim_id, sentence, kind="one core", reason="only 1 usable core: nothing to compare")
    if any(p.contended for p in points):
        return claims.skipped(claim_id, sentence, kind="contended",
                              reason=f"other programs took up to {max(p.outside_cores for p in points):.2f} cores "
                                     "during the sweep, after retries")
    gain = max(p.peak_gflops for p in points) / points[0].peak_gflops
    return claims.condition(
        claim_id, sentence, gain > factor, measured=claims.fmt(gain), bound=f"> {claims.fmt(factor)}",
        fail=f"with up to {len(points)} threads the fastest matmul was only {gain:.2f}× one thread on a quiet "
             f"machine; a large matmul should use several cores. Measured: {list(points)}")
