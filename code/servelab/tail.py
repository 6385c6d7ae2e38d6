"""Latency tails: load sweeps, pages that fan out to k model calls, and hedged requests.

Three measurements against a real server on 127.0.0.1, and the arithmetic
that predicts them:

- :func:`load_sweep`: closed-loop load at rising concurrency, the
  throughput-versus-percentile "hockey stick".
- :func:`measure_pages`: a *page* sends k model calls at once and waits for
  the slowest, so page latency is the maximum of k call latencies. If the
  calls are independent, ``P(page <= t) = P(call <= t) ** k``
  (:func:`predicted_page_quantile`, :func:`slow_page_probability`).
- :func:`compare_hedging`: a hedged call sends a second copy of a request
  if the first has not answered after a delay, and takes whichever answers
  first (Dean & Barroso, "The Tail at Scale").

Taught in: chapters/01_latency.ipynb.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Awaitable, Callable, Mapping, Sequence

import aiohttp
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from servelab import claims, contention, load, plots, servers, stats
from servelab.notebook import markdown_table
from servelab.progress import progress



# --------------------------------------------------------------------------- the arithmetic


def slow_page_probability(p_slow_call: float, k: int) -> float:
    """Chance that a page of ``k`` independent calls waits for at least one slow call.

    ``1 - (1 - p)^k``: with 1% slow calls and k = 100, 63% of pages are slow.
    Taught in: chapters/01_latency.ipynb.
    """
    if not 0.0 <= p_slow_call <= 1.0 or k < 1:
        raise ValueError(f"need 0 <= p <= 1 and k >= 1, got p={p_slow_call}, k={k}")
    return 1.0 - (1.0 - p_slow_call) ** k


def predicted_page_quantile(call_latencies: Sequence[float], k: int, q: float) -> float:
    """The q-quantile (0..1) of the slowest of k independent calls, from single-call latencies.

    ``P(page <= t) = P(call <= t)^k``, so the page's q-quantile is the single
    call's ``q^(1/k)``-quantile: the page p50 at k = 8 is a single call's p91.7.
    Taught in: chapters/01_latency.ipynb.
    """
    if k < 1 or not 0.0 < q < 1.0:
        raise ValueError(f"need k >= 1 and 0 < q < 1, got k={k}, q={q}")
    return stats.percentile(call_latencies, 100 * q ** (1.0 / k))


# --------------------------------------------------------------------------- the client


async def _post(session: aiohttp.ClientSession, url: str) -> float:
    """POST one prediction; seconds until the whole answer arrived. Raises on an HTTP error."""
    t0 = time.perf_counter()
    async with session.post(url, data=load.PREDICT_BODY, headers=load.JSON_HEADERS) as response:
        await response.read()
        response.raise_for_status()
    return time.perf_counter() - t0


@dataclass
class PageRun:
    """Pages of ``k`` parallel calls, run back to back. Latencies in seconds.

    ``call_latencies`` holds every call of every page (``k`` per page), each
    timed from the page's start, so a page's latency is the max of its calls.
    Taught in: chapters/01_latency.ipynb.
    """

    k: int
    page_latencies: np.ndarray
    call_latencies: np.ndarray
    duration_s: float
    client_cores: float
    outside_cores: float = 0.0
    contended: bool = False

    @property
    def pages(self) -> int:
        return int(self.page_latencies.size)

    def page_percentile(self, q: float) -> float:
        """Measured page latency percentile, q in 0..100."""
        return stats.percentile(self.page_latencies, q)

    def predicted_percentile(self, q: float) -> float:
        """Page latency percentile the formula predicts from this run's own calls."""
        return predicted_page_quantile(self.call_latencies, self.k, q / 100)

    def formula_ratio(self, q: float) -> float:
        """Measured over predicted page percentile: 1.0 when the formula is exact."""
        return self.page_percentile(q) / self.predicted_percentile(q)


async def _page(session: aiohttp.ClientSession, url: str, k: int) -> list[float]:
    return list(await asyncio.gather(*(_post(session, url) for _ in range(k))))


@dataclass
class _PageTally:
    pages: list[list[float]]
    wall_s: float = 0.0
    cpu_s: float = 0.0


