"""What a request's payload costs the server, and where a batching server's time goes.

The same input row can travel as 83 KB of JSON numbers or as 16 KB of raw
float32 bytes (the Open Inference Protocol's binary tensor extension,
:mod:`servelab.apps.oip`). The server pays for the difference on its event
loop, holding the GIL. :func:`measure_cpu_per_request` sends one payload at
one open-loop rate to the batching server and splits the server's CPU per
answered request into forward passes, forming batches, parsing, and the rest
of the event loop (HTTP), from the process tree's CPU time and the batcher's
per-thread clocks (``/stats``). CPU time, unlike latency, is not inflated by
other programs' load.
Taught in: chapters/04b_payloads_overload.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from servelab import claims, plots, rate_sweep
from servelab.apps import batched, oip
from servelab.servers import Server

PAYLOADS = ("JSON", "binary")


def request_bodies(width: int = 4096, seed: int = 0) -> dict[str, tuple[bytes, dict[str, str]]]:
    """The same random row as an inference request in JSON and in binary: ``{payload: (body, headers)}``."""
    row = np.random.default_rng(seed).standard_normal((1, width)).astype(np.float32)
    return {"JSON": oip.json_request(row), "binary": oip.binary_request(row)}


@dataclass(frozen=True)
class CpuPerRequest:
    """Server CPU per answered request at one payload and rate, in milliseconds, split by where it went."""

    payload: str
    rate: float
    answered: int
    mean_batch: float
    server_ms: float  # the whole process tree
    forward_ms: float  # the forward calls, on the batching thread
    batching_ms: float  # the rest of the batching thread: forming batches, handing out results
    parse_ms: float  # the event loop parsing and validating bodies
    p99_s: float
    outside_cores: float
    contended: bool

    @property
    def event_loop_ms(self) -> float:
        """What is left on the event loop: HTTP, routing, writing answers (never below 0)."""
        return max(0.0, self.server_ms - self.forward_ms - self.batching_ms - self.parse_ms)

    @property
    def off_forward_ms(self) -> float:
        """Everything but the forward pass: what the payload and the server's machinery cost."""
        return self.server_ms - self.forward_ms

    def parts_ms(self) -> dict[str, float]:
        """The four parts, in the order the figure stacks them."""
        return {"forward pass": self.forward_ms, "forming batches": self.batching_ms,
                "parsing the body": self.parse_ms, "HTTP and event loop": self.event_loop_ms}  # fmt: skip


def cpu_split(payload: str, point: rate_sweep.RatePoint) -> CpuPerRequest:
    """A :class:`CpuPerRequest` from a rate point whose ``batch_stats`` hold the batcher's ``/stats``
    and the tree's ``server_cpu_s`` over the same window."""
    s = point.batch_stats
    n = max(1, int(s["answered"]))
    per = lambda seconds: seconds / n * 1e3  # noqa: E731
    return CpuPerRequest(payload, point.rate, int(s["answered"]), float(s["mean_batch_size"]),
                         per(s["server_cpu_s"]), per(s["forward_cpu_s"]),
                         per(max(0.0, s["batcher_cpu_s"] - s["forward_cpu_s"])), per(s["parse_cpu_s"]),
                         point.p99_s, point.outside_cores, point.contended)  # fmt: skip


def cpu_accounting(server: Server) -> dict[str, Any]:
    """``before``/``after`` hooks for :func:`servelab.rate_sweep.measure_rate` that keep the batcher's
    statistics and the process tree's CPU seconds of each point (``server_cpu_s``)."""
    start: dict[str, float] = {}

    def before() -> None:
        batched.get_stats(server.url, reset=True)
        start["cpu"] = server.cpu_seconds()

    def after() -> dict[str, Any]:
        return {**batched.get_stats(server.url), "server_cpu_s": server.cpu_seconds() - start["cpu"]}

    return {"before": before, "after": after}


def measure_cpu_per_request(server: Server, payload: str, rate: float, *,
                            bodies: Mapping[str, tuple[bytes, dict[str, str]]],
                            duration_s: float = 1.5) -> CpuPerRequest:  # fmt: skip
    """Open-loop ``payload`` requests at ``rate``/s to a batching server; its CPU per answered request."""
    body, headers = bodies[payload]
    point = rate_sweep.measure_rate(server, rate, path=oip.infer_path(), body=body, headers=headers,
                                    duration_s=duration_s, warmup_s=0.2, **cpu_accounting(server))  # fmt: skip
    return cpu_split(payload, point)


