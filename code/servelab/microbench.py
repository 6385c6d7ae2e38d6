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


def measure_matmul_gflops(n: int = 1024, threads: int = 1, *, max_seconds: float = 1.0) -> float:
    """Median GFLOP/s of an ``n``×``n`` float32 ``torch.mm`` using ``threads`` intra-op threads.

    The previous torch thread count is restored afterwards, so calling this
    does not change later measurements in the same process.
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
        timing = stats.repeat_until_stable(lambda: torch.mm(a, b, out=out), max_seconds=max_seconds)
    finally:
        torch.set_num_threads(previous)
    return matmul_flops(n) / timing.median / 1e9


@dataclass(frozen=True)
class ThreadPoint:
    """Matmul throughput at one thread count, with the outside load seen while measuring."""

    threads: int
    gflops: float
    outside_cores: float
    contended: bool


def matmul_thread_scaling(
    n: int = 1024, max_threads: int | None = None, *, max_seconds: float = 1.0
) -> list[ThreadPoint]:
    """Matmul GFLOP/s at 1..``max_threads`` threads (default: the usable cores).

    Each point is retried while other programs load the machine
    (:func:`servelab.contention.measure_uncontended`).
    """
    max_threads = max_threads or hardware.usable_cores()
    points = []
    for threads in range(1, max_threads + 1):
        measured = contention.measure_uncontended(
            lambda: measure_matmul_gflops(n, threads, max_seconds=max_seconds)
        )
        points.append(ThreadPoint(threads, measured.value, measured.outside_cores, measured.contended))
    return points
