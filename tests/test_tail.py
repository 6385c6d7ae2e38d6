"""servelab.tail: the fan-out arithmetic, hedged calls, and short runs against a real server.

The server tests use a tiny model and check counts and logic, not speed.
"""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

from servelab import servers, tail

# Import the app with a tiny model (the default builds 256 MiB), then restore
# the environment: nbval kernels and later servers must get the real settings.
_saved = dict(os.environ)
os.environ.update(SERVELAB_MODEL_WIDTH="64", SERVELAB_MODEL_DEPTH="2")
from servelab.apps import predict  # noqa: E402

os.environ.clear()
os.environ.update(_saved)


# --------------------------------------------------------------------------- arithmetic


def test_dean_barroso_example() -> None:
    # "The Tail at Scale": 1 slow call in 100, fan-out 100 -> 63% of requests are slow.
    assert tail.slow_page_probability(0.01, 100) == pytest.approx(0.634, abs=0.001)
    assert tail.slow_page_probability(0.01, 1) == pytest.approx(0.01)
    assert tail.slow_page_probability(0.0, 50) == 0.0


@pytest.mark.parametrize("p, k", [(-0.1, 1), (1.1, 1), (0.5, 0)])
def test_slow_page_probability_rejects_nonsense(p: float, k: int) -> None:
    with pytest.raises(ValueError):
        tail.slow_page_probability(p, k)


