"""Why batching helps: forward-pass cost against batch size, and the roofline that predicts it.

A dense layer must read all its weights once per call, whatever the batch:
at batch 1 the call is *memory-bound* (weight bytes ÷ memory bandwidth).
The arithmetic grows with the batch: at large batches the call is
*compute-bound* (FLOPs ÷ peak FLOP/s). The roofline model (Williams,
Waterman and Patterson, 2009) takes the slower of the two; batching pays
until the batch reaches the *ridge*, where both take equally long.
Taught in: chapters/04_batching.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from servelab import claims, contention, hardware, microbench, plots, stats
from servelab.apps.mlp import build_mlp, forward_function, mlp_flops, mlp_weight_bytes
from servelab.progress import progress


@dataclass(frozen=True)
class ForwardCost:
    """The median time of one forward pass of a batch, at a torch thread count."""

    batch: int
    threads: int
    seconds: float
    flops: int
    weight_bytes: int
    outside_cores: float
    contended: bool

    @property
    def per_sample_s(self) -> float:
        """Seconds of forward pass per input row."""
        return self.seconds / self.batch

    @property
    def samples_per_s(self) -> float:
        """The highest rate one forward loop can serve at this batch size."""
        return self.batch / self.seconds

    @property
    def gflops(self) -> float:
        """Achieved GFLOP/s."""
        return self.flops / self.seconds / 1e9

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte of weights read (batch ÷ 2 for float32)."""
        return self.flops / self.weight_bytes


def objective_ms(base_ms: float, *, batch: int = 32, passes: float = 3.0) -> int:
    """The p99 objective for the batching chapters on this machine: ``base_ms``, or ``passes`` × one
    forward pass at ``batch`` (1 thread) where that is longer.

    A request that arrives while a batch runs waits for it and then rides in the next: about two pass
    times, plus its queue. Where one pass at the chapters' ``max_batch`` takes over a third of the
    objective (a slow CPU: 151 ms for batch 32 on one 2-core AMD EPYC), no batching server can meet
    it, and the chapters would compare batching against nothing. Their objective then grows with the
    machine, so the comparison stays about batching.
    """
    pass_s = measure_forward_costs([batch], [1], repeats=3)[0].seconds
    return round(max(base_ms, passes * pass_s * 1e3))  # whole ms: the prose prints it


def measure_forward_costs(
    batch_sizes: Sequence[int],
    threads: Sequence[int] = (1,),
    *,
    width: int = 4096,
    depth: int = 4,
    repeats: int = 3,
    max_seconds: float = 0.5,
    kernel: str = "dense",
) -> list[ForwardCost]:
    """Time the MLP's forward pass at every batch size and torch thread count.

    Each point is the median of ``repeats`` calls after a warm-up call, and is
    measured again if other programs loaded the machine meanwhile. torch's
    thread count is restored afterwards. ``kernel``: how the pass multiplies
    (:data:`servelab.apps.mlp.KERNELS`), as a server started with the same one does.
    """
    import torch

    model = forward_function(build_mlp(width, depth), kernel)
    points = []
    grid = [(n_threads, batch) for n_threads in threads for batch in batch_sizes]
    for n_threads, batch in progress(grid, desc="forward-pass costs", unit="batch size"):
        x = torch.randn(batch, width)

        def forward() -> float:
            with torch.inference_mode():
                return stats.time_call(lambda: model(x), repeats=repeats, max_seconds=max_seconds).median

        with hardware.torch_threads(n_threads):
            m = contention.measure_uncontended(forward, retries=2, pause=0.2)
        points.append(ForwardCost(batch, n_threads, m.value, mlp_flops(batch, width, depth),
                                  mlp_weight_bytes(width, depth), m.outside_cores, m.contended))  # fmt: skip
    return points


