"""Draw chapter 2's diagram: N worker processes each with a model copy, next to one process with N threads.

Run from the repository root: ``.venv/bin/python images/make_ch2_diagram.py``.
Writes ``images/ch2_processes_vs_threads.png``. Colours from servelab.plots.COLORS.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from servelab.plots import COLORS  # noqa: E402

OUT = Path(__file__).with_name("ch2_processes_vs_threads.png")
MODEL = "#9e9e9e"
GREY = "#555555"


def box(ax, x, y, w, h, text, *, face="white", edge=GREY, color="black", size=9, weight="normal", dashed=False):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", facecolor=face,
                                edgecolor=edge, linewidth=1.4, linestyle="--" if dashed else "-"))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, color=color, weight=weight)


def arrow(ax, start, end, color=GREY, style="-|>"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=11, color=color, linewidth=1.2,
                                 shrinkA=2, shrinkB=2))


def processes_panel(ax) -> None:
    red = COLORS["processes"]
    ax.set_title("The usual stack: one process per core", fontsize=11, loc="left")
    box(ax, 0.3, 5.2, 2.2, 0.6, "clients", size=9)
    box(ax, 3.2, 5.2, 3.4, 0.6, "nginx  (reverse proxy)", face="#f1f1f1", size=9)
    arrow(ax, (2.5, 5.5), (3.2, 5.5))
    box(ax, 3.2, 4.0, 3.4, 0.6, "gunicorn master\n(forks, watches workers)", face="#f1f1f1", size=8.5)
    arrow(ax, (4.9, 5.2), (4.9, 4.6))
    xs = [0.3, 3.55, 6.8]
    labels = ["worker 1", "worker 2", "worker N"]
    for x, name in zip(xs, labels):
        box(ax, x, 0.5, 2.9, 2.7, "", face="white", edge=red)
        ax.text(x + 1.45, 2.95, f"{name}: a process", ha="center", va="center", fontsize=8.5, color=red, weight="bold")
        ax.text(x + 1.45, 2.55, "own interpreter, own GIL", ha="center", va="center", fontsize=7.5, color=GREY)
        box(ax, x + 0.3, 1.55, 2.3, 0.6, "Flask app, 1 thread", size=8)
        box(ax, x + 0.3, 0.7, 2.3, 0.65, "model copy", face=MODEL, edge=MODEL, color="white", size=8.5,
            weight="bold")
        arrow(ax, (4.9, 4.0), (x + 1.45, 3.2), color=red)
    ax.text(6.55, 1.85, "…", fontsize=16, ha="center", va="center", color=GREY)
    ax.text(0.3, 0.05, "N copies of the weights (unless forked after loading: --preload)", fontsize=8, color=GREY)


def threads_panel(ax) -> None:
    blue = COLORS["threads"]
    ax.set_title("One process, N threads sharing one model", fontsize=11, loc="left")
    box(ax, 0.3, 5.2, 2.2, 0.6, "clients", size=9)
    box(ax, 3.2, 5.2, 3.4, 0.6, "(optional proxy)", face="#f1f1f1", size=9, dashed=True)
    arrow(ax, (2.5, 5.5), (3.2, 5.5))
    box(ax, 0.3, 0.5, 9.4, 4.1, "", edge=blue)
    ax.text(5.0, 4.3, "one process: one interpreter, one GIL", ha="center", fontsize=8.5, color=blue, weight="bold")
    arrow(ax, (4.9, 5.2), (4.9, 4.6), color=blue)
    for x, name in zip([0.8, 3.75, 6.7], ["thread 1", "thread 2", "thread N"]):
        box(ax, x, 2.8, 2.5, 0.9, f"{name}\nrequest handler", edge=blue, size=8)
        arrow(ax, (x + 1.25, 2.8), (5.0, 1.6), color=blue)
    ax.text(6.45, 3.25, "…", fontsize=16, ha="center", va="center", color=GREY)
    box(ax, 2.6, 0.85, 4.8, 0.75, "one model (read by every thread)", face=MODEL, edge=MODEL, color="white",
        size=8.5, weight="bold")
    ax.text(0.3, 0.05, "1 copy of the weights; Python code in the threads takes turns", fontsize=8, color=GREY)


def main() -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, draw in zip(axes, (processes_panel, threads_panel)):
        ax.set_xlim(0, 10)
        ax.set_ylim(0, 6.2)
        ax.axis("off")
        draw(ax)
    fig.tight_layout()
    fig.savefig(OUT, dpi=120, bbox_inches="tight", facecolor="white")
    return OUT


if __name__ == "__main__":
    print(main())
