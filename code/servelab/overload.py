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
Taught in: chapters/04b_payloads_overload.ipynb.
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

from servelab import claims, contention, load, plots, servers

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
    sent: int = 0
    rate: float = math.nan  # the rate asked for (offered_rate is the Poisson draw's)
    outside_cores: float = 0.0
    contended: bool = False

    @property
    def retries_per_request(self) -> float:
        """Retries per original request: what the client's policy added on top of the offered load."""
        return self.attempt_rate / self.offered_rate - 1 if self.offered_rate > 0 else 0.0


def goodput_sweep(
    server: servers.Server,
    rates: Sequence[float],
    *,
    slo_s: float,
    label: str = "",
    path: str = "/predict",
    body: bytes | None = load.PREDICT_BODY,
    headers: Mapping[str, str] | None = None,
    policy: RetryPolicy = NO_RETRIES,
    duration_s: float = 3.0,
    grace_s: float = 1.0,
    between_points: Callable[[], object] | None = None,
    retries: int = 1,
) -> list[GoodputPoint]:
    """Goodput and p99 at each offered rate, and the load the retries added.

    ``between_points`` runs after each point, e.g.
    ``lambda: batched.wait_until_drained(server.url)`` so a backlog left by an
    overloaded point does not start the next one. A point during which other
    programs took too much CPU is measured again, up to ``retries`` times, and
    flagged ``contended`` if it stayed so.
    """
    headers = headers or load.JSON_HEADERS
    points = []
    for i, rate in enumerate(rates):
        def attempt(rate: float = rate, seed: int = i) -> RetryRunResult:
            result = open_loop_with_retries(server.url + path, rate=rate, duration_s=duration_s, body=body,
                                            headers=headers, policy=policy, grace_s=grace_s, seed=seed)  # fmt: skip
            if between_points is not None:  # inside the attempt: a retry must not start on a backlog either
                between_points()
            return result

        measured = contention.measure_uncontended(attempt, retries=retries, pause=0.2)
        result = measured.value
        points.append(GoodputPoint(
            label=label,
            offered_rate=result.offered_rate,
            attempt_rate=result.attempt_rate,
            goodput=result.goodput(slo_s),
            p99_s=float(np.quantile(result.latencies, 0.99, method="higher")) if result.sent else math.nan,  # inf stays inf
            shed_share=float(np.isin(result.statuses, list(RETRYABLE)).mean()) if result.sent else 0.0,
            budget_refused=result.budget_refused,
            sent=result.sent,
            rate=float(rate),
            outside_cores=measured.outside_cores,
            contended=measured.contended,
        ))  # fmt: skip
    return points


def nearest(points: Sequence[GoodputPoint], rate: float) -> GoodputPoint:
    """The point whose requested rate is closest to ``rate``."""
    return min(points, key=lambda p: abs(p.rate - rate))


def peak_goodput(points: Sequence[GoodputPoint]) -> float:
    """The highest goodput of a curve (answers within the SLO per second)."""
    return max(p.goodput for p in points)


# --------------------------------------------------------------------------- claims (the chapter's check cell)


def _skip_if_contended(claim: claims.Claim, points: Sequence[GoodputPoint],
                       saturation_busy: float | None) -> claims.Claim:  # fmt: skip
    """Goodput at one rate against the peak of another: outside load on either can move the ratio either way,
    and a saturation rate measured while other programs were busy puts "2×" somewhere else."""
    busy = [p.outside_cores for p in points if p.contended] + ([saturation_busy] if saturation_busy is not None else [])
    if not busy:
        return claim
    return claims.skipped(claim.id, claim.sentence, kind="contended", measured=claim.measured, bound=claim.bound,
                          reason=f"other programs took up to {max(busy):.2f} cores during {len(busy)} of "
                                 f"{len(points) + 1} measurements (the overload points and the saturation rate), "
                                 "after retries")  # fmt: skip


def claim_shedding_keeps_goodput(points: Sequence[GoodputPoint], saturation: float, *, factor: float = 2.0,
                                 bound: float = 0.8, saturation_busy: float | None = None) -> claims.Claim:  # fmt: skip
    """With load shedding, goodput at ``factor`` × saturation is ≥ ``bound`` × the curve's peak goodput.

    ``saturation_busy``: other programs' load while the saturation rate was measured, if it was contended.
    """
    at, peak = nearest(points, factor * saturation), peak_goodput(points)
    share = at.goodput / peak if peak > 0 else 0.0
    claim = claims.at_least(
        "ch4b.shedding_keeps_goodput", f"With load shedding, goodput at {factor:g}× the saturation rate is ≥ "
        f"{bound:.0%} of the peak goodput.", share, bound, unit="", digits=2,
        fail=f"with shedding, goodput at {at.rate:.0f}/s offered was {at.goodput:.1f}/s against a peak of {peak:.1f}/s "
             f"({share:.0%}); a bounded queue with deadlines should keep the server busy on requests it can answer in time")  # fmt: skip
    return _skip_if_contended(claim, points, saturation_busy)