async def _fanout_rounds(
    url: str, seconds: dict[int, float], n_pages: int, rounds: int, warmup_pages: int
) -> dict[int, _PageTally]:
    """Blocks of pages for each k in turn, ``rounds`` times: a slow spell hits every k alike."""
    tallies = {k: _PageTally([]) for k in seconds}
    async with load.new_session(max(seconds)) as session:
        for k in seconds:
            for _ in range(warmup_pages):
                await _page(session, url, k)
        for _ in progress(range(rounds), desc="fan-out pages", unit="round"):
            for k, total_s in seconds.items():
                tally = tallies[k]
                cpu0, start = time.process_time(), time.perf_counter()
                while len(tally.pages) < n_pages and time.perf_counter() - start < total_s / rounds:
                    tally.pages.append(await _page(session, url, k))
                tally.wall_s += time.perf_counter() - start
                tally.cpu_s += time.process_time() - cpu0
    return tallies


def measure_fanout(
    url: str,
    seconds_per_k: Mapping[int, float],
    *,
    n_pages: int = 100_000,
    rounds: int = 4,
    warmup_pages: int = 5,
    retries: int = 1,
) -> dict[int, PageRun]:
    """Pages of k concurrent POSTs to ``url`` for each k in ``seconds_per_k``, one page at a time.

    Each k gets about ``seconds_per_k[k]`` seconds (at most ``n_pages`` pages),
    split into ``rounds`` blocks that alternate between the k values, so
    every k is measured under the same conditions. The whole run is repeated
    (up to ``retries`` times) while other programs take CPU
    (:func:`servelab.contention.measure_uncontended`).
    Taught in: chapters/01_latency.ipynb.
    """
    load.check_loopback(url)
    if not seconds_per_k or min(seconds_per_k) < 1 or n_pages < 1 or rounds < 1:
        raise ValueError(f"need k >= 1, n_pages >= 1 and rounds >= 1, got {dict(seconds_per_k)}, {n_pages}, {rounds}")

    def run() -> dict[int, PageRun]:
        tallies = load.run_coro(_fanout_rounds(url, dict(seconds_per_k), n_pages, rounds, warmup_pages))
        return {k: PageRun(k, np.asarray([max(p) for p in t.pages]), np.asarray(t.pages, dtype=float).reshape(-1),
                           t.wall_s, t.cpu_s / t.wall_s) for k, t in tallies.items()}  # fmt: skip

    measured = contention.measure_uncontended(run, retries=retries)
    for page_run in measured.value.values():
        page_run.outside_cores, page_run.contended = measured.outside_cores, measured.contended
    return measured.value


def measure_pages(
    url: str, k: int, *, n_pages: int = 1000, max_seconds: float = 3.0, warmup_pages: int = 5, retries: int = 1
) -> PageRun:
    """Pages of ``k`` concurrent POSTs to ``url``, one page at a time, for ``max_seconds`` or ``n_pages``.

    Taught in: chapters/01_latency.ipynb.
    """
    return measure_fanout(url, {k: max_seconds}, n_pages=n_pages, rounds=1, warmup_pages=warmup_pages,
                          retries=retries)[k]  # fmt: skip


# --------------------------------------------------------------------------- hedged requests


async def hedged_call(send: Callable[[], Awaitable[object]], delay_s: float) -> tuple[float, bool]:
    """Await ``send()``; if it has not answered after ``delay_s``, also start a second ``send()``.

    Returns the seconds until the first answer and whether a second copy was
    sent. The slower copy is cancelled (its connection closed); a server
    that already started it may still do the work, which is hedging's cost.
    Taught in: chapters/01_latency.ipynb.
    """
    t0 = time.perf_counter()
    first = asyncio.ensure_future(send())
    done, _ = await asyncio.wait({first}, timeout=delay_s)
    if done:
        first.result()  # raise an HTTP error rather than time it
        return time.perf_counter() - t0, False
    second = asyncio.ensure_future(send())
    done, pending = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
    latency = time.perf_counter() - t0
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    done.pop().result()
    return latency, True


@dataclass
class HedgeComparison:
    """Plain calls and hedged calls to the same server, measured in alternating blocks (seconds).

    Taught in: chapters/01_latency.ipynb.
    """

    hedge_delay_s: float
    plain: np.ndarray
    hedged: np.ndarray
    hedges_sent: int
    outside_cores: float
    delay_source: str = "given"

    @property
    def extra_load(self) -> float:
        """Extra requests sent by hedging, as a fraction of hedged calls."""
        return self.hedges_sent / max(1, self.hedged.size)


