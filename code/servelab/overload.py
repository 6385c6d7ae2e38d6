"""Overload: goodput against offered load, load shedding, and what client retries do to it.

*Goodput* is the rate of answers that are both successful and within the
SLO. Past a server's saturation rate, an unbounded queue makes every answer
late, so goodput collapses although the server is busy all the time; a
bounded queue (``servelab.apps.batched.start(max_queue=...)``) refuses the
excess at once with 503, and goodput stays near its peak (Google SRE book,
"Handling Overload" and "Addressing Cascading Failures").

Clients make it worse or better. Retrying every 503 at once multiplies the
offered load exactly when the server has none to spare (a retry storm).
Exponential backoff with jitter spreads retries out, and a *retry budget*
caps them at a fraction of the original requests, as Envoy's retry budgets
and gRPC's retry throttling do.

:func:`open_loop_with_retries` is an open-loop client (Poisson arrivals, as
:func:`servelab.load.open_loop`) whose every request may be retried under a
:class:`RetryPolicy`; :func:`goodput_sweep` measures a curve of
:class:`GoodputPoint` against offered load.
Taught in: chapters/04_batching.ipynb (overload).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import aiohttp
import numpy as np

from servelab import load, servers

#: Statuses that say "overloaded, try again": the ones a client may retry.
RETRYABLE = frozenset({503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries a 503/504 or a failed connection.

    ``max_attempts`` counts the first try (1: never retry). The n-th retry
    waits a random time in ``[0, min(cap, base * 2**(n-1))]`` ("full jitter");
    ``backoff_base_s=0`` retries at once. ``budget_ratio`` caps retries at that
    fraction of first attempts (None: no cap), with ``budget_burst`` retries
    allowed up front.
    """

    max_attempts: int = 1
    backoff_base_s: float = 0.0
    backoff_cap_s: float = 1.0
    budget_ratio: float | None = None
    budget_burst: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.backoff_base_s < 0 or self.backoff_cap_s < 0:
            raise ValueError("need max_attempts >= 1 and non-negative backoff times")
        if self.budget_ratio is not None and not 0 <= self.budget_ratio <= 1:
            raise ValueError(f"budget_ratio must be in [0, 1], got {self.budget_ratio}")

    def delay_s(self, retry: int, rng: random.Random) -> float:
        """How long to wait before retry number ``retry`` (1 for the first retry)."""
        if self.backoff_base_s == 0:
            return 0.0
        return rng.uniform(0.0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** (retry - 1)))


NO_RETRIES = RetryPolicy()
#: Retry every refusal at once, up to three times: the retry storm.
NAIVE_RETRIES = RetryPolicy(max_attempts=4)
#: Exponential backoff with full jitter, and retries at most 10% of requests (Envoy's and gRPC's idea).
BACKOFF_WITH_BUDGET = RetryPolicy(max_attempts=4, backoff_base_s=0.05, backoff_cap_s=1.0, budget_ratio=0.1)


class RetryBudget:
    """A token bucket for retries: each first attempt adds ``ratio`` tokens, each retry spends one.

    So over any long run retries are at most ``ratio`` × first attempts, plus
    the ``burst`` the bucket starts with (and never holds more than).
    """

    def __init__(self, ratio: float | None, burst: float = 10.0) -> None:
        self.ratio = ratio
        self.burst = burst
        self.tokens = burst
        self.refused = 0

    def on_first_attempt(self) -> None:
        if self.ratio is not None:
            self.tokens = min(self.burst, self.tokens + self.ratio)

    def allow_retry(self) -> bool:
        """Spend a token for a retry; False (and counted) when the budget is spent."""
        if self.ratio is None:
            return True
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.refused += 1
        return False


@dataclass
class RetryRunResult:
    """One open-loop run with retries. One entry per original request; latencies in seconds.

    ``latencies`` run from the request's scheduled time to its final answer
    (inf if none came in time); ``statuses`` are the final answers' statuses
    (0: no HTTP answer); ``attempts`` counts tries including the first.
    """

    latencies: np.ndarray
    statuses: np.ndarray
    attempts: np.ndarray
    duration_s: float
    budget_refused: int

    @property
    def sent(self) -> int:
        return int(self.latencies.size)

    @property
    def offered_rate(self) -> float:
        return self.sent / self.duration_s

    @property
    def attempt_rate(self) -> float:
        """Tries per second, retries included: the load the server really saw."""
        return float(self.attempts.sum()) / self.duration_s

    def goodput(self, slo_s: float) -> float:
        """Successful answers within ``slo_s`` per second."""
        return goodput(self.latencies, self.statuses, self.duration_s, slo_s)


