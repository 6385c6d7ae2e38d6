"""From milliseconds to money: a conversion model fitted to published figures.

The published studies report one point each: "+100 ms of page load time,
-7.1% conversions on smartphones" (Akamai 2017), "0.1 s faster, +8.4% retail
conversions" (Deloitte 2020). We extend each point *multiplicatively*: every
100 ms multiplies the conversion rate by the same factor, so 200 ms costs
``1 - (1 - 0.071)^2`` on smartphones, never more than 100%, and the model
reproduces each published point exactly (:func:`reproduce`).

These are observational figures about whole-page load time. Feeding a
model's latency into them assumes that latency sits on the page's critical
path and adds to its load time one for one.
Taught in: chapters/01_latency.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from servelab import claims, plots

DEVICES = ("smartphone", "desktop", "tablet")
_DEVICE_COLORS = {"smartphone": "#9467bd", "desktop": "#1f77b4", "tablet": "#17becf"}


@dataclass(frozen=True)
class PublishedPoint:
    """One published figure: a page ``delay_ms`` slower (negative: faster) changed conversions by ``change``.

    ``change`` is relative: -0.071 means 7.1% fewer conversions.
    Taught in: chapters/01_latency.ipynb.
    """

    source: str  # key in references.bib
    segment: str
    delay_ms: float
    change: float


#: The published conversion figures the chapter quotes.
PUBLISHED: tuple[PublishedPoint, ...] = (
    PublishedPoint("akamai2017", "smartphone", 100, -0.071),
    PublishedPoint("akamai2017", "desktop", 100, -0.024),
    PublishedPoint("akamai2017", "tablet", 100, -0.038),
    PublishedPoint("deloitte2020", "retail (mobile)", -100, +0.084),
    PublishedPoint("deloitte2020", "travel (mobile)", -100, +0.101),
    PublishedPoint("linden2006", "Amazon sales", 100, -0.01),
)


def retention_per_100ms(point: PublishedPoint) -> float:
    """The factor one extra 100 ms multiplies conversions by, fitted to one published point.

    Solves ``factor ** (delay_ms / 100) = 1 + change``: Akamai's smartphone
    point gives 0.929; Deloitte's retail point (0.1 s *faster*, +8.4%) gives
    1 / 1.084 = 0.9225.
    """
    if point.delay_ms == 0 or point.change <= -1:
        raise ValueError(f"cannot fit a rate to {point}")
    return (1.0 + point.change) ** (100.0 / point.delay_ms)


@dataclass(frozen=True)
class ConversionModel:
    """Conversion multiplier per segment: ``retention[segment] ** (added_ms / 100)``.

    Taught in: chapters/01_latency.ipynb.
    """

    retention: Mapping[str, float]
    source: str

    @classmethod
    def fit(cls, source: str) -> "ConversionModel":
        """The model through every published point of ``source`` (a bib key)."""
        points = [p for p in PUBLISHED if p.source == source]
        if not points:
            raise ValueError(f"no published points from {source!r}")
        return cls({p.segment: retention_per_100ms(p) for p in points}, source)

    def multiplier(self, segment: str, added_ms: float) -> float:
        """Conversion rate with ``added_ms`` more latency, relative to without it."""
        return self.retention[segment] ** (added_ms / 100.0)

    def conversion_change(self, segment: str, added_ms: float) -> float:
        """Relative change in conversions: -0.071 means 7.1% fewer."""
        return self.multiplier(segment, added_ms) - 1.0


#: Akamai 2017's per-device figures: the model the calculator uses.
AKAMAI = ConversionModel.fit("akamai2017")


def reproduce(point: PublishedPoint) -> float:
    """The conversion change the fitted model gives at a published point's delay (should equal it).

    Taught in: chapters/01_latency.ipynb.
    """
    return ConversionModel.fit(point.source).conversion_change(point.segment, point.delay_ms)


@dataclass(frozen=True)
class Shop:
    """An online shop's traffic: visits per day, baseline conversion, average order, device mix.

    ``device_mix`` is normalised, so shares can be given in percent or as weights.
    Taught in: chapters/01_latency.ipynb.
    """

    visits_per_day: float = 100_000
    conversion_rate: float = 0.03
    order_value: float = 50.0
    device_mix: Mapping[str, float] = field(
        default_factory=lambda: {"smartphone": 0.55, "desktop": 0.35, "tablet": 0.10}
    )

    def shares(self) -> dict[str, float]:
        """Device shares that sum to 1."""
        total = sum(self.device_mix.values())
        if total <= 0 or any(v < 0 for v in self.device_mix.values()):
            raise ValueError(f"device mix needs non-negative shares with a positive sum, got {self.device_mix}")
        return {d: v / total for d, v in self.device_mix.items()}

    def revenue_per_day(self) -> float:
        """Revenue with no added latency."""
        return self.visits_per_day * self.conversion_rate * self.order_value


def revenue_lost_by_device(shop: Shop, added_ms: float, model: ConversionModel = AKAMAI) -> dict[str, float]:
    """Revenue lost per day in each device class when pages get ``added_ms`` slower.

    Taught in: chapters/01_latency.ipynb.
    """
    base = shop.revenue_per_day()
    return {d: -base * share * model.conversion_change(d, added_ms) for d, share in shop.shares().items()}


def revenue_lost_per_day(shop: Shop, added_ms: float, model: ConversionModel = AKAMAI) -> float:
    """Revenue lost per day, all devices, when pages get ``added_ms`` slower.

    Taught in: chapters/01_latency.ipynb.
    """
    return sum(revenue_lost_by_device(shop, added_ms, model).values())


def conversion_lost(shop: Shop, added_ms: float, model: ConversionModel = AKAMAI) -> float:
    """Fraction of the shop's conversions lost to ``added_ms`` (device-mix weighted).

    Taught in: chapters/01_latency.ipynb.
    """
    return revenue_lost_per_day(shop, added_ms, model) / shop.revenue_per_day()


def plot_revenue_loss(shop: Shop, added_ms: float, *, max_ms: float = 500.0) -> Figure:
    """Conversions lost against added latency (left) and revenue lost per day by device (right).

    Computed from the published figures, not measured: the caption says so.
    Taught in: chapters/01_latency.ipynb.
    """
    fig, (left, right) = plots.figure(ncols=2)
    ms = np.linspace(0, max(max_ms, 1.25 * added_ms), 200)
    for device in shop.shares():
        loss = [-100 * AKAMAI.conversion_change(device, x) for x in ms]
        left.plot(ms, loss, color=_DEVICE_COLORS.get(device), lw=1.2, label=device)
    mixed = [100 * conversion_lost(shop, x) for x in ms]
    left.plot(ms, mixed, color=plots.COLORS["predicted"], lw=2, label="your device mix")
    y = 100 * conversion_lost(shop, added_ms)
    left.plot([added_ms], [y], "o", color=plots.COLORS["predicted"])
    left.annotate(f"+{added_ms:.0f} ms: -{y:.2f}%", (added_ms, y), textcoords="offset points", xytext=(8, -14))
    left.legend(fontsize=8.5)
    plots.label(left, "latency added to the page (ms)", "conversions lost (%)", "Multiplicative model, Akamai 2017")
    lost = revenue_lost_by_device(shop, added_ms)
    right.bar(list(lost), list(lost.values()), color=[_DEVICE_COLORS.get(d, "#7f7f7f") for d in lost])
    plots.label(right, "device class", "revenue lost per day (currency units)",
                f"+{added_ms:.0f} ms: {sum(lost.values()):,.0f} lost per day")  # fmt: skip
    fig.text(0.01, -0.02, f"Computed from published figures, not measured. {_describe(shop)}.",
             ha="left", va="top", fontsize=8.5, color="#555555")  # fmt: skip
    fig.tight_layout()
    return fig


def _describe(shop: Shop) -> str:
    mix = ", ".join(f"{100 * v:.0f}% {d}" for d, v in shop.shares().items())
    return (f"{shop.visits_per_day:,.0f} visits/day, {100 * shop.conversion_rate:.1f}% conversion, "
            f"order value {shop.order_value:,.0f}, {mix}")  # fmt: skip


def plot_loss_at_load(
    concurrency: Sequence[int], latencies_s: Mapping[str, Sequence[float]], shop: Shop, *, note: str = ""
) -> Figure:
    """Conversions (left) and revenue per day (right) lost to measured latencies at each load level.

    ``latencies_s`` maps a name (``"p50"``, ``"p99"``) to one latency per
    concurrency, in seconds; each is fed to the model as added page latency.
    The caption names the hardware, because the inputs were measured.
    Taught in: chapters/01_latency.ipynb.
    """
    fig, (left, right) = plots.figure(ncols=2)
    for name, values in latencies_s.items():
        color = plots.COLORS.get(name, plots.COLORS["predicted"])
        lost = [conversion_lost(shop, 1e3 * v) for v in values]
        left.plot(concurrency, [100 * x for x in lost], "o-", color=color, label=f"at the measured {name}")
        right.plot(concurrency, [shop.revenue_per_day() * x for x in lost], "o-", color=color, label=name)
    left.legend()
    left.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    plots.label(left, "concurrent requests (closed loop)", "conversions lost (%)", "If every page waited this long")
    plots.label(right, "concurrent requests (closed loop)", "revenue lost per day (currency units)")
    plots.caption(fig, f"{note} Akamai 2017 model; {_describe(shop)}.".strip())
    return fig


def calculator(shop: Shop | None = None, added_ms: float = 100.0):  # noqa: ANN201 - an ipywidgets VBox
    """Sliders for traffic, conversion, order value, device mix and model latency that redraw the figure.

    The figure is drawn only when a slider moves, never while the cell runs:
    executing ``ipywidgets.interact`` headlessly (nbconvert, nbval, the book
    build) can hang on its output widget, and the static figure shows the
    defaults anyway. Display the returned widget as a cell's last line.
    Taught in: chapters/01_latency.ipynb.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt

    shop = shop or Shop()
    shares = shop.shares()
    style, layout = {"description_width": "13em"}, w.Layout(width="34em")

    def slider(cls, value, lo, hi, step, label):  # noqa: ANN001, ANN202
        return cls(value=value, min=lo, max=hi, step=step, description=label, style=style, layout=layout,
                   continuous_update=False)  # fmt: skip

    sliders = {
        "visits": slider(w.IntSlider, int(shop.visits_per_day), 1_000, 2_000_000, 1_000, "visits per day"),
        "conversion_pct": slider(w.FloatSlider, 100 * shop.conversion_rate, 0.1, 10.0, 0.1, "baseline conversion (%)"),
        "order_value": slider(w.FloatSlider, shop.order_value, 1.0, 500.0, 1.0, "average order value"),
        "smartphone_pct": slider(w.FloatSlider, 100 * shares.get("smartphone", 0), 0, 100, 1, "smartphone visits (%)"),
        "tablet_pct": slider(w.FloatSlider, 100 * shares.get("tablet", 0), 0, 100, 1, "tablet visits (%)"),
        "latency_ms": slider(w.FloatSlider, added_ms, 0, 1000, 5, "model latency added (ms)"),
    }
    out = w.Output()

    def redraw(_change: object = None) -> None:
        v = {name: s.value for name, s in sliders.items()}
        desktop_pct = max(0.0, 100.0 - v["smartphone_pct"] - v["tablet_pct"])
        mix = {"smartphone": v["smartphone_pct"], "desktop": desktop_pct, "tablet": v["tablet_pct"]}
        with out:
            out.clear_output(wait=True)
            if v["smartphone_pct"] + v["tablet_pct"] > 100:
                print("Smartphone + tablet exceed 100%: the shares are rescaled to sum to 100%.")
            plot_revenue_loss(Shop(v["visits"], v["conversion_pct"] / 100, v["order_value"], mix), v["latency_ms"])
            plt.show()

    for s in sliders.values():
        s.observe(redraw, names="value")
    hint = w.HTML("<i>Move a slider: the figure for your numbers appears below.</i>")
    box = w.VBox([*sliders.values(), hint, out])
    box.sliders, box.redraw = sliders, redraw  # for tests and for readers who want to script it
    return box


# --------------------------------------------------------------------------- claims (chapter 1's check cell)


def claim_reproduces_published(points: Sequence[PublishedPoint] = PUBLISHED) -> claims.Claim:
    """The fitted model gives back every published figure exactly (to 1e-9)."""
    misses = [(p, reproduce(p) - p.change) for p in points]
    worst = max(abs(m) for _, m in misses)
    bad = [p for p, m in misses if abs(m) >= 1e-9]
    return claims.condition(
        "ch1.conversion_reproduces_published", "The conversion model reproduces every published figure it quotes.",
        not bad, measured=f"worst miss {worst:.1e}", bound="< 1e-09",
        fail="; ".join(f"the conversion model misses the published point {p}" for p in bad))