# --------------------------------------------------------------------------- where the batching server's time goes


@dataclass(frozen=True)
class CeilingGap:
    """The batching server's best rate within the SLO against the in-process ceiling, in requests/s,
    and where each request's time went at the best rate that met the objective.

    The batching thread is the bottleneck: at ``thread_ms`` of its CPU per request (forward plus
    forming batches) it could answer ``thread_limit`` requests/s if it never idled; the in-process
    ceiling assumes every batch full, at ``ceiling_ms`` per input and nothing else. The event loop
    (parsing, HTTP) runs beside it on the other core, which it shares with the load generator
    (``client_ms`` of CPU per request).
    """

    ceiling: float
    achieved: float
    at_best: CpuPerRequest
    client_ms: float = 0.0
    served_rate: float = 0.0  # answers per second at the best point (0: take its offered rate)

    @property
    def ceiling_ms(self) -> float:
        return 1e3 / self.ceiling

    @property
    def thread_ms(self) -> float:
        return self.at_best.forward_ms + self.at_best.batching_ms

    @property
    def thread_limit(self) -> float:
        return 1e3 / self.thread_ms if self.thread_ms > 0 else math.inf

    @property
    def fraction(self) -> float:
        """The achieved share of the ceiling."""
        return self.achieved / self.ceiling

    @property
    def window_ms(self) -> float:
        """Wall-clock milliseconds between two answers at the best rate that met the objective."""
        return 1e3 / (self.served_rate or self.at_best.rate)

    def thread_parts_ms(self) -> dict[str, float]:
        """The batching thread's wall time per request at the best rate, by part (sums to ``window_ms``
        unless the thread was busier than that)."""
        b = self.at_best
        return {"forward pass, as full batches in process": min(b.forward_ms, self.ceiling_ms),
                "forward pass beyond full batches": max(0.0, b.forward_ms - self.ceiling_ms),
                "forming batches": b.batching_ms,
                "idle (headroom for the objective)": max(0.0, self.window_ms - self.thread_ms)}  # fmt: skip

    def loop_parts_ms(self) -> dict[str, float]:
        """The event loop's wall time per request at the best rate, by part."""
        b = self.at_best
        return {"parsing the body": b.parse_ms, "HTTP and event loop": b.event_loop_ms,
                "idle": max(0.0, self.window_ms - b.parse_ms - b.event_loop_ms)}  # fmt: skip


def ceiling_gap(ceiling: float, achieved: float, best: rate_sweep.RatePoint, payload: str = "binary") -> CeilingGap:
    """The gap between ``ceiling`` and ``achieved`` (requests/s), from the CPU split at ``best``, the
    highest rate that met the objective (its ``batch_stats`` from :func:`cpu_accounting`)."""
    client_ms = best.client_cpu_cores * 1e3 / best.rate if best.rate > 0 else 0.0
    return CeilingGap(ceiling, achieved, cpu_split(payload, best), client_ms, best.achieved_rate)


# --------------------------------------------------------------------------- claims (the chapter's check cell)


def claim_json_parse_costs_more(json_point: CpuPerRequest, binary_point: CpuPerRequest, *,
                                bound: float = 3.0) -> claims.Claim:  # fmt: skip
    """Parsing a JSON request costs the event loop ≥ ``bound`` × the CPU of parsing the same row in binary.

    Both are timed on the event loop's own CPU clock, so other programs' load barely moves them, and both
    scale with the CPU's speed: the ratio holds on any machine (in process it is about 25×: 4096 numbers
    to read and convert, against 16 KB of bytes taken as they are).
    """
    ratio = json_point.parse_ms / binary_point.parse_ms if binary_point.parse_ms > 0 else float("inf")
    return claims.at_least(
        "ch4b.json_parse_costs_more", f"Parsing a JSON request costs the server ≥ {bound:g}× the CPU of parsing "
        "the same row sent as binary tensor data.", ratio, bound,
        fail=f"the event loop spent {json_point.parse_ms:.3f} ms parsing a JSON request and {binary_point.parse_ms:.3f} ms "
             f"a binary one ({ratio:.1f}×) at {json_point.rate:.0f} requests/s; reading 4096 numbers should cost "
             "far more than taking 16 KB of bytes as they are")  # fmt: skip


