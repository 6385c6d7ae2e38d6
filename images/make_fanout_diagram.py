"""Draw images/fanout.png: one page fans out to k model calls and waits for the slowest.

Run from the repository root: ``.venv/bin/python images/make_fanout_diagram.py``.
Our own drawing (matplotlib), used in chapters/01_latency.ipynb.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from servelab import plots  # noqa: E402

OUT = Path(__file__).with_name("fanout.png")
# Call durations in the drawing (arbitrary units); call 3 is the slow one.
DURATIONS = [2.2, 2.6, 7.0, 2.0]
FAST, SLOW = plots.COLORS["p50"], plots.COLORS["p99"]
JOIN_X = 11.0


def box(ax, x: float, y: float, w: float, h: float, text: str, color: str, **kw) -> None:  # noqa: ANN001
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.15",
                                fc=color, ec="#333333", lw=1.2))  # fmt: skip
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", **kw)


def arrow(ax, start: tuple[float, float], end: tuple[float, float], color: str = "#333333") -> None:  # noqa: ANN001
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, lw=1.3, color=color))


def main() -> None:
    plots.use_style()
    fig, ax = plt.subplots(figsize=(9.5, 4.4))
    ax.set_xlim(0, 14)
    ax.set_ylim(-0.9, 5.2)
    ax.axis("off")

    box(ax, 0.2, 1.7, 1.9, 1.2, "page\nrequest", "#eeeeee", fontsize=11)
    box(ax, 11.9, 1.7, 1.9, 1.2, "page\nanswer", "#eeeeee", fontsize=11)
    rows = [4.3, 3.1, 1.9, 0.7][: len(DURATIONS)]
    start_x, unit = 3.2, 1.05
    for i, (y, d) in enumerate(zip(rows, DURATIONS), start=1):
        slow = d == max(DURATIONS)
        color = SLOW if slow else FAST
        arrow(ax, (2.1, 2.3), (start_x - 0.05, y))
        ax.add_patch(FancyBboxPatch((start_x, y - 0.28), d * unit, 0.56, boxstyle="round,pad=0.01",
                                    fc=color, ec="none", alpha=0.85))  # fmt: skip
        label = f"model call {i}" if i < len(DURATIONS) else "model call k"
        ax.text(start_x + 0.12, y, label + ("  (slow)" if slow else ""), va="center", fontsize=9.5, color="white",
                fontweight="bold")  # fmt: skip
        # A finished call waits (dotted) until the slowest one is done.
        ax.plot([start_x + d * unit, JOIN_X], [y, y], ":", color="#777777", lw=1.3)
    ax.plot([JOIN_X, JOIN_X], [rows[-1] - 0.35, rows[0] + 0.35], color="#333333", lw=2.5)
    ax.text(JOIN_X, rows[0] + 0.6, "wait for\nall k", ha="center", fontsize=9.5)
    arrow(ax, (JOIN_X + 0.05, 2.3), (11.85, 2.3))
    ax.text(start_x + 2.2, 4.95, "k calls sent at once, in parallel", ha="center", fontsize=10)
    ax.text(start_x + 1.0, 1.3, "⋮", ha="center", va="center", fontsize=14, color="#777777")
    end_slow = start_x + max(DURATIONS) * unit
    ax.annotate("", xy=(end_slow, -0.45), xytext=(start_x, -0.45),
                arrowprops={"arrowstyle": "<->", "color": SLOW, "lw": 1.5})  # fmt: skip
    ax.text((start_x + end_slow) / 2, -0.75, "page latency = the slowest call: max(call 1, …, call k)",
            ha="center", va="center", fontsize=10, color=SLOW)  # fmt: skip
    fig.tight_layout()
    fig.savefig(OUT, dpi=130, bbox_inches="tight")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
