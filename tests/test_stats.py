"""Percentiles and repeat-until-stable timing."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from servelab import stats


def test_percentile_matches_numpy() -> None:
    data = np.random.default_rng(0).exponential(size=1001)
    for q in (0, 50, 95, 99, 100):
        assert stats.percentile(data, q) == pytest.approx(np.percentile(data, q))


def test_percentile_keeps_unfinished_requests_infinite() -> None:
    data = [1.0] * 98 + [math.inf] * 2
    assert stats.percentile(data, 50) == 1.0
    assert math.isinf(stats.percentile(data, 99))


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        stats.percentile([], 50)


def test_summarize_orders_the_tail() -> None:
    s = stats.summarize(list(range(1, 101)))
    assert s.n == 100 and s.max == 100
    assert s.p50 <= s.p95 <= s.p99 <= s.max
    assert s.p99 == pytest.approx(99.01)
    assert s.as_ms()["p50"] == pytest.approx(s.p50 * 1e3)


def test_time_call_counts_warmup_separately() -> None:
    calls = []
    timing = stats.time_call(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5 and len(timing.samples) == 3


def test_repeat_until_stable_measures_a_sleep() -> None:
    timing = stats.repeat_until_stable(lambda: time.sleep(0.002), inner=1, max_seconds=1)
    assert 0.0019 < timing.median < 0.02
    assert timing.best <= timing.median
    assert len(timing.samples) >= 3


def test_repeat_until_stable_batches_tiny_work() -> None:
    timing = stats.repeat_until_stable(lambda: None, max_seconds=0.5)
    assert timing.median < 1e-5