def claim_batched_beats_gthread(batched_rate: float, gthread_rate: float,
                                batched_points: Sequence[rate_sweep.RatePoint],
                                gthread_points: Sequence[rate_sweep.RatePoint], *, slo_ms: float,
                                bound: float = 1.5) -> claims.Claim:  # fmt: skip
    """With binary payloads the batching server sustains ≥ ``bound`` × the gthread server's rate within the SLO.

    Other programs' load on the batching server's points can only lower the ratio, so a failure there is a
    skip and a pass stands; on gthread's points it could raise it, so then the claim is skipped either way.
    """
    claim_id = "ch4b.batched_vs_gthread_binary"
    sentence = (f"With binary payloads, the batching server sustains ≥ {bound:g}× the gthread server's rate within "
                f"p99 ≤ {slo_ms:g} ms.")
    ratio = batched_rate / gthread_rate if gthread_rate > 0 else float("inf")
    claim = claims.at_least(claim_id, sentence, ratio, bound,
                            fail=f"the batching server sustained {batched_rate:.0f}/s and gthread {gthread_rate:.0f}/s "
                                 f"({ratio:.2f}×) within p99 ≤ {slo_ms:g} ms with binary payloads; batches of 16 or "
                                 "more should cost several times less per input than gthread's batches of one")  # fmt: skip
    claim = _skip_if(claim, [p.outside_cores for p in gthread_points if p.contended], len(gthread_points))
    return claims.unless_contended(claim, _most([p.outside_cores for p in batched_points if p.contended]))


def claim_near_ceiling(gap: CeilingGap, points: Sequence[rate_sweep.RatePoint], ceiling_outside_cores: float | None,
                       *, cores: int = 2, bound: float = 0.6) -> claims.Claim:  # fmt: skip
    """With binary payloads the batching server reaches ≥ ``bound`` of the in-process batched ceiling.

    The server's batching thread has a core to itself only where there are two: on one core the event
    loop and the load generator take turns with the forward pass, which the in-process ceiling never
    shared (under ``taskset -c 0`` on a 2-core AMD EPYC: 60%, on the bound). There a failure is a skip
    that names those costs; a pass stands.

    ``ceiling_outside_cores``: other programs' load while the in-process ceiling was timed, if it was
    contended (None if quiet); a slowed ceiling makes the share look larger, so then the claim is skipped
    either way. Load during the sweep can only lower the share: a failure then is a skip, a pass stands.
    """
    claim = claims.at_least(
        "ch4b.binary_near_ceiling", f"With binary payloads the batching server reaches ≥ {bound:.0%} of the in-process "
        "batched ceiling within the objective.", gap.fraction, bound, unit="", digits=2,
        fail=f"it sustained {gap.achieved:.0f}/s within the objective against an in-process ceiling of "
             f"{gap.ceiling:.0f}/s ({gap.fraction:.0%}); its batching thread spent {gap.thread_ms:.2f} ms per request "
             f"against {gap.ceiling_ms:.2f} ms in process")  # fmt: skip
    if ceiling_outside_cores is not None:
        claim = _skip_if(claim, [ceiling_outside_cores], 1)
    if cores < 2 and claim.outcome == claims.FAILED:
        shared_ms = gap.client_ms + gap.at_best.parse_ms + gap.at_best.event_loop_ms
        return claims.skipped(claim.id, claim.sentence, kind="one core", measured=claim.measured, bound=claim.bound,
                              reason=f"one usable core: the load generator and the event loop took {shared_ms:.2f} ms "
                                     f"of it per request beside the forward pass ({claim.message})")  # fmt: skip
    return claims.unless_contended(claim, _most([p.outside_cores for p in points if p.contended]))


def _most(busy: Sequence[float]) -> float | None:
    return max(busy) if busy else None


def _skip_if(claim: claims.Claim, busy: Sequence[float], total: int) -> claims.Claim:
    """Skip a ratio when a measurement on the side that could fake it stayed contended."""
    if not busy:
        return claim
    return claims.skipped(claim.id, claim.sentence, kind="contended", measured=claim.measured, bound=claim.bound,
                          reason=f"other programs took up to {max(busy):.2f} cores during {len(busy)} of {total} "
                                 "measurements, after retries")  # fmt: skip


# --------------------------------------------------------------------------- figures