async def _hedge_blocks(
    url: str, delay_s: float | None, percentile: float, calls_per_block: int, blocks: int, max_seconds: float
) -> tuple[list[float], list[float], int, float]:
    plain: list[float] = []
    hedged: list[float] = []
    hedges = 0
    async with load.new_session(4) as session:
        for _ in range(5):  # warm-up
            await _post(session, url)
        start = time.perf_counter()
        for _ in progress(range(blocks), desc="plain and hedged calls", unit="block"):
            if time.perf_counter() - start > max_seconds:
                break
            for _ in range(calls_per_block):
                plain.append(await _post(session, url))
            if delay_s is None:  # from the first plain block: this server, right now
                delay_s = stats.percentile(plain, percentile)
            for _ in range(calls_per_block):
                latency, sent_second = await hedged_call(lambda: _post(session, url), delay_s)
                hedged.append(latency)
                hedges += sent_second
    return plain, hedged, hedges, delay_s


def compare_hedging(
    url: str,
    *,
    hedge_delay_s: float | None = None,
    hedge_percentile: float = 95.0,
    n_calls: int = 2000,
    blocks: int = 4,
    max_seconds: float = 8.0,
) -> HedgeComparison:
    """Time ``n_calls`` plain calls and ``n_calls`` hedged calls, one call at a time.

    Plain and hedged blocks alternate, so a slow spell on the machine hits
    both alike. Hedged calls send a second copy after ``hedge_delay_s`` and
    keep the first answer. With ``hedge_delay_s=None`` the delay is the
    ``hedge_percentile`` of the first plain block, so about
    ``100 - hedge_percentile`` % of calls get a second copy.
    Taught in: chapters/01_latency.ipynb.
    """
    load.check_loopback(url)
    if (hedge_delay_s is not None and hedge_delay_s <= 0) or n_calls < blocks or blocks < 1:
        raise ValueError("need hedge_delay_s > 0 (or None) and n_calls >= blocks >= 1")
    with contention.OutsideLoad() as outside:
        plain, hedged, hedges, delay = load.run_coro(
            _hedge_blocks(url, hedge_delay_s, hedge_percentile, n_calls // blocks, blocks, max_seconds)
        )
    label = f"plain p{hedge_percentile:g}" if hedge_delay_s is None else "given"
    return HedgeComparison(delay, np.asarray(plain), np.asarray(hedged), hedges, outside.cores, label)


# --------------------------------------------------------------------------- load sweep


def sweep_concurrencies(cores: int, scale: int = 1) -> list[int]:
    """Concurrency levels from 1 to ``4 * cores * scale``, denser at the low end.

    Taught in: chapters/01_latency.ipynb.
    """
    top = 4 * cores * scale
    levels = {1, 2, cores, 2 * cores, 3 * cores, top}
    levels |= {int(round(top * f)) for f in (0.5, 0.75)}
    return sorted(c for c in levels if 1 <= c <= top)


def load_sweep(
    server: "servers.Server",
    concurrencies: Sequence[int],
    *,
    duration_s: float = 2.0,
    path: str = "/predict",
    retries: int = 2,
) -> list[load.ClosedLoopPoint]:
    """Closed-loop load (:func:`servelab.load.measure_closed`) at each concurrency against a running server.

    Each point runs ``duration_s`` after a short warm-up, and is measured again
    while other programs take CPU (:func:`servelab.contention.measure_uncontended`).
    A point that breaks the shape a closed loop must have (throughput falling as
    concurrency rises) is measured again too; if it stays broken it is flagged
    ``contended``, so figures draw it hollow. Taught in: chapters/01_latency.ipynb.
    """
    def measure(c: int) -> load.ClosedLoopPoint:
        return load.measure_closed(server, c, path=path, duration_s=duration_s, warmup_s=min(0.3, duration_s / 4),
                                   retries=retries)  # fmt: skip

    points = [measure(c) for c in progress(concurrencies, desc="load sweep", unit="concurrency")]
    for _ in range(retries):
        broken = shape_breaks(points)
        if not broken:
            break
        for i in broken:
            again = measure(points[i].concurrency)
            points[i] = again if again.throughput > points[i].throughput else points[i]
    return [replace(p, contended=True) if i in shape_breaks(points) else p for i, p in enumerate(points)]


def shape_breaks(points: Sequence[load.ClosedLoopPoint], tolerance: float = 0.8) -> list[int]:
    """Indices of closed-loop points whose throughput fell below ``tolerance`` × the best at lower concurrency.

    More connections can only keep a closed-loop server as busy or busier, so such a
    dip is a disturbance (another program took the CPU), not a property of the server.
    """
    broken, best = [], 0.0
    for i, p in enumerate(points):
        if p.throughput < tolerance * best:
            broken.append(i)
        best = max(best, p.throughput)
    return broken


# --------------------------------------------------------------------------- tables


def sweep_table(points: Sequence[load.ClosedLoopPoint]) -> str:
    """The load sweep as a Markdown table (latencies in ms, CPU in cores).

    Taught in: chapters/01_latency.ipynb.
    """
    return markdown_table([{
        "concurrency": p.concurrency, "requests/s": f"{p.throughput:.0f}", "p50 (ms)": 1e3 * p.p50_s,
        "p95 (ms)": 1e3 * p.p95_s, "p99 (ms)": 1e3 * p.p99_s, "requests": p.completed, "errors": p.errors,
        "load generator CPU (cores)": p.client_cores, "server CPU (cores)": p.server_cores,
        "other programs (cores)": p.outside_cores,
    } for p in points])  # fmt: skip


def fanout_table(runs: Sequence[PageRun], slow_s: float) -> str:
    """Pages per fan-out k as a Markdown table: measured and predicted p50/p99 (ms), slow pages.

    Taught in: chapters/01_latency.ipynb.
    """
    return markdown_table([{
        "k": r.k, "pages": r.pages, "page p50 (ms)": 1e3 * r.page_percentile(50),
        "predicted p50 (ms)": 1e3 * r.predicted_percentile(50), "page p99 (ms)": 1e3 * r.page_percentile(99),
        "predicted p99 (ms)": 1e3 * r.predicted_percentile(99),
        f"pages > {1e3 * slow_s:.0f} ms (%)": 100 * float(np.mean(r.page_latencies > slow_s)),
        "client CPU (cores)": r.client_cores, "other programs (cores)": r.outside_cores,
    } for r in runs])  # fmt: skip


# --------------------------------------------------------------------------- figures


def plot_sweep(points: Sequence[load.ClosedLoopPoint], *, note: str = "") -> Figure:
    """The hockey stick: p50/p95/p99 latency against throughput (left) and against concurrency (right).

    Taught in: chapters/01_latency.ipynb.
    """
    fig, (left, right) = plots.figure(ncols=2)
    x_tp = [p.throughput for p in points]
    conc = [p.concurrency for p in points]
    busy = [p.contended for p in points]
    for name in ("p50", "p95", "p99"):
        ms = [1e3 * getattr(p, f"{name}_s") for p in points]
        plots.line_with_contended(left, x_tp, ms, busy, color=plots.COLORS[name], label=name)
        plots.line_with_contended(right, conc, ms, busy, color=plots.COLORS[name], label=name)
    for p in points:
        left.annotate(f"c={p.concurrency}", (p.throughput, 1e3 * p.p99_s), textcoords="offset points",
                      xytext=(-8, 6), fontsize=7.5, color="#555555")  # fmt: skip
    left.legend()
    left.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    plots.label(left, "throughput (requests/s)", "latency (ms)", "Latency against throughput")
    plots.label(right, "concurrent requests (closed loop)", "latency (ms)", "Latency against load")
    plots.caption(fig, " ".join(filter(None, [note, plots.contended_note(points)])))
    return fig


def plot_fanout(runs: Sequence[PageRun], lone_calls: Sequence[float], slow_s: float, *, note: str = "") -> Figure:
    """Page latency against fan-out k, measured and predicted (left); share of slow pages (right).

    Left: measured page p50/p99 (markers) and the formula's prediction from
    the same run's calls (dashed). Right: ``1 - (1 - p)^k`` for Dean & Barroso's
    1-in-100, 1-in-1,000 and 1-in-10,000 slow calls up to k = 2,000, with the
    measured share of pages slower than ``slow_s`` and the curve for the
    measured share of slow lone calls ``p``.
    Taught in: chapters/01_latency.ipynb.
    """
    fig, (left, right) = plots.figure(ncols=2)
    ks = [r.k for r in runs]
    for q, name in ((50, "p50"), (99, "p99")):
        left.plot(ks, [1e3 * r.page_percentile(q) for r in runs], "o", ms=7, color=plots.COLORS[name],
                  label=f"page {name}, measured")  # fmt: skip
        left.plot(ks, [1e3 * r.predicted_percentile(q) for r in runs], "--", color=plots.COLORS["predicted"],
                  lw=1, label="predicted from its calls" if q == 50 else None)  # fmt: skip
    left.set_xscale("log", base=2)
    left.set_xticks(ks, [str(k) for k in ks])
    left.set_yscale("log")
    lo, hi = left.get_ylim()
    left.set_yticks([t for t in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if lo <= t <= hi])
    left.yaxis.set_major_formatter(ScalarFormatter())
    left.yaxis.set_minor_formatter(NullFormatter())
    left.legend(fontsize=8.5)
    plots.label(left, "model calls per page, k", "page latency (ms)", "The slowest of k calls")

    k_axis = np.unique(np.round(np.logspace(0, np.log10(2000), 200)).astype(int))
    for p, style in ((0.01, "-"), (0.001, "--"), (0.0001, ":")):
        right.plot(k_axis, [100 * slow_page_probability(p, k) for k in k_axis], style, color="#555555",
                   label=f"1 call in {round(1 / p):,} slow")  # fmt: skip
    dean = 100 * slow_page_probability(0.01, 100)
    right.plot([100], [dean], "o", color=plots.COLORS["predicted"])
    right.annotate(f"k = 100: {dean:.0f}%", (100, dean), textcoords="offset points", xytext=(8, -4), fontsize=8.5)
    p_lone = float(np.mean(np.asarray(lone_calls) > slow_s))
    right.plot(k_axis[k_axis <= 64], [100 * slow_page_probability(p_lone, k) for k in k_axis[k_axis <= 64]],
               color=plots.COLORS["predicted"], lw=1.5, label=f"our server: {100 * p_lone:.1f}% of calls slow")  # fmt: skip
    right.plot(ks, [100 * np.mean(r.page_latencies > slow_s) for r in runs], "s", color=plots.COLORS["p99"],
               label=f"our pages slower than {1e3 * slow_s:.0f} ms, measured")  # fmt: skip
    right.set_xscale("log")
    right.set_ylim(0, 100)
    right.legend(fontsize=7.5, loc="upper left")
    plots.label(right, "model calls per page, k (log scale)", "pages that wait for a slow call (%)",
                "Fan-out makes the tail the common case")  # fmt: skip
    plots.caption(fig, note)
    return fig


def plot_hedging(comparison: HedgeComparison, *, note: str = "") -> Figure:
    """Share of calls slower than t, plain against hedged (log scale), with their p99s marked.

    Taught in: chapters/01_latency.ipynb.
    """
    fig, ax = plots.figure()
    for name, values, color in (("plain calls", comparison.plain, plots.COLORS["unbatched"]),
                                ("hedged calls", comparison.hedged, plots.COLORS["adaptive"])):  # fmt: skip
        ordered = np.sort(values) * 1e3
        survival = 1.0 - np.arange(1, ordered.size + 1) / ordered.size
        ax.step(ordered[:-1], 100 * survival[:-1], where="post", color=color, lw=1.6, label=name)
        p99 = 1e3 * stats.percentile(values, 99)
        ax.axvline(p99, color=color, ls=":", lw=1.2)
        ax.annotate(f"p99 {p99:.1f} ms", (p99, 30), rotation=90, color=color, fontsize=8.5,
                    textcoords="offset points", xytext=(3, 0))  # fmt: skip
    ax.axvline(1e3 * comparison.hedge_delay_s, color=plots.COLORS["p95"], ls="--", lw=1,
               label=f"hedge sent after {1e3 * comparison.hedge_delay_s:.1f} ms ({comparison.delay_source})")  # fmt: skip
    ax.axhline(1.0, color="#999999", lw=0.8)
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.legend(fontsize=8.5)
    plots.label(ax, "latency t (ms, log scale)", "calls slower than t (%)", "Hedged requests cut the tail")
    plots.caption(fig, note)
    return fig


# --------------------------------------------------------------------------- claims (chapter 1's check cell)


def _load_note(outside_cores: float) -> str:
    """What a failure message adds, so a reader can tell a busy machine from a broken claim."""
    return f" (other programs took up to {outside_cores:.2f} cores)"


def claim_sweep_no_errors(points: Sequence[load.ClosedLoopPoint]) -> claims.Claim:
    """The server answered every request of the sweep."""
    errors = [p.errors for p in points]
    return claims.condition(
        "ch1.sweep_no_errors", "The server answers every request of the load sweep without an error.",
        not any(errors), measured=f"{sum(errors)} errors", bound="0 errors",
        fail=f"the server answered with errors during the sweep: {errors}")


def claim_sweep_percentiles_ordered(points: Sequence[load.ClosedLoopPoint]) -> claims.Claim:
    """p99 is at or above p50 at every concurrency (otherwise the percentiles are broken)."""
    bad = [p for p in points if p.p99_s < p.p50_s]
    return claims.condition(
        "ch1.sweep_p99_above_p50", "At every concurrency of the sweep, p99 is at or above p50.", not bad,
        measured=f"{len(points) - len(bad)} of {len(points)} points", bound="all points",
        fail="; ".join(f"p99 {p.p99_s:.4f} s below p50 {p.p50_s:.4f} s at concurrency {p.concurrency}" for p in bad)
             + ": the percentiles are broken")


def claim_sweep_reaches_queue(points: Sequence[load.ClosedLoopPoint], cores: int) -> claims.Claim:
    """The sweep's last point queues 4 requests per usable core, enough to show the hockey stick."""
    top = points[-1].concurrency
    return claims.at_least(
        "ch1.sweep_reaches_4x_cores", "The load sweep reaches 4 × the usable cores in concurrency.", top, 4 * cores,
        unit="", digits=0, fail=f"the sweep should reach 4 × the {cores} usable cores, its last point is at {top}")


def claim_p99_grows_under_load(points: Sequence[load.ClosedLoopPoint], cores: int, factor: float = 1.5) -> claims.Claim:
    """p99 at the top concurrency is at least ``factor`` × p99 at the first: queued requests wait."""
    first, top = points[0], points[-1]
    growth = top.p99_s / first.p99_s
    return claims.at_least(
        "ch1.p99_grows_under_load",
        f"p99 at concurrency {top.concurrency} is at least {factor:g}× p99 at concurrency {first.concurrency}: "
        "requests queue behind each other.", growth, factor,
        fail=f"p99 at concurrency {top.concurrency} is only {growth:.2f}× p99 at concurrency {first.concurrency}; "
             f"with {top.concurrency // cores} requests queued per worker it should be far above {factor:g}×"
             + _load_note(max(p.outside_cores for p in points)))


def claim_page_median_grows(runs: Mapping[int, PageRun], ks: Sequence[int], factor: float = 1.1) -> claims.Claim:
    """Each step up in k makes the median page at least ``factor`` times slower."""
    medians = [runs[k].page_percentile(50) for k in ks]
    steps = [(k0, m0, k1, m1) for (k0, m0), (k1, m1) in zip(zip(ks, medians), zip(ks[1:], medians[1:]))]
    worst = min(m1 / m0 for _, m0, _, m1 in steps)
    k0, m0, k1, m1 = min(steps, key=lambda s: s[3] / s[1])
    return claims.at_least(
        "ch1.page_p50_grows_with_k", f"The median page gets slower with every step of k ({', '.join(map(str, ks))}).",
        worst, factor,
        fail=f"the median page took {1e3 * m1:.2f} ms at k = {k1} and {1e3 * m0:.2f} ms at k = {k0}; waiting for "
             f"more calls should make pages slower" + _load_note(max(r.outside_cores for r in runs.values())))


def claim_page_mean_grows(runs: Mapping[int, PageRun], ks: Sequence[int], factor: float = 2.0) -> claims.Claim:
    """The mean page at the largest k takes at least ``factor`` × the mean at the smallest."""
    first, last = float(runs[ks[0]].page_latencies.mean()), float(runs[ks[-1]].page_latencies.mean())
    return claims.at_least(
        "ch1.page_mean_grows",
        f"The mean page at k = {ks[-1]} takes at least {factor:g}× the mean at k = {ks[0]}.", last / first, factor,
        fail=f"the mean page took {1e3 * last:.2f} ms at k = {ks[-1]}, only {last / first:.2f}× k = {ks[0]}; the "
             f"slowest of {ks[-1]} calls should take far longer than one call"
             + _load_note(max(r.outside_cores for r in runs.values())))


def claim_fanout_multiplies_slow_pages(slow_page_share: float, lone_slow_share: float, k: int = 8,
                                       factor: float = 2.5) -> claims.Claim:
    """Pages of ``k`` calls are slow at least ``factor`` times as often as lone calls."""
    ratio = slow_page_share / lone_slow_share if lone_slow_share else float("inf")
    return claims.condition(
        "ch1.fanout_multiplies_slow_pages",
        f"Pages of {k} calls are slow at least {factor:g}× as often as lone calls.",
        slow_page_share >= factor * lone_slow_share,
        measured=f"{100 * slow_page_share:.1f}% vs {100 * lone_slow_share:.1f}% ({claims.fmt(ratio)})",
        bound=f"≥ {claims.fmt(factor)}",
        fail=f"{100 * slow_page_share:.1f}% of {k}-call pages were slow against {100 * lone_slow_share:.1f}% of "
             "lone calls; fan-out should multiply the share of slow pages (the formula says about 7×)")


def claim_fanout_formula(ratios: Mapping[int, Mapping[float, float]], *, contended: bool, outside_cores: float,
                         band: float = 0.40, contended_band: float = 0.55) -> claims.Claim:
    """Every measured page percentile is within ``band`` of the max-of-k formula (measured ÷ predicted).

    Other programs slowing every call of a page at once make the calls correlated, and the max of
    correlated calls is below the independent prediction: a contended run gets ``contended_band``.
    """
    width = contended_band if contended else band
    worst_k, worst_q, worst = max(((k, q, r) for k, qs in ratios.items() for q, r in qs.items()),
                                  key=lambda t: abs(t[2] - 1))
    return claims.condition(
        "ch1.fanout_formula", "A page's p50 and p99 match the slowest of k independent calls, at every k.",
        abs(worst - 1) <= width, measured=f"worst {worst:.2f}× (k = {worst_k}, p{worst_q:g})",
        bound=f"within ±{width:.0%}" + (f" (contended: {outside_cores:.2f} cores)" if contended else ""),
        fail=f"at k = {worst_k} the measured page p{worst_q:g} is {worst:.2f}× the formula's prediction from the "
             f"same calls; the page should be the slowest of k independent calls (within ±{width:.0%})"
             + _load_note(outside_cores))


def claim_hedging_cuts_p99(hedging: HedgeComparison, factor: float = 0.6) -> claims.Claim:
    """Hedged calls' p99 is at most ``factor`` × the plain calls' p99."""
    plain, hedged = stats.percentile(hedging.plain, 99), stats.percentile(hedging.hedged, 99)
    return claims.at_most(
        "ch1.hedging_cuts_p99", f"Hedging after the p95 cuts p99 to at most {factor:g}× the plain calls' p99.",
        hedged / plain, factor,
        fail=f"hedging left p99 at {1e3 * hedged:.1f} ms against {1e3 * plain:.1f} ms plain; a second copy after "
             "the p95 should cut the stall-dominated tail" + _load_note(hedging.outside_cores))


def claim_hedging_extra_load(hedging: HedgeComparison, bound: float = 0.15) -> claims.Claim:
    """Hedging after the p95 sends at most ``bound`` extra requests (about 5% expected)."""
    return claims.condition(
        "ch1.hedging_extra_load", f"Hedging after the p95 sends at most {bound:.0%} extra requests.",
        hedging.extra_load <= bound, measured=f"{100 * hedging.extra_load:.1f}%", bound=f"≤ {100 * bound:.1f}%",
        fail=f"hedging sent {100 * hedging.extra_load:.1f}% extra requests; after the p95 it should be about 5%")
