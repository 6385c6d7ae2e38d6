"""The conversion model reproduces every published point exactly, and the revenue arithmetic adds up."""

from __future__ import annotations

import math

import matplotlib
import pytest

matplotlib.use("Agg")

from servelab import conversion  # noqa: E402
from servelab.conversion import AKAMAI, PUBLISHED, ConversionModel, PublishedPoint, Shop  # noqa: E402


@pytest.mark.parametrize("point", PUBLISHED, ids=lambda p: f"{p.source}-{p.segment}")
def test_model_reproduces_each_published_point(point: PublishedPoint) -> None:
    assert conversion.reproduce(point) == pytest.approx(point.change, abs=1e-12)


def test_published_points_are_the_cited_figures() -> None:
    by_segment = {(p.source, p.segment): (p.delay_ms, p.change) for p in PUBLISHED}
    assert by_segment[("akamai2017", "smartphone")] == (100, -0.071)
    assert by_segment[("akamai2017", "desktop")] == (100, -0.024)
    assert by_segment[("akamai2017", "tablet")] == (100, -0.038)
    assert by_segment[("deloitte2020", "retail (mobile)")] == (-100, 0.084)
    assert by_segment[("deloitte2020", "travel (mobile)")] == (-100, 0.101)
    assert by_segment[("linden2006", "Amazon sales")] == (100, -0.01)


def test_akamai_up_to_seven_percent_is_the_worst_device() -> None:
    worst = max(-AKAMAI.conversion_change(d, 100) for d in conversion.DEVICES)
    assert round(100 * worst) == 7


def test_model_is_multiplicative_and_never_loses_more_than_everything() -> None:
    one = AKAMAI.multiplier("smartphone", 100)
    assert AKAMAI.multiplier("smartphone", 300) == pytest.approx(one**3)
    assert AKAMAI.multiplier("smartphone", 0) == 1.0
    assert 0 < AKAMAI.multiplier("smartphone", 10_000) < 1e-3


def test_speedup_point_fits_a_slowdown_rate() -> None:
    retail = next(p for p in PUBLISHED if p.segment == "retail (mobile)")
    assert conversion.retention_per_100ms(retail) == pytest.approx(1 / 1.084)
    model = ConversionModel.fit("deloitte2020")
    assert model.conversion_change("retail (mobile)", 100) == pytest.approx(1 / 1.084 - 1)


def test_fit_rejects_unknown_source_and_bad_points() -> None:
    with pytest.raises(ValueError):
        ConversionModel.fit("nobody2099")
    with pytest.raises(ValueError):
        conversion.retention_per_100ms(PublishedPoint("x", "y", 0, -0.1))


def test_revenue_lost_per_day_by_hand() -> None:
    shop = Shop(visits_per_day=10_000, conversion_rate=0.02, order_value=100, device_mix={"smartphone": 1})
    # 10k visits * 2% * 100 = 20,000 per day; +100 ms on smartphones loses 7.1% of it.
    assert shop.revenue_per_day() == pytest.approx(20_000)
    assert conversion.revenue_lost_per_day(shop, 100) == pytest.approx(1_420)
    assert conversion.conversion_lost(shop, 100) == pytest.approx(0.071)
    assert conversion.revenue_lost_per_day(shop, 0) == 0


def test_device_mix_is_normalised_and_weighted() -> None:
    shop = Shop(device_mix={"smartphone": 50, "desktop": 50})
    expected = 0.5 * 0.071 + 0.5 * 0.024
    assert conversion.conversion_lost(shop, 100) == pytest.approx(expected)
    by_device = conversion.revenue_lost_by_device(shop, 100)
    assert sum(by_device.values()) == pytest.approx(conversion.revenue_lost_per_day(shop, 100))
    with pytest.raises(ValueError):
        Shop(device_mix={"smartphone": 0}).shares()


def test_faster_pages_gain_revenue() -> None:
    assert conversion.revenue_lost_per_day(Shop(), -100) < 0


def test_figures_draw() -> None:
    import matplotlib.pyplot as plt

    fig = conversion.plot_revenue_loss(Shop(), 100)
    assert len(fig.axes) == 2
    fig = conversion.plot_loss_at_load([1, 2, 4], {"p50": [0.003, 0.004, 0.008], "p99": [0.005, 0.01, 0.03]}, Shop())
    assert "Measured on" in fig.texts[-1].get_text()
    plt.close("all")


def test_calculator_has_every_input_and_redraws() -> None:
    import matplotlib.pyplot as plt

    widget = conversion.calculator()
    names = [child.description for child in widget.children if hasattr(child, "description")]
    for word in ("visits", "conversion", "order", "smartphone", "tablet", "latency"):
        assert any(word in n for n in names), f"no slider for {word}"
    assert math.isclose(widget.sliders["latency_ms"].value, 100.0)
    before = len(plt.get_fignums())
    widget.sliders["latency_ms"].value = 250.0  # a slider move redraws
    assert len(plt.get_fignums()) == before + 1
    plt.close("all")