def plot_cpu_per_request(points: Sequence[CpuPerRequest]) -> "plots.Figure":
    """Stacked bars: server CPU per request by part, for each payload at each rate."""
    fig, ax = plots.figure()
    labels = [f"{p.payload}\n{p.rate:.0f} req/s\n(mean batch {p.mean_batch:.1f})" for p in points]
    colors = [plots.COLORS["batched"], plots.COLORS["adaptive"], plots.COLORS["p99"], plots.COLORS["unbatched"]]
    bottom = np.zeros(len(points))
    for (part, color) in zip(points[0].parts_ms(), colors):
        values = np.array([p.parts_ms()[part] for p in points])
        ax.bar(labels, values, bottom=bottom, color=color, label=part)
        bottom += values
    for x, (total, p) in enumerate(zip(bottom, points)):
        ax.annotate(f"{p.server_ms:.2f} ms" + (" (contended)" if p.contended else ""), (x, total),
                    ha="center", va="bottom", fontsize=8)
    ax.legend(fontsize=8)
    plots.label(ax, "", "server CPU per answered request (ms)", "What a request costs the server")
    plots.caption(fig, "Batching server (aiohttp + one batching thread, torch at 1 thread), Open Inference Protocol "
                  "requests of one 4096-float row. CPU from the process tree; forward and batching from the "
                  "batching thread's clock, parsing from the event loop's.")
    return fig


def plot_binary_sweeps(sweeps: Mapping[str, tuple[Sequence[rate_sweep.RatePoint], float, str]], gap: CeilingGap,
                       slo_ms: float, point_s: float) -> "plots.Figure":  # fmt: skip
    """p99 against offered rate per server with the ceiling (left); where each request's time went at the
    batching server's best rate within the objective, per thread, against the in-process ceiling (right)."""
    fig, (ax1, ax2) = plots.figure(ncols=2)
    top_ms = 5 * slo_ms
    for name, (points, best, color) in sweeps.items():
        pts = sorted(points, key=lambda p: p.rate)
        plots.line_with_contended(ax1, [p.rate for p in pts], [min(p.p99_s * 1e3, top_ms) for p in pts],
                                  [p.contended for p in pts], color=color, label=name)
        ax1.axvline(best, color=color, ls=":", lw=1.2)
    ax1.axvline(gap.ceiling, color=plots.COLORS["predicted"], ls="--", lw=1, label="in-process ceiling")
    ax1.axhline(slo_ms, color=plots.COLORS["p99"], lw=1, label=f"objective: p99 ≤ {slo_ms:g} ms")
    ax1.set_yscale("log")
    plots.plain_log_axis(ax1.yaxis)
    ax1.set_ylim(top=top_ms * 1.15)
    ax1.legend(fontsize=8)
    plots.label(ax1, "offered rate (requests/s, Poisson)", "p99 latency (ms, open loop)", "Binary payloads")
    idle = "#dddddd"
    bars = {"batching thread": (gap.thread_parts_ms(), [plots.COLORS["batched"], plots.COLORS["rnn_fused"],
                                                        plots.COLORS["adaptive"], idle]),
            "event loop": (gap.loop_parts_ms(), [plots.COLORS["p99"], plots.COLORS["threads"], idle])}  # fmt: skip
    for name, (parts, colors) in bars.items():
        bottom = 0.0
        for (part, value), color in zip(parts.items(), colors):
            label = f"{part}: {value:.2f} ms" if not part.startswith("idle") or name == "batching thread" else None
            ax2.bar([name], [value], bottom=bottom, color=color, label=label)
            bottom += value
    ax2.axhline(gap.ceiling_ms, color=plots.COLORS["predicted"], ls="--", lw=1,
                label=f"in-process full batch: {gap.ceiling_ms:.2f} ms per input")
    ax2.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    plots.label(ax2, "", f"wall-clock ms per request ({1e3 / gap.window_ms:.0f} answers/s)",
                f"Where a request's time goes (mean batch {gap.at_best.mean_batch:.1f})")
    every = [p for points, _, _ in sweeps.values() for p in points]
    plots.caption(fig, f"Dotted: highest rate within the objective. {point_s:g} s of traffic per point; points on the "
                  "top edge had a larger p99. Ceiling: max_batch ÷ in-process pass time at max_batch, same kernel. "
                  "Right: per-thread CPU clocks (/stats) and the process tree, per answered request; grey is idle. "
                  + plots.contended_note(every))
    return fig


# --------------------------------------------------------------------------- sentences built from the numbers