def test_predicted_page_quantile_matches_simulated_max_of_k() -> None:
    rng = np.random.default_rng(1)
    calls = rng.lognormal(0, 0.5, size=200_000)
    for k in (1, 2, 8):
        pages = calls[: 200_000 // k * k].reshape(-1, k).max(axis=1)
        for q in (0.5, 0.9, 0.99):
            predicted = tail.predicted_page_quantile(calls, k, q)
            assert np.quantile(pages, q) == pytest.approx(predicted, rel=0.03)


def test_page_p50_at_k8_is_call_p917() -> None:
    calls = np.arange(1, 10_001, dtype=float)
    assert tail.predicted_page_quantile(calls, 8, 0.5) == pytest.approx(np.percentile(calls, 100 * 0.5 ** (1 / 8)))


def _run(k: int, pages: np.ndarray, calls: np.ndarray) -> tail.PageRun:
    return tail.PageRun(k, pages, calls.reshape(-1), 1.0, 0.0)


def test_formula_band_holds_for_parallel_pages_and_fails_for_sequential_ones() -> None:
    """The chapter's check: measured/predicted within a band. It must fail for sequential calls."""
    rng = np.random.default_rng(2)
    k = 8
    calls = rng.gamma(4, 0.5e-3, size=(3000, k)) + np.where(rng.random((3000, k)) < 0.02, 0.03, 0)
    parallel = _run(k, calls.max(axis=1), calls)
    sequential = _run(k, calls.sum(axis=1), calls)
    for q in (50, 90, 99):
        assert 0.85 < parallel.formula_ratio(q) < 1.15
    assert sequential.formula_ratio(50) > 2


def test_sweep_concurrencies_reach_four_times_the_cores() -> None:
    assert tail.sweep_concurrencies(2) == [1, 2, 4, 6, 8]
    levels = tail.sweep_concurrencies(4, scale=2)
    assert levels[0] == 1 and levels[-1] == 32 and levels == sorted(set(levels))


# --------------------------------------------------------------------------- hedged calls (no server)


def _sleeper(durations: list[float], cancelled: list[int]):  # noqa: ANN202
    calls = iter(range(len(durations)))

    async def send() -> float:
        i = next(calls)
        try:
            await asyncio.sleep(durations[i])
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return durations[i]

    return send


def test_hedge_not_sent_when_first_answer_is_fast() -> None:
    cancelled: list[int] = []
    latency, hedged = asyncio.run(tail.hedged_call(_sleeper([0.01, 1.0], cancelled), 0.2))
    assert not hedged and latency < 0.15 and cancelled == []


def test_hedge_takes_the_first_answer_and_cancels_the_other() -> None:
    cancelled: list[int] = []
    t0 = time.perf_counter()
    latency, hedged = asyncio.run(tail.hedged_call(_sleeper([1.0, 0.02], cancelled), 0.05))
    assert hedged and 0.06 <= latency < 0.5 and cancelled == [0]
    assert time.perf_counter() - t0 < 0.6, "the slow first copy must be cancelled, not awaited"


# --------------------------------------------------------------------------- the stall knob


def test_simulated_stall_is_off_by_default_and_hits_the_given_fraction() -> None:
    assert predict.simulated_stall_s(0.0, 50, 0.0) == 0.0
    assert predict.simulated_stall_s(0.02, 50, 0.019) == pytest.approx(0.05)
    assert predict.simulated_stall_s(0.02, 50, 0.02) == 0.0
    draws = np.random.default_rng(3).random(100_000)
    share = np.mean([predict.simulated_stall_s(0.02, 50, d) > 0 for d in draws])
    assert share == pytest.approx(0.02, abs=0.002)


# --------------------------------------------------------------------------- against a real server

TINY = {"SERVELAB_MODEL_WIDTH": "64", "SERVELAB_MODEL_DEPTH": "2"}


def test_every_request_stalls_at_fraction_one_and_hedges_fire() -> None:
    env = {**TINY, "SERVELAB_SLOW_FRACTION": "1", "SERVELAB_SLOW_MS": "150"}
    with servers.gunicorn(workers=2, preload=True, env=env) as srv:
        run = tail.measure_pages(srv.url + "/predict", 2, n_pages=3, warmup_pages=0, retries=0)
        assert run.call_latencies.min() >= 0.15
        hedging = tail.compare_hedging(srv.url + "/predict", hedge_delay_s=0.03, n_calls=2, blocks=1)
    assert hedging.extra_load == 1.0
    assert hedging.hedged.min() >= 0.15 and hedging.plain.min() >= 0.15
    assert srv.alive_pids() == []


def test_pages_take_the_max_of_k_calls_and_sweep_counts_requests() -> None:
    with servers.gunicorn(workers=2, preload=True, env=TINY) as srv:
        run = tail.measure_pages(srv.url + "/predict", 3, n_pages=20, warmup_pages=1, retries=0)
        assert run.pages == 20 and run.call_latencies.size == 60
        assert np.allclose(run.page_latencies, run.call_latencies.reshape(20, 3).max(axis=1))
        assert run.client_cores > 0
        hedging = tail.compare_hedging(srv.url + "/predict", hedge_delay_s=5.0, n_calls=20, blocks=2)
        assert hedging.plain.size == hedging.hedged.size == 20 and hedging.hedges_sent == 0
        adaptive = tail.compare_hedging(srv.url + "/predict", hedge_percentile=50, n_calls=40, blocks=2)
        first_block = adaptive.plain[:20]
        assert adaptive.hedge_delay_s == pytest.approx(np.percentile(first_block, 50))
        assert adaptive.delay_source == "plain p50" and 0 <= adaptive.extra_load <= 1
        points = tail.load_sweep(srv, [1, 2], duration_s=0.3, retries=0)
    assert [p.concurrency for p in points] == [1, 2]
    for p in points:
        assert p.completed > 0 and p.errors == 0 and p.p50_s <= p.p95_s <= p.p99_s
        assert p.throughput > 0 and p.server_cores > 0


def test_fanout_alternates_k_values_and_counts_calls() -> None:
    with servers.gunicorn(workers=2, preload=True, env=TINY) as srv:
        runs = tail.measure_fanout(srv.url + "/predict", {1: 0.4, 2: 0.4}, rounds=2, retries=0)
    assert sorted(runs) == [1, 2]
    for k, run in runs.items():
        assert run.pages > 0 and run.call_latencies.size == k * run.pages and run.duration_s > 0.3


def test_pages_only_go_to_loopback() -> None:
    with pytest.raises(ValueError):
        tail.measure_pages("http://example.com/predict", 1, n_pages=1)
    with pytest.raises(ValueError):
        tail.measure_pages("http://127.0.0.1:1/predict", 0, n_pages=1)


def test_hedging_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        tail.compare_hedging("http://127.0.0.1:1/predict", hedge_delay_s=0)
