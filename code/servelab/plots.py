"""The book's house style for figures.

One colour per concept, used the same way in every chapter, units on every
axis, and the measured hardware in every caption. Taught in: chapters/00_setup.ipynb.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from servelab import hardware

#: One colour per concept, for the whole book.
COLORS: dict[str, str] = {
    "threads": "#1f77b4",  # blue: one process, many threads
    "processes": "#d62728",  # red: one process per worker
    "preload": "#ff7f0e",  # orange: processes forked after loading
    "p50": "#2ca02c",
    "p95": "#ff7f0e",
    "p99": "#d62728",
    "throughput": "#7f7f7f",
    "predicted": "#000000",
    "rnn": "#9467bd",  # purple: recurrent models
    "rnn_fused": "#8c564b",
    "bert": "#17becf",  # teal: transformers
    "batched": "#bcbd22",
    "unbatched": "#7f7f7f",
    "adaptive": "#e377c2",
}

_STYLE = {
    "figure.figsize": (7.5, 4.2),
    "figure.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.frameon": False,
    "font.size": 10,
}


def use_style() -> None:
    """Apply the house style to every later figure."""
    plt.rcParams.update(_STYLE)


def figure(ncols: int = 1, nrows: int = 1, **kwargs) -> tuple[Figure, Axes | list[Axes]]:
    """A new figure in the house style (``plt.subplots`` arguments pass through)."""
    use_style()
    width, height = _STYLE["figure.figsize"]
    kwargs.setdefault("figsize", (width * (1 if ncols == 1 else 0.62 * ncols), height * nrows))
    fig, axes = plt.subplots(nrows, ncols, **kwargs)
    return fig, axes


def caption(fig: Figure, text: str = "") -> Figure:
    """Put the measured hardware (and optional text) under the figure."""
    line = f"Measured on {hardware.short_description()}"
    if text:
        line = f"{text}\n{line}"
    fig.text(0.01, -0.02, line, ha="left", va="top", fontsize=8.5, color="#555555", wrap=True)
    fig.tight_layout()
    return fig


def label(ax: Axes, x: str, y: str, title: str | None = None) -> Axes:
    """Set axis labels (say the units!) and an optional title."""
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if title:
        ax.set_title(title)
    return ax


def line_with_contended(ax: Axes, xs, ys, contended, *, color: str, marker: str = "o", ls: str = "-",
                        **kwargs) -> None:
    """A measured line whose points that stayed contended (after retries) are drawn hollow.

    A figure must not publish a disturbed point silently: hollow markers show it, and
    :func:`contended_note` says so in the caption.
    """
    ax.plot(xs, ys, ls, color=color, **kwargs)
    for x, y, busy in zip(xs, ys, contended):
        ax.plot([x], [y], marker, color=color, mfc="white" if busy else color, ms=6)


def contended_note(points) -> str:
    """Caption text naming the points that stayed contended (objects with ``contended``), or ''."""
    busy = sum(bool(getattr(p, "contended", False)) for p in points)
    if not busy:
        return ""
    return (f"Hollow markers: {busy} of {len(points)} points stayed disturbed after retries (other programs "
            "took CPU, or the point broke the curve's required shape); read them with care.")


def plain_log_axis(axis, ticks=None) -> None:
    """Label a log axis with plain numbers (30, 100, 300), not powers of ten; optionally at ``ticks``."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    if ticks is not None:
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_minor_formatter(plain)
    axis.set_major_formatter(plain)


def grouped_bars(ax: Axes, groups: Sequence[str], series: Mapping[str, Sequence[float]], colors: Sequence[str], *,
                 fmt: str = "{:.0f}", alphas: Sequence[float] | None = None, hatches: Sequence[str | None] | None = None,
                 color_by_group: bool = False, fontsize: float = 8) -> None:
    """Bars for each group (x) and series (side by side), each labelled with its value.

    ``colors`` go one per series, or one per group with ``color_by_group`` (then series differ by
    ``alphas`` and ``hatches``); ``series`` names label the legend.
    """
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        color = list(colors) if color_by_group else colors[i % len(colors)]
        bars = ax.bar(xs, values, width, label=name, color=color, alpha=alphas[i] if alphas else 1.0,
                      hatch=hatches[i] if hatches else None, edgecolor="white")  # fmt: skip
        ax.bar_label(bars, [fmt.format(v) for v in values], fontsize=fontsize, padding=2)
    ax.set_xticks(range(len(groups)), groups)
    ax.margins(y=0.15)