def describe_payload_cost(json_low: CpuPerRequest, binary_low: CpuPerRequest, json_load: CpuPerRequest,
                          binary_load: CpuPerRequest) -> str:  # fmt: skip
    """What JSON cost against binary at low load and under load, in words that follow the numbers."""
    def share(j: CpuPerRequest, b: CpuPerRequest) -> str:
        extra = j.server_ms - b.server_ms
        if extra <= 0:
            return (f"JSON cost {j.server_ms:.2f} ms of server CPU per request and binary {b.server_ms:.2f} ms: "
                    "no more, within this run's noise")
        return (f"JSON cost {j.server_ms:.2f} ms of server CPU per request against {b.server_ms:.2f} ms for binary, "
                f"{extra:.2f} ms more ({100 * extra / j.server_ms:.0f}% of the JSON request's CPU)")

    return (f"Nearly idle, at {json_low.rate:.0f} requests/s, {share(json_low, binary_low)}; the batch-1 forward pass "
            f"dominates both. Under load, at {json_load.rate:.0f} requests/s with batches of "
            f"{json_load.mean_batch:.1f} (JSON) and {binary_load.mean_batch:.1f} (binary) on average, "
            f"{share(json_load, binary_load)}. Outside the forward pass, a JSON request cost "
            f"{json_load.off_forward_ms:.2f} ms and a binary one {binary_load.off_forward_ms:.2f} ms.")


def describe_gap(gap: CeilingGap) -> str:
    """Where the rate between the ceiling and what was reached went, in words that follow the numbers."""
    b = gap.at_best
    extra = b.forward_ms - gap.ceiling_ms
    text = (f"At that cost per request the batching thread could answer at most {gap.thread_limit:.0f} requests/s "
            f"if it never idled. ")
    if extra > 0:
        text += (f"Its forward passes cost {b.forward_ms:.2f} ms per request, {extra:.2f} ms more than full batches "
                 f"in process: batches of {b.mean_batch:.1f} on average, smaller than the full ones the ceiling "
                 "assumes, computed beside an event loop and a load generator. ")
    else:
        text += "Its batches cost no more per request than full ones in process. "
    idle = gap.thread_parts_ms()["idle (headroom for the objective)"]
    text += (f"The other {idle:.2f} ms of the {gap.window_ms:.2f} ms between requests it idled: the headroom that "
             "keeps p99 within the objective when Poisson bursts arrive.")
    return text


def describe_kernels(costs: Mapping[str, Mapping[int, Any]], max_batch: int, slo_ms: float) -> str:
    """What each kernel's pass costs between batch 1 and ``max_batch``, and which batches fit half the objective.

    ``costs``: ``{kernel: {batch: ForwardCost}}`` (:func:`servelab.roofline.measure_forward_costs`).
    """
    sentences = []
    for kernel, by_batch in costs.items():
        one, full = by_batch[1], by_batch[max_batch]
        middle = [b for b in sorted(by_batch) if 1 < b < max_batch]
        per_input = ", ".join(f"{by_batch[b].per_sample_s * 1e3:.2f} ms at {b}" for b in middle)
        fits = [b for b in sorted(by_batch) if by_batch[b].seconds * 2e3 <= slo_ms]
        sentences.append(
            f"With the {kernel} kernel a pass took {one.seconds * 1e3:.1f} ms at batch 1 and {full.seconds * 1e3:.1f} ms "
            f"at {max_batch} ({full.per_sample_s * 1e3:.2f} ms per input); per input, {per_input}. Two passes fit "
            f"within {slo_ms:g} ms up to a batch of {max(fits) if fits else 0} of those measured"
            + (" (contended)" if any(c.contended for c in by_batch.values()) else "") + ".")
    return " ".join(sentences)


def describe_ratios(gap: CeilingGap, gthread_rate: float, slo_ms: float) -> str:
    """The section's two ratios against what the issue asked (2.5× gthread, 70% of the ceiling), for the log."""
    ratio = gap.achieved / gthread_rate if gthread_rate > 0 else float("inf")
    return (f"binary payloads: batching {gap.achieved:.0f}/s, gthread {gthread_rate:.0f}/s within p99 ≤ {slo_ms:g} ms "
            f"({ratio:.2f}×; the issue asks 2.5×), {gap.fraction:.0%} of the in-process ceiling {gap.ceiling:.0f}/s "
            f"(the issue asks 70%); batching thread {gap.thread_ms:.2f} ms per request against {gap.ceiling_ms:.2f} ms "
            f"in process, mean batch {gap.at_best.mean_batch:.1f} at {gap.at_best.rate:.0f}/s")