def claim_collapse_without_shedding(points: Sequence[GoodputPoint], saturation: float, *, factor: float = 2.0,
                                    bound: float = 0.5, saturation_busy: float | None = None) -> claims.Claim:  # fmt: skip
    """Without shedding, goodput at ``factor`` × saturation falls to ≤ ``bound`` × the curve's peak."""
    at, peak = nearest(points, factor * saturation), peak_goodput(points)
    share = at.goodput / peak if peak > 0 else 1.0
    claim = claims.at_most(
        "ch4b.collapse_without_shedding", f"Without load shedding, goodput at {factor:g}× the saturation rate falls to "
        f"≤ {bound:.0%} of the peak goodput.", share, bound, unit="", digits=2,
        fail=f"without shedding, goodput at {at.rate:.0f}/s offered was still {at.goodput:.1f}/s against a peak of "
             f"{peak:.1f}/s ({share:.0%}); past saturation an unbounded queue should make nearly every answer late")  # fmt: skip
    return _skip_if_contended(claim, points, saturation_busy)


def claim_naive_retries_multiply_load(point: GoodputPoint, *, bound: float = 1.5,
                                      saturation_busy: float | None = None) -> claims.Claim:  # fmt: skip
    """Naive retries against an overloaded, shedding server multiply the load it sees by ≥ ``bound``.

    Past saturation most first attempts are refused at once, and each refusal is retried at once into a
    queue that is still full: the load is the client's policy, not the machine's speed. Only a saturation
    rate measured too low, while other programs were busy (``saturation_busy`` cores), can break it: then
    "twice the saturation rate" is no overload, and a failure is a skip.
    """
    ratio = point.attempt_rate / point.offered_rate if point.offered_rate > 0 else 0.0
    return claims.unless_contended(claims.at_least(
        "ch4b.naive_retries_multiply_load", f"Naive retries multiply the load on an overloaded server by ≥ {bound:g}×.",
        ratio, bound, fail=f"at {point.rate:.0f}/s offered, naive retries sent {point.attempt_rate:.0f} attempts/s "
                           f"({ratio:.2f}×), with {point.shed_share:.0%} of requests finally refused; refused requests "
                           "retried at once should multiply the load"), saturation_busy)  # fmt: skip


def claim_budget_caps_retries(point: GoodputPoint, policy: RetryPolicy) -> claims.Claim:
    """A retry budget holds retries to its ratio of first attempts, plus its burst."""
    ratio = policy.budget_ratio or 0.0
    allowed = ratio + policy.budget_burst / max(1, point.sent)
    return claims.at_most(
        "ch4b.budget_caps_retries", f"A retry budget of {ratio:.0%} holds retries to {ratio:.0%} of requests "
        f"(plus a burst of {policy.budget_burst:g}).", point.retries_per_request, allowed, unit=" retries/request",
        fail=f"with a {ratio:.0%} budget the client made {point.retries_per_request:.2f} retries per request over "
             f"{point.sent} requests; the budget allows {allowed:.2f}")  # fmt: skip


# --------------------------------------------------------------------------- figures


def plot_goodput(curves: Mapping[str, tuple[Sequence[GoodputPoint], str]], saturation: float, slo_ms: float,
                 point_s: float) -> "plots.Figure":  # fmt: skip
    """Goodput (left) and p99 (right) against offered load in multiples of the saturation rate, per curve."""
    fig, (ax1, ax2) = plots.figure(ncols=2)
    top_ms = 20 * slo_ms
    for name, (points, color) in curves.items():
        pts = sorted(points, key=lambda p: p.rate)
        x = [p.rate / saturation for p in pts]
        style = "--" if "retries" in name else "-"
        plots.line_with_contended(ax1, x, [p.goodput for p in pts], [p.contended for p in pts], color=color,
                                  ls=style, label=name)
        plots.line_with_contended(ax2, x, [min(p.p99_s * 1e3, top_ms) for p in pts], [p.contended for p in pts],
                                  color=color, ls=style, label=name)
    ax1.plot([0, 3], [0, 3 * saturation], ":", color=plots.COLORS["predicted"], lw=1, label="every request good")
    ax1.axhline(saturation, color=plots.COLORS["throughput"], lw=1, ls=":", label="saturation rate")
    ax1.set_ylim(0, 1.3 * saturation)
    ax1.legend(fontsize=8)
    plots.label(ax1, "offered load (× saturation rate)", f"goodput (answers within {slo_ms:g} ms per s)",
                "Goodput against offered load")
    ax2.axhline(slo_ms, color=plots.COLORS["p99"], lw=1, label=f"objective: {slo_ms:g} ms")
    ax2.set_yscale("log")
    plots.plain_log_axis(ax2.yaxis)
    ax2.set_ylim(top=top_ms * 1.15)
    ax2.legend(fontsize=8)
    plots.label(ax2, "offered load (× saturation rate)", "p99 latency (ms, open loop, refusals included)",
                "p99 against offered load")
    every = [p for points, _ in curves.values() for p in points]
    plots.caption(fig, f"Batching server, {point_s:g} s of Poisson traffic per point; saturation {saturation:.0f} "
                  "requests/s (closed loop). A refused request's latency is its final answer's. "
                  + plots.contended_note(every))
    return fig


