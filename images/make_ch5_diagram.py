"""Draw images/ch5_ray_cluster.png: chapter 5's two-node Ray Serve cluster on one machine.

Run from the repository root: ``.venv/bin/python images/make_ch5_diagram.py``.
Our own drawing (matplotlib), used in chapters/05a_ray_serve.ipynb.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from servelab import plots  # noqa: E402

OUT = Path(__file__).with_name("ch5_ray_cluster.png")
NODE, SYSTEM, SERVE, REPLICA = "#f4f4f4", "#dddddd", "#f7d4ec", "#f4c7c3"


def box(ax, x: float, y: float, w: float, h: float, text: str, color: str, **kw) -> None:  # noqa: ANN001
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.15",
                                fc=color, ec="#333333", lw=1.1))  # fmt: skip
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", **kw)


def arrow(ax, start: tuple[float, float], end: tuple[float, float], text: str = "", **kw) -> None:  # noqa: ANN001
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=13, lw=1.3, color="#333333", **kw))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.15, text, ha="center", fontsize=8)


def main() -> None:
    plots.use_style()
    fig, ax = plt.subplots(figsize=(10, 4.8))
    ax.set_xlim(0, 15)
    ax.set_ylim(0, 7.2)
    ax.axis("off")
    box(ax, 0.2, 3.0, 1.8, 1.2, "client\n(open loop)", "white", fontsize=9)
    # Head node: GCS, raylet, controller, proxy (with the router), one replica.
    box(ax, 2.6, 0.3, 6.2, 6.6, "", NODE)
    ax.text(2.8, 6.6, "head node  (ray start --head, --num-cpus=1)", fontsize=9, va="top", weight="bold")
    box(ax, 2.9, 5.0, 1.7, 1.0, "GCS\ncluster state", SYSTEM, fontsize=8)
    box(ax, 4.8, 5.0, 1.7, 1.0, "raylet\nschedules", SYSTEM, fontsize=8)
    box(ax, 6.7, 5.0, 1.9, 1.0, "Serve\ncontroller", SERVE, fontsize=8)
    box(ax, 2.9, 2.9, 2.6, 1.4, "HTTP proxy\n+ router (power of\ntwo choices)", SERVE, fontsize=8)
    box(ax, 6.2, 1.0, 2.4, 1.4, "replica 1\nMLP, 1 CPU", REPLICA, fontsize=9)
    # Worker node: raylet and the second replica.
    box(ax, 9.6, 0.3, 5.1, 6.6, "", NODE)
    ax.text(9.8, 6.6, "worker node  (ray start --address)", fontsize=9, va="top", weight="bold")
    box(ax, 11.5, 5.0, 1.7, 1.0, "raylet", SYSTEM, fontsize=8)
    box(ax, 11.2, 1.0, 2.4, 1.4, "replica 2\nMLP, 1 CPU", REPLICA, fontsize=9)
    arrow(ax, (2.0, 3.6), (2.9, 3.6), "HTTP")
    arrow(ax, (5.5, 3.3), (6.6, 2.4), "actor call")
    arrow(ax, (5.5, 3.5), (11.4, 2.3), "actor call (gRPC)")
    arrow(ax, (7.6, 5.0), (7.4, 2.4), "", linestyle="--")
    arrow(ax, (8.3, 5.2), (11.6, 2.4), "", linestyle="--")
    ax.text(7.75, 3.75, "starts, health-checks,\nscales replicas", fontsize=7.5, color="#555555")
    ax.text(0.2, 0.1, "Both nodes run on 127.0.0.1 of one machine; on a real cluster each is a machine, "
            "and every node runs a proxy.", fontsize=8, color="#555555")  # fmt: skip
    fig.savefig(OUT, bbox_inches="tight", dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
