"""What chapter 3 shows: its figures, and the sentences that read its numbers.

Part of :mod:`servelab.dag`. Taught in: chapters/03_dag.ipynb.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from servelab import plots
from servelab.dag.cost_model import Machine, ModelCosts, predict_seconds
from servelab.dag.depth import DepthPoint, LineFit
from servelab.dag.latency import LatencyPoint, lookup, speedup


def gains_by_length(points: Sequence[LatencyPoint], models: Sequence[str], lengths: Sequence[int],
                    cores: int) -> dict[str, list[float]]:
    """Each model's speedup from 1 thread to ``cores`` threads, at each length."""
    return {m: [speedup(points, m, T, cores) for T in lengths] for m in models}


def describe_gains(gains: dict[str, list[float]], lengths: Sequence[int], cores: int) -> str:
    """The paragraph that reads the speedups, built from the numbers so it never contradicts them."""
    if cores < 2:
        return ("With one usable core there is no second thread to compare, so this run cannot show how "
                "the models use more cores. Run the chapter on all cores to see it.")
    loop, bert = gains["unrolled"], gains["bert"]
    if loop[-1] >= 1.25:
        how = (f"On this CPU the loop gained too, {loop[-1]:.2f}×: each step's matrix-vector product (one row "
               "through the cell's weights) is big enough that PyTorch splits it over the cores. On other CPUs, "
               "with other caches and BLAS builds, the same step stays on one core and the loop gains nothing.")
    elif loop[-1] <= 1.1:
        how = (f"On this CPU the loop gained almost nothing, {loop[-1]:.2f}×: PyTorch runs each step's one-row "
               "product on one core, and nothing else in the step can run beside it. On other CPUs, with other "
               "caches and BLAS builds, the same step does split over the cores.")
    else:
        how = (f"On this CPU the loop gained {loop[-1]:.2f}×: each step's one-row product splits over the cores "
               "only in part. How much it splits depends on the CPU's caches and BLAS, not on the model.")
    shape = (f"What depth predicts is the *shape*. The loop's gain was {loop[1]:.2f}× at T = {lengths[1]} and "
             f"{loop[-1]:.2f}× at T = {lengths[-1]}: more cores can make each step shorter, never the chain of T "
             f"steps, so the gain cannot grow with the input. BERT's gain went from {bert[0]:.2f}× at "
             f"T = {lengths[0]} to {bert[-1]:.2f}× at T = {lengths[-1]}: a longer input gives each of its ops more "
             "rows to share, so its graph grows wider with T, not deeper.")
    return how + " " + shape


def plot_latency(points: Sequence[LatencyPoint], lengths: Sequence[int], labels: dict[str, str],
                 colors: dict[str, str], crossovers: dict[int, float | None]) -> "plots.Figure":
    """Latency against input length for every model, at 1 thread (dashed) and all cores (solid)."""
    fig, ax = plots.figure()
    for name in labels:
        for n in sorted({p.threads for p in points}):
            pts = [lookup(points, name, T, n) for T in lengths]
            plots.line_with_contended(ax, lengths, [p.seconds * 1e3 for p in pts], [p.contended for p in pts],
                                      color=colors[name], marker="o" if n > 1 else "s", ls="-" if n > 1 else "--",
                                      alpha=1 if n > 1 else 0.6, label=f"{labels[name]}, {n} thread(s)")
    for n, T in crossovers.items():
        if T and lengths[0] < T:
            ax.axvline(T, color=plots.COLORS["predicted"], lw=0.8, ls=":")
            ax.annotate(f" loop = BERT,\n {n} thread(s)", (T, ax.get_ylim()[1]), fontsize=8, va="top")
    ax.set(xscale="log", yscale="log")
    ax.set_xticks(lengths, [str(T) for T in lengths], minor=False)
    ax.legend(fontsize=7.5, loc="lower right")
    plots.label(ax, "input length T (tokens)", "latency (ms, median)", "Next-token latency against input length")
    plots.caption(fig, "Dashed: 1 thread; solid: all usable cores. Dotted line: where BERT overtakes the loop. "
                  + plots.contended_note(points))
    return fig


