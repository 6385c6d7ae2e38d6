"""Goodput, retry policies and retry budgets; one short run against a shedding batching server."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from servelab import overload
from servelab.apps import batched
from servelab.overload import RetryBudget, RetryPolicy


def test_goodput_counts_only_good_answers_in_time() -> None:
    latencies = np.array([0.01, 0.05, 0.2, 0.01, math.inf])
    statuses = np.array([200, 200, 200, 503, 0])
    assert overload.goodput(latencies, statuses, duration_s=2.0, slo_s=0.1) == pytest.approx(1.0)


def test_backoff_grows_exponentially_with_full_jitter_and_a_cap() -> None:
    policy = RetryPolicy(max_attempts=10, backoff_base_s=0.1, backoff_cap_s=0.5)
    rng = random.Random(0)
    for retry, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (8, 0.5)]:
        delays = [policy.delay_s(retry, rng) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= ceiling
        assert max(delays) > 0.8 * ceiling  # full jitter spans the whole range
    assert overload.NAIVE_RETRIES.delay_s(3, rng) == 0.0


def test_policies_are_validated() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(budget_ratio=1.5)


def test_retry_budget_caps_retries_at_its_ratio_plus_the_burst() -> None:
    budget = RetryBudget(ratio=0.1, burst=5)
    retries = 0
    for _ in range(1000):
        budget.on_first_attempt()
        retries += sum(budget.allow_retry() for _ in range(3))  # every request wants three retries
    assert retries <= 0.1 * 1000 + 5 and retries >= 0.1 * 1000 - 1
    assert budget.refused == 3000 - retries
    unlimited = RetryBudget(ratio=None)
    assert all(unlimited.allow_retry() for _ in range(100))


def test_open_loop_only_targets_loopback() -> None:
    with pytest.raises(ValueError):
        overload.open_loop_with_retries("http://example.com/predict", rate=1, duration_s=0.1)


@pytest.fixture(scope="module")
def shedding_server():
    # about 10 ms a forward pass: a hundred requests a second saturate it, a client in Python can offer more
    srv = batched.start(max_batch=1, max_wait_ms=0, max_queue=1,
                        env={"SERVELAB_MODEL_WIDTH": "2048", "SERVELAB_MODEL_DEPTH": "4"})  # fmt: skip
    yield srv
    srv.stop()
    assert srv.alive_pids() == []


def test_naive_retries_multiply_the_load_and_a_budget_holds_them_back(shedding_server) -> None:
    url = shedding_server.url + "/predict"
    kwargs = dict(rate=300, duration_s=0.6, body=b'{"batch": 1}', headers={"Content-Type": "application/json"})
    naive = overload.open_loop_with_retries(url, policy=overload.NAIVE_RETRIES, **kwargs)
    batched.wait_until_drained(shedding_server.url)
    budgeted = overload.open_loop_with_retries(url, policy=overload.BACKOFF_WITH_BUDGET, **kwargs)
    batched.wait_until_drained(shedding_server.url)
    assert naive.sent > 100 and (naive.statuses == 503).any(), "the server should have shed at this rate"
    assert naive.attempt_rate > 1.5 * naive.offered_rate, "naive retries should multiply the offered load"
    retries = budgeted.attempts.sum() - budgeted.sent
    assert retries <= 0.1 * budgeted.sent + overload.BACKOFF_WITH_BUDGET.budget_burst
    assert budgeted.budget_refused > 0


def test_goodput_sweep_returns_a_point_per_rate(shedding_server) -> None:
    points = overload.goodput_sweep(shedding_server, [50, 100], slo_s=0.5, label="shed", duration_s=0.4,
                                    between_points=lambda: batched.wait_until_drained(shedding_server.url))  # fmt: skip
    assert [p.label for p in points] == ["shed", "shed"]
    assert all(p.goodput > 0 and p.attempt_rate >= p.offered_rate * 0.99 for p in points)
