"""Open-loop rate sweeps: p99 latency against offered rate, and the highest rate under an SLO.

Each point sends Poisson traffic at one rate with :func:`servelab.load.open_loop`
(latency measured from the scheduled send, unfinished requests counted as
infinite), records the CPU other programs took meanwhile, and measures the
point again if they took too much. A sweep goes up a list of rates and stops
once p99 is far past the SLO: past saturation every point only adds a longer
queue, and seconds of waiting.
Taught in: chapters/04_batching.ipynb.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from servelab import claims, contention, load, plots
from servelab.load import JSON_HEADERS, PREDICT_BODY, ClosedLoopPoint
from servelab.progress import progress
from servelab.servers import Server


@dataclass(frozen=True)
class RatePoint:
    """One open-loop run at one offered rate. Times in seconds."""

    rate: float
    sent: int
    answered: int
    unfinished: int
    errors: int
    latencies: int  # how many latencies were recorded (one per sent request)
    infinite: int  # how many of them are infinite (unfinished, or no HTTP answer)
    achieved_rate: float
    p50_s: float
    p99_s: float
    send_lag_p99_s: float
    client_cpu_cores: float
    server_cores: float
    outside_cores: float
    contended: bool
    attempts: int
    batch_stats: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def lost(self) -> int:
        """Requests neither answered nor counted as unfinished (must be 0)."""
        return self.sent - self.answered - self.unfinished

    @property
    def accounted(self) -> bool:
        """Every sent request has a latency, and every unfinished one an infinite latency."""
        return self.lost == 0 and self.latencies == self.sent and self.infinite >= self.unfinished

    def meets(self, slo_s: float) -> bool:
        """p99 within the SLO, with every request answered without error."""
        return self.p99_s <= slo_s and self.unfinished == 0 and self.errors == 0


def measure_closed(server: Server, concurrency: int, *, path: str = "/predict", body: bytes = PREDICT_BODY,
                   duration_s: float = 1.5, warmup_s: float = 0.3, retries: int = 1) -> ClosedLoopPoint:
    """Closed-loop load (wrk when installed) at one concurrency, to set beside the open loop.

    :func:`servelab.load.measure_closed` with this module's pace: one retry, short pauses.
    """
    return load.measure_closed(server, concurrency, path=path, body=body, duration_s=duration_s, warmup_s=warmup_s,
                               retries=retries, pause=0.2)  # fmt: skip


def geometric_rates(start: float, stop: float, count: int) -> list[float]:
    """``count`` rates from ``start`` to ``stop``, evenly spaced on a log scale."""
    if count < 2:
        return [float(start)]
    return [float(r) for r in np.geomspace(start, stop, count)]


def measure_rate(
    server: Server,
    rate: float,
    *,
    path: str = "/predict",
    body: bytes = PREDICT_BODY,
    headers: dict[str, str] | None = None,
    duration_s: float = 3.0,
    warmup_s: float = 0.3,
    grace_s: float = 1.0,
    seed: int = 0,
    retries: int = 1,
    before: Callable[[], None] | None = None,
    after: Callable[[], dict[str, Any]] | None = None,
) -> RatePoint:
    """Open-loop load on ``server`` at ``rate``/s, measured again if other programs were busy.

    ``before()`` runs before each attempt (e.g. reset the server's statistics)
    and ``after()`` returns extra statistics to keep with the point. ``headers``
    default to JSON's; a binary body (``servelab.apps.oip.binary_request``) brings its own.
    """

    def attempt() -> tuple[load.OpenLoopResult, float, dict[str, Any]]:
        if before:
            before()
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        result = load.open_loop(server.url + path, rate=rate, duration_s=duration_s, body=body,
                                headers=headers or JSON_HEADERS, grace_s=grace_s, warmup_s=warmup_s, seed=seed)  # fmt: skip
        server_cores = (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        return result, server_cores, (after() if after else {})

    measured = contention.measure_uncontended(attempt, retries=retries, pause=0.2)
    result, server_cores, extra = measured.value
    summary = result.summary()
    lags = result.send_lag[np.isfinite(result.send_lag)]
    return RatePoint(
        rate=float(rate),
        sent=result.sent,
        answered=result.answered,
        unfinished=result.unfinished,
        errors=result.errors,
        latencies=int(result.latencies.size),
        infinite=int(np.isinf(result.latencies).sum()),
        achieved_rate=result.achieved_rate,
        p50_s=summary.p50,
        p99_s=summary.p99,
        send_lag_p99_s=float(np.percentile(lags, 99)) if lags.size else math.inf,
        client_cpu_cores=result.client_cpu_cores,
        server_cores=server_cores,
        outside_cores=measured.outside_cores,
        contended=measured.contended,
        attempts=measured.attempts,
        batch_stats=extra,
    )


def sweep(
    server: Server,
    rates: Sequence[float],
    *,
    slo_s: float,
    stop_factor: float = 3.0,
    report: Callable[[RatePoint], None] | None = None,
    **measure_kwargs: Any,
) -> list[RatePoint]:
    """Measure ``rates`` in increasing order; stop after the first point whose
    p99 exceeds ``stop_factor`` × the SLO, or that left requests unfinished:
    past that, every point only adds a longer queue and seconds of waiting.

    ``report(point)`` is called after each point (e.g. to print it).
    """
    points = []
    for rate in progress(sorted(rates), desc=f"rate sweep on {server.url}", unit="rate"):
        point = measure_rate(server, rate, **measure_kwargs)
        points.append(point)
        if report:
            report(point)
        if point.unfinished or point.p99_s > stop_factor * slo_s:
            break
    return points


_NEVER_S = 1e6  # stands in for an infinite p99 when averaging


def monotone_fit(values: Sequence[float]) -> list[float]:
    """The closest non-decreasing sequence (least squares): pool-adjacent-violators.

    p99 can only grow with the offered rate; a point that came out lower than
    the one before it is noise, and the fit averages the two.
    """
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, n2), (m1, n1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


def best_point(points: Sequence[RatePoint], slo_s: float) -> RatePoint:
    """The highest-rate point that met the objective (the lowest-rate point if none did)."""
    return max((p for p in points if p.meets(slo_s)), key=lambda p: p.rate, default=min(points, key=lambda p: p.rate))


def max_rate_under_slo(points: Sequence[RatePoint], slo_s: float) -> float:
    """The highest offered rate whose p99 meets the SLO, from a sweep's points.

    log p99 is fitted as a non-decreasing function of the rate (so one noisy
    point does not end the curve early), then the rate where the fit crosses
    the SLO is interpolated between the two points around it. A point that
    left requests unfinished or failed counts as infinitely slow. 0.0 if even
    the lowest rate misses; the highest rate measured if none does (a lower
    bound then).
    """
    ordered = sorted(points, key=lambda p: p.rate)
    if not ordered:
        raise ValueError("no points")
    p99s = [p.p99_s if (math.isfinite(p.p99_s) and not p.unfinished and not p.errors) else _NEVER_S for p in ordered]
    fitted = monotone_fit([math.log(max(v, 1e-9)) for v in p99s])
    limit = math.log(slo_s)
    for i, value in enumerate(fitted):
        if value <= limit:
            continue
        if i == 0:
            return 0.0
        if p99s[i] == _NEVER_S:  # the curve ends at the last rate that met the SLO
            return ordered[i - 1].rate
        below, above = fitted[i - 1], value
        fraction = (limit - below) / (above - below)
        return ordered[i - 1].rate + fraction * (ordered[i].rate - ordered[i - 1].rate)
    return ordered[-1].rate


def format_point(point: RatePoint) -> str:
    """One line per point, for the notebook's running log."""
    flags = " (contended)" if point.contended else ""
    batch = point.batch_stats.get("mean_batch_size")
    batch_text = f"  batch {batch:4.1f} in {point.batch_stats['batch_ms']['mean']:3.0f} ms" if batch else ""
    return (f"{point.rate:5.0f}/s offered → {point.achieved_rate:5.1f}/s answered  "
            f"p50 {point.p50_s * 1e3:6.1f} ms  p99 {point.p99_s * 1e3:7.1f} ms  unfinished {point.unfinished:3d}"
            f"{batch_text}  server {point.server_cores:.2f} cores  client {point.client_cpu_cores:.2f} cores, "
            f"send lag p99 {point.send_lag_p99_s * 1e3:.1f} ms  outside load {point.outside_cores:.2f} cores{flags}")  # fmt: skip


# --------------------------------------------------------------------------- claims (chapter 4's check cell)

#: Offered rates for the coordinated-omission comparison, as multiples of the closed loop's best
#: throughput. At exactly the capacity a Poisson queue may or may not build within a short run
#: (a random walk), so a second point 20% over it is measured when the first one shows no queue.
CO_RATE_FACTORS = (1.0, 1.2)


def claim_every_request_accounted(points: Sequence[RatePoint], chapter: str = "ch4") -> claims.Claim:
    """Every request the open-loop client sent was answered or counted as unfinished, without errors.

    ``chapter`` prefixes the claim's id: the ledger's ids are unique across the book.
    """
    lost = [p for p in points if not p.accounted]
    failed = [p for p in points if p.errors]
    sent = sum(p.sent for p in points)
    detail = "; ".join([f"at {p.rate:.0f}/s {p.sent} sent, {p.answered} answered + {p.unfinished} unfinished, "
                        f"{p.latencies} latencies ({p.infinite} infinite)" for p in lost]
                       + [f"at {p.rate:.0f}/s {p.errors} requests failed" for p in failed])
    return claims.condition(
        f"{chapter}.every_request_accounted", "Every request sent was answered or counted, and none failed.",
        not lost and not failed, measured=f"{sent} sent, {sum(p.lost for p in points)} lost, "
        f"{sum(p.errors for p in points)} errors", bound="0 lost, 0 errors",
        fail=f"a request was lost or failed: {detail}")


def claim_batching_gain(max_rate_batched: float, max_rate_single: float, points: Sequence[RatePoint], *,
                        slo_ms: float, bound: float = 1.5) -> claims.Claim:
    """The batching server sustains at least ``bound`` × its own max_batch=1 rate within the SLO."""
    claim_id = "ch4.batching_gain"
    sentence = f"Batching (max_batch 32) sustains ≥ {bound}× the same server's rate without batching within p99 ≤ {slo_ms:g} ms."
    gain = max_rate_batched / max_rate_single if max_rate_single > 0 else math.inf
    busy = [p for p in points if p.contended]
    if busy:
        return claims.skipped(claim_id, sentence, kind="contended", measured=f"{gain:.2f}×", bound=f"≥ {bound}×",
                              reason=f"other programs took up to {max(p.outside_cores for p in busy):.2f} cores "
                                     f"during {len(busy)} of {len(points)} sweep points, after retries")
    return claims.at_least(claim_id, sentence, gain, bound,
                           fail=f"with batching the server sustained {max_rate_batched:.0f}/s within p99 ≤ {slo_ms:g} ms, "
                                f"without it {max_rate_single:.0f}/s ({gain:.2f}×); batching should reach at least {bound}×")


def claim_closed_loop_hides_queue(closed: ClosedLoopPoint, open_points: Sequence[RatePoint], saturation_rate: float, *,
                                  bound: float = 2.0) -> claims.Claim:
    """At (or 20% over) the closed loop's best throughput, the open loop's p99 is ≥ ``bound`` × the closed loop's."""
    claim_id = "ch4.closed_loop_hides_queue"
    sentence = (f"At the closed loop's best throughput (or 20% over it), open-loop p99 is ≥ {bound:g}× the "
                f"closed loop's p99 at c = {closed.concurrency}: the closed loop hides the queue.")
    quiet = [p for p in open_points if not p.contended]
    if closed.contended or not quiet:
        return claims.skipped(claim_id, sentence, kind="contended",
                              reason=f"other programs took {max([closed.outside_cores] + [p.outside_cores for p in open_points]):.2f} "
                                     "cores during the closed- or open-loop runs, after retries")
    ratios = [p.p99_s / closed.p99_s for p in quiet]
    shown = ", ".join(f"{p.rate / saturation_rate:.1f}× rate: {r:.1f}×" for p, r in zip(quiet, ratios))
    return claims.condition(
        claim_id, sentence, max(ratios) >= bound, measured=shown, bound=f"≥ {bound:g}× at ≤ 1.2× the rate",
        fail=f"open-loop p99 was only {shown} the closed loop's {closed.p99_s * 1e3:.0f} ms at c = {closed.concurrency} "
             f"({closed.tool}); Poisson arrivals at the server's capacity should queue far longer than the closed loop shows")


def describe_open_vs_closed(closed: ClosedLoopPoint, open_points: Sequence[RatePoint], saturation_rate: float) -> str:
    """Which open-loop point the figure shows, and why, from the numbers."""
    first = open_points[0]
    if len(open_points) == 1:
        return f"at the same {saturation_rate:.0f} requests/s"
    return (f"at {open_points[-1].rate:.0f} requests/s, 20% over the closed loop's best: at exactly "
            f"{saturation_rate:.0f} requests/s its p99 was only {first.p99_s * 1e3:.0f} ms, because right at "
            "capacity a queue may or may not build up within a short run")


# --------------------------------------------------------------------------- figures (chapter 4)


def plot_closed_vs_open(closed: dict[int, ClosedLoopPoint], shown_open: RatePoint, cores: int,
                        point_s: float) -> "plots.Figure":
    """Closed-loop latency against connections (left); closed against open loop p99 near saturation (right)."""
    fig, (ax1, ax2) = plots.figure(ncols=2)
    conc = sorted(closed)
    ax1.plot(conc, [closed[c].p99_s * 1e3 for c in conc], "o-", color=plots.COLORS["p99"], label="closed loop p99")
    ax1.plot(conc, [closed[c].mean_s * 1e3 for c in conc], "s-", color=plots.COLORS["p50"], label="closed loop mean")
    ax1.plot(conc, [c / closed[c].throughput * 1e3 for c in conc], "--", color=plots.COLORS["predicted"],
             label="Little's law: c ÷ throughput")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    plots.plain_log_axis(ax1.xaxis)
    plots.plain_log_axis(ax1.yaxis)
    ax1.set_xticks(conc)
    ax1.legend(fontsize=8)
    plots.label(ax1, "closed-loop connections c", "latency (ms)", "Closed loop: latency = c ÷ X")
    base, p99 = closed[cores], shown_open.p99_s
    shown = p99 if np.isfinite(p99) else point_s + 1.0  # an infinite p99 is drawn at the run's length
    bars = ax2.bar([f"closed loop, c = {cores}\n{base.throughput:.0f} req/s",
                    f"open loop, Poisson\n{shown_open.rate:.0f} req/s offered"],
                   [base.p99_s * 1e3, shown * 1e3], color=[plots.COLORS["unbatched"], plots.COLORS["p99"]])
    ax2.bar_label(bars, labels=[f"{base.p99_s * 1e3:.0f} ms", f"{p99 * 1e3:.0f} ms" if np.isfinite(p99) else "∞ (unfinished)"])
    plots.label(ax2, "", "p99 latency (ms)", "Same server, near saturation")
    plots.caption(fig, f"Unbatched gunicorn gthread server, 4 × Linear(4096, 4096). Closed loop: {base.tool}; "
                  "open loop: Poisson arrivals, latency from the scheduled send.")
    return fig


def plot_sweeps(sweeps: dict[str, tuple[Sequence[RatePoint], float, str]], slo_ms: float,
                point_s: float) -> "plots.Figure":
    """p99 against offered rate per configuration (left, dotted: max rate within the SLO); mean batch size (right).

    ``sweeps`` maps a label to (points, max rate within the SLO, colour); labels starting
    with "no batching" get no batch-size curve.
    """
    fig, (ax1, ax2) = plots.figure(ncols=2)
    ceiling_ms = 5 * slo_ms  # where infinite (and larger) p99s are drawn
    for name, (points, best, color) in sweeps.items():
        pts = sorted(points, key=lambda p: p.rate)
        plots.line_with_contended(ax1, [p.rate for p in pts], [min(p.p99_s * 1e3, ceiling_ms) for p in pts],
                                  [p.contended for p in pts], color=color, label=name)
        ax1.axvline(best, color=color, ls=":", lw=1.2)
        if not name.startswith("no batching"):
            ax2.plot([p.rate for p in pts], [p.batch_stats.get("mean_batch_size", 0) for p in pts], "o-", color=color,
                     label=name)
    ax1.axhline(slo_ms, color=plots.COLORS["p99"], lw=1, label=f"objective: p99 ≤ {slo_ms:g} ms")
    ax1.set_yscale("log")
    plots.plain_log_axis(ax1.yaxis)
    ax1.set_ylim(top=ceiling_ms * 1.15)
    ax1.legend(fontsize=8)
    plots.label(ax1, "offered rate (requests/s, Poisson)", "p99 latency (ms, open loop)",
                "p99 against load (dotted: highest rate within the objective)")
    ax2.legend(fontsize=8)
    plots.label(ax2, "offered rate (requests/s, Poisson)", "mean batch size (inputs)", "Batches grow with load")
    every = [p for points, _, _ in sweeps.values() for p in points]
    plots.caption(fig, "Points on the top edge had a p99 beyond it, or left requests unanswered (p99 infinite). "
                  f"{point_s:g} s of traffic per point; 4 × Linear(4096, 4096), torch at 1 thread. "
                  + plots.contended_note(every))
    return fig


def plot_low_load(points: dict[str, RatePoint], colors: Sequence[str], rate: float, point_s: float) -> "plots.Figure":
    """p50 latency of each configuration at one low rate, as bars."""
    fig, ax = plots.figure()
    bars = ax.bar(list(points), [p.p50_s * 1e3 for p in points.values()], color=list(colors))
    ax.bar_label(bars, fmt="%.1f ms")
    plots.label(ax, "", "p50 latency (ms, open loop)", f"Low load: {rate:.0f} requests/s")
    plots.caption(fig, f"{point_s:g} s of Poisson traffic per bar; max_wait_ms is how long the oldest "
                  "request may wait for company before its batch leaves.")
    return fig