def plot_gains(gains: dict[str, list[float]], lengths: Sequence[int], labels: dict[str, str],
               colors: dict[str, str], cores: int) -> "plots.Figure":
    """Each model's speedup from 1 thread to all cores, against input length."""
    fig, ax = plots.figure()
    for name, values in gains.items():
        ax.plot(lengths, values, "o-", color=colors[name], label=labels[name])
    ax.axhline(1, color=plots.COLORS["predicted"], lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xticks(lengths, [str(T) for T in lengths], minor=False)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    plots.label(ax, "input length T (tokens)", f"speedup, 1 → {cores} threads (×)",
                "What more cores buy, against input length")
    plots.caption(fig, "Speedup = latency on 1 thread ÷ latency on all usable cores. Dotted: no gain.")
    return fig


def depth_family_color(name: str) -> str:
    """The house colour of a traced model by its family (RNN loop, fused LSTM, BERT)."""
    families = {"RNN loop": plots.COLORS["rnn"], "fused": plots.COLORS["rnn_fused"], "BERT": plots.COLORS["bert"]}
    return next(color for key, color in families.items() if name.startswith(key))


def plot_depths(depths: Sequence[DepthPoint], fits: dict[str, LineFit]) -> "plots.Figure":
    """Traced depth against input length for every model, with its fitted line a·T + b."""
    fig, ax = plots.figure()
    grid = np.geomspace(1, 512, 60)
    for name, fit in fits.items():
        pts = [p for p in depths if p.model == name]
        color, aten = depth_family_color(name), "ATen" in name
        ax.plot(grid, np.clip(fit(grid), 1, None), "--" if aten else "-", color=color, lw=1, alpha=0.7)
        ax.plot([p.T for p in pts], [p.depth for p in pts], "o", color=color, mfc="white" if aten else color,
                label=f"{name}: {fit.slope:.0f}·T + {fit.intercept:.0f}")
    ax.set(xscale="log", yscale="log")
    ax.legend(fontsize=8)
    plots.label(ax, "input length T (tokens)", "depth (ops on the longest path)", "Graph depth against input length")
    plots.caption(fig, "Markers: traced graphs. Lines: the fitted a·T + b (dashed: core ATen, extrapolated).")
    return fig


def plot_model(points: Sequence[LatencyPoint], costs: dict[str, ModelCosts], machine: Machine,
               lengths: Sequence[int], labels: dict[str, str], colors: dict[str, str]) -> "plots.Figure":
    """Measured latency (dots) against the latency model (lines), one panel per thread count."""
    threads = sorted({p.threads for p in points})
    fig, axes = plots.figure(ncols=len(threads), sharey=True)
    axes = axes if len(threads) > 1 else [axes]
    grid = np.geomspace(lengths[0], lengths[-1], 50)
    for ax, n in zip(axes, threads):
        for name in labels:
            pts = [lookup(points, name, T, n) for T in lengths]
            plots.line_with_contended(ax, lengths, [p.seconds * 1e3 for p in pts], [p.contended for p in pts],
                                      color=colors[name], ls="none", label=f"{labels[name]} measured")
            ax.plot(grid, predict_seconds(costs[name], grid, machine, n) * 1e3, "-", color=colors[name], lw=1)
        ax.set(xscale="log", yscale="log")
        ax.set_xticks(lengths, [str(T) for T in lengths])
        plots.label(ax, "input length T (tokens)", "latency (ms)", f"{n} thread(s): measured (dots), model (lines)")
    axes[0].legend(fontsize=7.5)
    plots.caption(fig, "Model: fixed cost + T × step time + matmul FLOPs ÷ (cores × peak). " + plots.contended_note(points))
    return fig


def plot_predictions(costs: dict[str, ModelCosts], machines: Sequence[Machine], colors: dict[str, str]) -> "plots.Figure":
    """The latency model's curves for the loop and BERT on machines we do not have (the last one GPU-class)."""
    fig, ax = plots.figure()
    grid = np.geomspace(1, 4096, 80)
    for m, ls in ((machines[-2], "-"), (machines[-1], "--")):
        ax.plot(grid, predict_seconds(costs["unrolled"], grid, m) * 1e3, color=colors["unrolled"], lw=2.5, ls=ls,
                label=f"LSTMCell loop, {'any CPU here' if ls == '-' else m.name}")
    for m, alpha in zip(machines, np.linspace(0.35, 1.0, len(machines))):
        ax.plot(grid, predict_seconds(costs["bert"], grid, m) * 1e3, color=colors["bert"], alpha=alpha,
                ls="-" if "GPU" not in m.name else "--", label=f"BERT-4L, {m.name}")
    ax.set(xscale="log", yscale="log")
    ax.legend(fontsize=8)
    plots.label(ax, "input length T (tokens)", "predicted latency (ms)", "The latency model on machines we do not have")
    plots.caption(fig, "Rates measured here; core counts (and the GPU-class rates) assumed.")
    return fig


def plot_real_bert(points: Sequence[LatencyPoint], lengths: Sequence[int], depths: Sequence[int],
                   color: str) -> "plots.Figure":
    """A real BERT's latency against input length at 1 thread and all cores."""
    fig, ax = plots.figure()
    for n in sorted({p.threads for p in points}):
        pts = [lookup(points, "MiniLM", T, n) for T in lengths]
        plots.line_with_contended(ax, lengths, [p.seconds * 1e3 for p in pts], [p.contended for p in pts], color=color,
                                  marker="o" if n > 1 else "s", ls="-" if n > 1 else "--",
                                  label=f"all-MiniLM-L6-v2, {n} thread(s)")
    ax.set(xscale="log", yscale="log")
    ax.set_xticks(lengths, [str(T) for T in lengths])
    ax.tick_params(axis="x", which="minor", labelbottom=False)
    ax.legend()
    plots.label(ax, "input length T (tokens)", "latency (ms, median)", "A real BERT: latency up to its 512-token limit")
    plots.caption(fig, f"Graph depth {depths[0]} ops at T = 16 and {depths[-1]} at T = 512 (torch.export). "
                  + plots.contended_note(points))
    return fig
