"""Draw request-level (static) against iteration-level (continuous) batching on five requests (chapter 6).

Each row is a request, each column one step of the model: P is a prefill step, a filled cell a decode
step, a hatched cell a step spent in a batch after the request was done. The schedule is computed here
from the requests' arrival steps and lengths, with a batch of at most three requests, after Orca's
comparison (Yu et al., OSDI 2022). Run from the repository root:  python images/make_ch6_diagram.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from servelab import plots  # noqa: E402

OUT = Path(__file__).with_name("ch6_static_vs_continuous.png")
REQUESTS = {"A": (0, 3), "B": (0, 5), "C": (1, 9), "D": (2, 4), "E": (6, 3)}  # name: (arrival step, output tokens)
MAX_BATCH = 3


def static_schedule() -> dict[str, tuple[int, int, int]]:
    """name -> (start step, own last step, batch end step): a batch runs until its longest member is done."""
    out, step, waiting = {}, 0, sorted(REQUESTS, key=lambda r: REQUESTS[r][0])
    while waiting:
        step = max(step, REQUESTS[waiting[0]][0])
        batch = [r for r in waiting if REQUESTS[r][0] <= step][:MAX_BATCH]
        end = step + max(REQUESTS[r][1] for r in batch)
        for r in batch:
            out[r] = (step, step + REQUESTS[r][1] - 1, end - 1)
            waiting.remove(r)
        step = end
    return out


def continuous_schedule() -> dict[str, tuple[int, int, int]]:
    """name -> (start step, last step, last step): join at the first step with a free slot, leave when done."""
    out, running, step = {}, {}, 0
    waiting = sorted(REQUESTS, key=lambda r: REQUESTS[r][0])
    while waiting or running:
        for r in [r for r in waiting if REQUESTS[r][0] <= step][: MAX_BATCH - len(running)]:
            running[r] = step
            waiting.remove(r)
        for r, start in list(running.items()):
            if step - start + 1 == REQUESTS[r][1]:
                out[r] = (start, step, step)
                del running[r]
        step += 1
    return out


def draw(ax, schedule: dict[str, tuple[int, int, int]], title: str, color: str) -> None:
    names = sorted(REQUESTS)
    for row, name in enumerate(names):
        y = len(names) - 1 - row
        arrival = REQUESTS[name][0]
        start, last, batch_end = schedule[name]
        ax.plot([arrival, start], [y + 0.5, y + 0.5], ":", color="#777777", lw=1)
        ax.plot(arrival, y + 0.5, "v", color="#444444", ms=5)
        for step in range(start, batch_end + 1):
            done = step > last
            ax.add_patch(Rectangle((step, y + 0.1), 0.95, 0.8, facecolor="white" if done else color,
                                   hatch="///" if done else None, edgecolor="#555555", lw=0.6))
        ax.text(start + 0.47, y + 0.5, "P", ha="center", va="center", fontsize=8, color="white", weight="bold")
    ax.set_yticks([len(names) - 1 - i + 0.5 for i in range(len(names))], names)
    span = max(v[2] for v in schedule.values()) + 1
    ax.set_xlim(-0.3, span + 0.3)
    ax.set_ylim(0, len(names))
    ax.grid(False)
    plots.label(ax, "model step", "request", title)


def main() -> None:
    plots.use_style()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    draw(ax1, static_schedule(), "Request-level (static) batching", plots.COLORS["unbatched"])
    draw(ax2, continuous_schedule(), "Iteration-level (continuous) batching", plots.COLORS["batched"])
    fig.text(0.01, -0.02, "▼ arrival   dotted: waiting   P: prefill   filled: decode step   hatched: done, still in the batch",
             fontsize=8.5, color="#555555")
    fig.tight_layout()
    fig.savefig(OUT, dpi=130, bbox_inches="tight")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