def memory_bandwidth_gbs(nbytes: int = 256 * 2**20, threads: int = 1) -> float:
    """Read bandwidth in GB/s: summing a float32 array far bigger than the caches.

    This is how fast one forward pass can stream its weights; 256 MiB matches
    the default model, so the array cannot hide in any cache.
    """
    import torch

    with hardware.torch_threads(threads):
        data = torch.ones(nbytes // 4)
        timing = stats.time_call(data.sum, warmup=1, repeats=5, max_seconds=0.5)
    return nbytes / timing.median / 1e9


@dataclass(frozen=True)
class Roofline:
    """The two ceilings of one forward pass: peak arithmetic and memory bandwidth."""

    peak_gflops: float
    bandwidth_gbs: float

    @classmethod
    def measure(cls, threads: int = 1, *, matmul_size: int = 1024) -> "Roofline":
        """Peak from a square matmul, bandwidth from a big sum, both at ``threads`` threads."""
        peak = microbench.measure_matmul_gflops(matmul_size, threads)
        return cls(peak_gflops=peak, bandwidth_gbs=memory_bandwidth_gbs(threads=threads))

    @property
    def ridge_intensity(self) -> float:
        """FLOPs per byte where the memory time equals the compute time."""
        return self.peak_gflops / self.bandwidth_gbs

    def ridge_batch(self, bytes_per_weight: int = 4) -> float:
        """The batch size at the ridge: below it, a bigger batch is nearly free."""
        return self.ridge_intensity * bytes_per_weight / 2  # 2 FLOPs per weight per row

    def attainable_gflops(self, intensity: float) -> float:
        """The roof: min(peak, bandwidth × intensity)."""
        return min(self.peak_gflops, self.bandwidth_gbs * intensity)

    def forward_seconds(self, batch: int, width: int = 4096, depth: int = 4) -> float:
        """Predicted forward time: the slower of reading the weights and doing the arithmetic."""
        return max(mlp_weight_bytes(width, depth) / (self.bandwidth_gbs * 1e9),
                   mlp_flops(batch, width, depth) / (self.peak_gflops * 1e9))  # fmt: skip


def claim_batch_halves_cost(batch_one: ForwardCost, batch_large: ForwardCost, *, bound: float = 2.0) -> claims.Claim:
    """A large batch costs at most half as much per input as batch 1 (the weights are read once for all)."""
    gain = batch_one.per_sample_s / batch_large.per_sample_s
    return claims.at_least(
        "ch4.batch_halves_cost", f"A batch of {batch_large.batch} costs at most half as much per input as batch 1.",
        gain, bound, fail=f"a batch of {batch_large.batch} cost {batch_large.per_sample_s * 1e3:.2f} ms per input against "
                          f"{batch_one.per_sample_s * 1e3:.2f} ms at batch 1 ({gain:.1f}× less); batching should at least halve it")


def plot_batch_costs(costs: Sequence[ForwardCost], roofs: dict[int, "Roofline"]) -> "plots.Figure":
    """Forward time per input against batch size (left) and the one-thread roofline (right)."""
    threads = sorted(roofs)
    batches = sorted({c.batch for c in costs})
    fig, (ax1, ax2) = plots.figure(ncols=2)
    for n, color in zip(threads, (plots.COLORS["batched"], plots.COLORS["threads"])):
        rows = [c for c in costs if c.threads == n]
        ax1.plot([c.batch for c in rows], [c.per_sample_s * 1e3 for c in rows], "o-", color=color,
                 label=f"measured, {n} thread(s)")
        ax1.plot(batches, [roofs[n].forward_seconds(b) / b * 1e3 for b in batches], "--", color=color, alpha=0.7,
                 label=f"roofline, {n} thread(s)")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    plots.plain_log_axis(ax1.xaxis)
    plots.plain_log_axis(ax1.yaxis, [0.2, 0.5, 1, 2, 5, 10, 20, 50])
    ax1.legend(fontsize=8)
    plots.label(ax1, "batch size (inputs per forward pass)", "forward time per input (ms)", "Cost per input")
    _plot_roofline(ax2, [c for c in costs if c.threads == 1], roofs[1], max(r.ridge_intensity for r in roofs.values()))
    plots.caption(fig, "Median of repeated forward passes of 4 × Linear(4096, 4096), float32, in process. "
                  "Roofline: the larger of bytes ÷ bandwidth and FLOPs ÷ peak.")
    return fig


def _plot_roofline(ax, one_thread: Sequence[ForwardCost], roof: "Roofline", ridge_max: float) -> None:
    intensity = np.geomspace(0.25, 4 * ridge_max, 100)
    ax.plot(intensity, [roof.attainable_gflops(i) for i in intensity], color=plots.COLORS["predicted"],
            label="roofline, 1 thread")
    ax.plot([c.arithmetic_intensity for c in one_thread], [c.gflops for c in one_thread], "o",
            color=plots.COLORS["batched"], label="forward pass, 1 thread")
    for c in one_thread:
        ax.annotate(str(c.batch), (c.arithmetic_intensity, c.gflops), textcoords="offset points", xytext=(4, -10),
                    fontsize=8)
    ax.axvline(roof.ridge_intensity, color=plots.COLORS["predicted"], lw=0.8, ls=":")
    ax.annotate(f"ridge: batch {roof.ridge_batch():.0f}", (roof.ridge_intensity, roof.peak_gflops),
                textcoords="offset points", xytext=(6, -14), fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plots.plain_log_axis(ax.xaxis)
    plots.plain_log_axis(ax.yaxis)
    ax.legend(fontsize=8, loc="lower right")
    plots.label(ax, "arithmetic intensity (FLOP per weight byte)", "achieved GFLOP/s", "Roofline (labels: batch)")
