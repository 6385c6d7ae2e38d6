"""Small compute benchmarks that say how fast this machine is.

The setup chapter measures dense float32 matrix multiply throughput
(GFLOP/s) at 1..N torch threads: the number every later model latency is
bounded by. Taught in: chapters/00_setup.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

from servelab import contention, hardware, stats


def matmul_flops(n: int) -> int:
    """Floating-point operations in one n×n by n×n matrix multiply (a multiply and an add per term)."""
    return 2 * n**3


def time_matmul(
    n: int = 1024, threads: int = 1, *, max_seconds: float = 2.0, sample_seconds: float = 0.05
) -> stats.Timing:
    """Seconds per ``n``×``n`` float32 ``torch.mm`` using ``threads`` intra-op threads.

    Each sample averages enough calls to last ``sample_seconds`` and at least 10 samples are taken,
    so a point spans half a second or more: long enough for
    :class:`servelab.contention.OutsideLoad`, which counts in 10 ms ticks, to see a burst
    from another program. The previous torch thread count is restored afterwards.
    """
    import torch

    if n < 1 or threads < 1:
        raise ValueError(f"need n >= 1 and threads >= 1, got n={n}, threads={threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=generator)
        b = torch.randn(n, n, generator=generator)
        out = torch.empty(n, n)
        one_call = stats.time_call(lambda: torch.mm(a, b, out=out), warmup=1, repeats=1).best
        inner = max(1, round(sample_seconds / max(one_call, 1e-6)))
        return stats.repeat_until_stable(
            lambda: torch.mm(a, b, out=out),
            warmup=0,
            inner=inner,
            min_repeats=10,
            max_repeats=30,
            rel_spread=0.05,
            max_seconds=max_seconds,
        )
    finally:
        torch.set_num_threads(previous)


def gflops(n: int, seconds: float) -> float:
    """Throughput in GFLOP/s of one ``n``×``n`` matmul that took ``seconds``."""
    return matmul_flops(n) / seconds / 1e9


def measure_matmul_gflops(n: int = 1024, threads: int = 1, **timing_options: float) -> float:
    """Median GFLOP/s of an ``n``×``n`` float32 ``torch.mm`` using ``threads`` threads.

    ``timing_options`` (``max_seconds``, ``sample_seconds``) pass through to :func:`time_matmul`.
    """
    return gflops(n, time_matmul(n, threads, **timing_options).median)


@dataclass(frozen=True)
class ThreadPoint:
    """Matmul throughput at one thread count, with the outside load seen while measuring."""

    threads: int
    gflops: float  # from the median repetition
    peak_gflops: float  # from the fastest repetition: what the cores can do when nothing interrupts
    outside_cores: float
    contended: bool


def matmul_thread_scaling(
    n: int = 1024, max_threads: int | None = None, **timing_options: float
) -> list[ThreadPoint]:
    """Matmul GFLOP/s at 1..``max_threads`` threads (default: the usable cores).

    Each point is retried while other programs load the machine
    (:func:`servelab.contention.measure_uncontended`). ``timing_options`` pass through
    to :func:`time_matmul`.
    """
    max_threads = max_threads or hardware.usable_cores()
    points = []
    for threads in range(1, max_threads + 1):
        measured = contention.measure_uncontended(lambda: time_matmul(n, threads, **timing_options))
        median, peak = gflops(n, measured.value.median), gflops(n, measured.value.best)
        points.append(ThreadPoint(threads, median, peak, measured.outside_cores, measured.contended))
    return points
