"""rate_sweep: the monotone fit, the highest rate within an SLO, and bookkeeping of lost requests."""

from __future__ import annotations

import math

import pytest

from servelab.rate_sweep import RatePoint, geometric_rates, max_rate_under_slo, monotone_fit


def point(rate: float, p99_ms: float, *, unfinished: int = 0, errors: int = 0, sent: int = 100) -> RatePoint:
    p99 = p99_ms / 1e3
    return RatePoint(rate=rate, sent=sent, answered=sent - unfinished, unfinished=unfinished, errors=errors,
                     latencies=sent, infinite=unfinished, achieved_rate=rate, p50_s=p99 / 2, p99_s=p99,
                     send_lag_p99_s=0.001, client_cpu_cores=0.1, server_cores=1.0, outside_cores=0.0,
                     contended=False, attempts=1)  # fmt: skip


def test_monotone_fit_pools_violators():
    assert monotone_fit([1, 3, 2, 4]) == [1, 2.5, 2.5, 4]
    assert monotone_fit([5, 4, 3]) == [4, 4, 4]
    assert monotone_fit([1, 2, 3]) == [1, 2, 3]


def test_max_rate_interpolates_on_a_log_scale():
    points = [point(50, 50), point(100, 200)]
    # log p99 crosses log 100 halfway between log 50 and log 200.
    assert max_rate_under_slo(points, 0.100) == pytest.approx(75)


def test_one_noisy_point_does_not_end_the_curve():
    points = [point(100, 80), point(140, 105), point(190, 90), point(250, 150)]
    first_passage = 100 + (math.log(100 / 80) / math.log(105 / 80)) * 40
    assert max_rate_under_slo(points, 0.100) > 190 > first_passage


def test_unfinished_or_failed_points_count_as_infinitely_slow():
    assert max_rate_under_slo([point(50, 50), point(100, 60, unfinished=3)], 0.100) == pytest.approx(50, rel=1e-3)
    assert max_rate_under_slo([point(50, 50), point(100, 60, errors=1)], 0.100) == pytest.approx(50, rel=1e-3)


def test_edges_zero_and_lower_bound():
    assert max_rate_under_slo([point(50, 150), point(100, 300)], 0.100) == 0.0
    assert max_rate_under_slo([point(100, 60), point(50, 40)], 0.100) == 100, "order must not matter"
    with pytest.raises(ValueError):
        max_rate_under_slo([], 0.1)


def test_accounting_of_sent_requests():
    good = point(100, 50, unfinished=2)
    assert good.lost == 0 and good.accounted and not good.meets(0.1)
    lost = RatePoint(**{**good.__dict__, "answered": good.answered - 1})
    assert lost.lost == 1 and not lost.accounted
    missing_inf = RatePoint(**{**good.__dict__, "infinite": 0})
    assert not missing_inf.accounted, "an unfinished request must have an infinite latency"


def test_geometric_rates():
    rates = geometric_rates(10, 1000, 3)
    assert rates == pytest.approx([10, 100, 1000])
    assert geometric_rates(5, 50, 1) == [5.0]