def plot_retries(curves: Mapping[str, tuple[Sequence[GoodputPoint], str]], saturation: float,
                 slo_ms: float) -> "plots.Figure":  # fmt: skip
    """Attempts per second (left) and goodput (right) per client retry policy, as grouped bars per offered load."""
    fig, (ax1, ax2) = plots.figure(ncols=2)
    names = list(curves)
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        points, color = curves[name]
        pts = sorted(points, key=lambda p: p.rate)
        x = np.arange(len(pts)) + (k - (len(names) - 1) / 2) * width
        ax1.bar(x, [p.attempt_rate for p in pts], width, color=color, label=name,
                hatch=["//" if p.contended else "" for p in pts])
        ax2.bar(x, [p.goodput for p in pts], width, color=color, label=name,
                hatch=["//" if p.contended else "" for p in pts])
    ticks = [f"{p.rate / saturation:.1f}×" for p in sorted(curves[names[0]][0], key=lambda p: p.rate)]
    for ax in (ax1, ax2):
        ax.set_xticks(np.arange(len(ticks)), ticks)
        ax.legend(fontsize=8)
    plots.label(ax1, "offered load (× saturation rate)", "attempts the server saw (per s)", "Load with retries")
    plots.label(ax2, "offered load (× saturation rate)", f"goodput (answers within {slo_ms:g} ms per s)",
                "Goodput with retries")
    plots.caption(fig, "The same shedding batching server; naive: up to 3 retries at once; budget: up to 3 retries "
                  "with exponential backoff and full jitter, at most 10% of requests. Hatched: contended.")
    return fig


# --------------------------------------------------------------------------- text built from the numbers


def format_point(point: GoodputPoint, saturation: float) -> str:
    """One line per point, for the notebook's running log."""
    flag = " (contended)" if point.contended else ""
    return (f"{point.label:22s} {point.rate / saturation:3.1f}× saturation: offered {point.offered_rate:6.1f}/s, "
            f"attempts {point.attempt_rate:6.1f}/s, goodput {point.goodput:6.1f}/s, p99 {point.p99_s * 1e3:7.0f} ms, "
            f"refused {point.shed_share:4.0%}, outside load {point.outside_cores:.2f} cores{flag}")


def describe_goodput(shedding: Sequence[GoodputPoint], no_shedding: Sequence[GoodputPoint], saturation: float) -> str:
    """The collapse and the plateau, in words that follow the numbers."""
    shed_peak, bare_peak = peak_goodput(shedding), peak_goodput(no_shedding)
    shed_2x, bare_2x = nearest(shedding, 2 * saturation).goodput, nearest(no_shedding, 2 * saturation).goodput
    bare = (f"Without shedding, goodput peaked at {bare_peak:.1f} answers within the objective per second and fell to "
            f"{bare_2x / bare_peak:.0%} of that at twice the saturation rate" if bare_peak > 0 else
            "Without shedding, no answer met the objective at any load")
    if bare_peak > 0 and bare_2x < 0.5 * bare_peak:
        bare += ": the collapse. Every request waited behind the whole backlog"
    shed = (f"with shedding it peaked at {shed_peak:.1f} and kept {shed_2x / shed_peak:.0%} of that at twice the rate"
            if shed_peak > 0 else "with shedding no answer met the objective either")
    if shed_peak > 0 and shed_2x >= 0.8 * shed_peak:
        shed += ": a plateau. The server kept computing full batches of requests that could still be answered in time"
    return f"{bare}; {shed}."


def describe_retries(naive: GoodputPoint, budget: GoodputPoint, none: GoodputPoint) -> str:
    """What each retry policy did to goodput at the same offered load, in words that follow the numbers."""
    def versus(point: GoodputPoint) -> str:
        change = point.goodput / none.goodput - 1 if none.goodput > 0 else 0.0
        return f"{point.goodput:.1f}/s ({change:+.0%} against no retries)"

    return (f"Goodput was {none.goodput:.1f} requests/s within the objective without retries, {versus(naive)} with "
            f"naive retries and {versus(budget)} with backoff and a budget.")