def goodput(latencies: np.ndarray, statuses: np.ndarray, duration_s: float, slo_s: float) -> float:
    """Answers that are 2xx *and* within ``slo_s``, per second of ``duration_s``."""
    ok = (statuses >= 200) & (statuses < 300) & (latencies <= slo_s)
    return float(ok.sum()) / duration_s


async def _attempt(session: aiohttp.ClientSession, request: dict) -> int:
    try:
        async with session.request(**request) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return 0


async def _run_with_retries(url: str, rate: float, duration_s: float, body: bytes | None,
                            headers: Mapping[str, str] | None, policy: RetryPolicy, grace_s: float,
                            seed: int) -> RetryRunResult:  # fmt: skip
    schedule = load.poisson_schedule(rate, duration_s, seed)
    n = schedule.size
    latencies, statuses, attempts = np.full(n, math.inf), np.zeros(n, dtype=int), np.zeros(n, dtype=int)
    budget, rng = RetryBudget(policy.budget_ratio, policy.budget_burst), random.Random(seed)
    request = {"method": "POST", "url": url, "data": body, "headers": dict(headers or {})}
    timeout = aiohttp.ClientTimeout(total=load.REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2000), timeout=timeout) as session:
        start = time.perf_counter()

        async def one(i: int) -> None:
            budget.on_first_attempt()
            while True:
                attempts[i] += 1
                status = await _attempt(session, request)
                statuses[i] = status
                retryable = status == 0 or status in RETRYABLE
                if not retryable or attempts[i] >= policy.max_attempts or not budget.allow_retry():
                    break
                await asyncio.sleep(policy.delay_s(int(attempts[i]), rng))
            latencies[i] = time.perf_counter() - (start + schedule[i])

        tasks = []
        for i, offset in enumerate(schedule):
            wait = start + offset - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(i)))
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, start + duration_s + grace_s - time.perf_counter()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    unanswered = np.isinf(latencies)
    statuses[unanswered] = 0
    return RetryRunResult(latencies, statuses, attempts, duration_s, budget.refused)


def open_loop_with_retries(
    url: str,
    *,
    rate: float,
    duration_s: float = 3.0,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    policy: RetryPolicy = NO_RETRIES,
    grace_s: float = 1.0,
    seed: int = 0,
) -> RetryRunResult:
    """Poisson arrivals at ``rate``/s for ``duration_s``; each request retried under ``policy``.

    Only ever sends to 127.0.0.1/localhost/[::1]; bounded by the schedule (at
    most ``rate * duration_s * 1.5 + 10`` requests, each tried at most
    ``policy.max_attempts`` times) and by ``duration_s + grace_s`` of wall time,
    after which unfinished requests count as unanswered (latency inf).
    """
    load.check_loopback(url)
    if not (rate > 0 and duration_s > 0 and grace_s >= 0):
        raise ValueError("need rate > 0, duration_s > 0 and grace_s >= 0")
    coro = _run_with_retries(url, rate, duration_s, body, headers, policy, grace_s, seed)
    cap_s = duration_s + grace_s + load.HARD_CAP_EXTRA_S
    return load.run_coro(asyncio.wait_for(coro, cap_s))


@dataclass(frozen=True)
class GoodputPoint:
    """One offered rate: what was offered, what the server saw, and what came back good."""

    label: str
    offered_rate: float
    attempt_rate: float
    goodput: float
    p99_s: float
    shed_share: float
    budget_refused: int


def goodput_sweep(
    server: servers.Server,
    rates: Sequence[float],
    *,
    slo_s: float,
    label: str = "",
    path: str = "/predict",
    body: bytes | None = b'{"batch": 1}',
    headers: Mapping[str, str] | None = None,
    policy: RetryPolicy = NO_RETRIES,
    duration_s: float = 3.0,
    grace_s: float = 1.0,
    between_points: Callable[[], object] | None = None,
) -> list[GoodputPoint]:
    """Goodput and p99 at each offered rate, and the load the retries added.

    ``between_points`` runs after each point, e.g.
    ``lambda: batched.wait_until_drained(server.url)`` so a backlog left by an
    overloaded point does not start the next one.
    """
    headers = headers or {"Content-Type": "application/json"}
    points = []
    for i, rate in enumerate(rates):
        result = open_loop_with_retries(server.url + path, rate=rate, duration_s=duration_s, body=body,
                                        headers=headers, policy=policy, grace_s=grace_s, seed=i)  # fmt: skip
        points.append(GoodputPoint(
            label=label,
            offered_rate=result.offered_rate,
            attempt_rate=result.attempt_rate,
            goodput=result.goodput(slo_s),
            p99_s=float(np.percentile(result.latencies, 99)) if result.sent else math.nan,
            shed_share=float(np.isin(result.statuses, list(RETRYABLE)).mean()) if result.sent else 0.0,
            budget_refused=result.budget_refused,
        ))  # fmt: skip
        if between_points is not None:
            between_points()
    return points
