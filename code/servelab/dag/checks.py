"""Chapter 3's claims, checked against the numbers a run measured (for its check cell and the claims ledger).

Part of :mod:`servelab.dag`. Taught in: chapters/03_dag.ipynb.
"""

from __future__ import annotations

from typing import Sequence


from servelab import claims
from servelab.dag.depth import DepthPoint, fit_line
from servelab.dag.latency import LatencyPoint, lookup, speedup


# What the depth argument predicts on *any* machine, checked against this machine's numbers. How much
# one LSTMCell step gains from a second core is a fact about the CPU and its BLAS (0.93-0.98x on one
# 2-core Xeon, 1.6-2.2x on another), so no claim depends on it; what depth does predict is that the
# loop's latency is a chain of T equal steps, and that its gain from more cores cannot grow with T.


def claim_loop_depth_linear(points: Sequence[DepthPoint], model: str = "RNN loop (modules)") -> claims.Claim:
    """The unrolled loop's traced depth is exactly a·T + b with a ≥ 1."""
    pts = [p for p in points if p.model == model]
    fit = fit_line([p.T for p in pts], [p.depth for p in pts])
    a, b = round(fit.slope), round(fit.intercept)
    exact = a >= 1 and all(p.depth == a * p.T + b for p in pts)
    return claims.condition(
        "ch3.loop_depth_linear", "The RNN loop's graph depth is exactly linear in T (one step per token).", exact,
        measured=f"{a}·T + {b}", bound="exact, slope ≥ 1",
        fail=f"the unrolled RNN's depth should be exactly linear in T with slope >= 1; got {[(p.T, p.depth) for p in pts]}")


def claim_bert_depth_constant(points: Sequence[DepthPoint], model: str = "BERT-4L") -> claims.Claim:
    """BERT's traced depth is the same at every T."""
    depths = sorted({p.depth for p in points if p.model == model})
    return claims.condition(
        "ch3.bert_depth_constant", "BERT's graph depth is the same at every input length.", len(depths) == 1,
        measured=", ".join(map(str, depths)), bound="one value",
        fail=f"BERT's depth should be the same at every T, got {depths}")


def step_costs(points: Sequence[LatencyPoint], model: str, threads: int) -> list[float]:
    """Seconds each extra token added, between consecutive measured lengths (the slope of each segment)."""
    pts = sorted((p for p in points if p.model == model and p.threads == threads), key=lambda p: p.T)
    return [(b.seconds - a.seconds) / (b.T - a.T) for a, b in zip(pts, pts[1:])]


def _busy(points: Sequence[LatencyPoint]) -> float | None:
    """The most outside load among the contended ``points``, or None if all were quiet."""
    busy = [p.outside_cores for p in points if p.contended]
    return max(busy) if busy else None


def claim_loop_latency_linear(points: Sequence[LatencyPoint], threads: int, *, model: str = "unrolled",
                              spread: float = 2.5) -> claims.Claim:
    """The loop's latency grows linearly in T: every extra token costs about the same, at short and long inputs.

    Judged on the segments between measured lengths, not on one line through all points: a line fitted
    in seconds is dominated by the longest input and misses the shortest in relative terms. The bound
    is 2.5×, not 1.0×: points are measured seconds apart and a VM's speed drifts (quiet runs had
    segments 141, 152 and 90 µs/token on one Xeon, and 218, 104, 204 at 2 threads on an AMD EPYC),
    while anything superlinear, like attention's T², makes each 4× longer segment cost 4× more per
    token. Outside load only makes the segments uneven, so a
    failure while it was high is recorded as a skip.
    """
    claim_id = f"ch3.loop_latency_linear_{threads}t"
    sentence = f"With {threads} thread(s) each extra token costs the LSTMCell loop the same time: a chain of T equal steps."
    steps = step_costs(points, model, threads)
    ratio = max(steps) / min(steps) if min(steps) > 0 else float("inf")
    claim = claims.condition(
        claim_id, sentence, ratio <= spread,
        measured=", ".join(f"{1e6 * s:.0f}" for s in steps) + f" µs/token (spread {ratio:.2f}×)",
        bound=f"spread ≤ {spread:.2f}×",
        fail=f"with {threads} thread(s) each extra token cost the loop "
             + ", ".join(f"{1e6 * s:.1f}" for s in steps) + f" µs between the measured lengths ({ratio:.2f}× apart); "
             "a chain of T equal steps should cost the same per token at every length")
    return claims.unless_contended(claim, _busy([p for p in points if p.model == model and p.threads == threads]))


def _multicore_skip(claim_id: str, sentence: str, pts: Sequence[LatencyPoint], cores: int) -> claims.Claim | None:
    if cores < 2:
        return claims.skipped(claim_id, sentence, kind="one core", reason="only 1 usable core: nothing to compare")
    busy = [p for p in pts if p.contended]
    if busy:
        return claims.skipped(claim_id, sentence, kind="contended",
                              reason=f"other programs took up to {max(p.outside_cores for p in busy):.2f} cores "
                                     f"during {len(busy)} of the {len(pts)} points it needs, after retries")
    return None


def _pts(points: Sequence[LatencyPoint], models: Sequence[str], lengths: Sequence[int], cores: int) -> list[LatencyPoint]:
    return [lookup(points, m, T, n) for m in models for T in lengths for n in sorted({1, cores})]


def claim_bert_gains_from_cores(points: Sequence[LatencyPoint], T: int, cores: int, *,
                                bound: float = 1.25) -> claims.Claim:
    """All cores make BERT at least ``bound`` times faster at length ``T``: its matmuls split over them.

    Outside load takes cores from the many-thread runs, so it can only lower the gain: a pass
    under load stands, a failure under load is a skip.
    """
    claim_id, sentence = "ch3.bert_gains_from_cores", f"At T = {T}, all cores make BERT faster: its matrix multiplies split."
    if cores < 2:
        return claims.skipped(claim_id, sentence, kind="one core", reason="only 1 usable core: nothing to compare")
    gain = speedup(points, "bert", T, cores)
    claim = claims.at_least(claim_id, sentence, gain, bound,
                            fail=f"all {cores} cores made BERT only {gain:.2f}× faster at T={T}; its matrix "
                                 f"multiplies should split over the cores (expected >= {bound}×)")
    return claims.unless_contended(claim, _busy(_pts(points, ["bert"], [T], cores)))


def claim_bert_gain_grows(points: Sequence[LatencyPoint], lengths: Sequence[int], cores: int, *,
                          bound: float = 1.15) -> claims.Claim:
    """BERT's gain from more cores grows with T: a longer input gives every op more rows to share."""
    short, long = lengths[0], lengths[-1]
    claim_id = "ch3.bert_gain_grows"
    sentence = f"BERT's gain from more cores grows with the input (T = {short} → {long}): its width grows with T."
    skip = _multicore_skip(claim_id, sentence, _pts(points, ["bert"], [short, long], cores), cores)
    if skip:
        return skip
    growth = speedup(points, "bert", long, cores) / speedup(points, "bert", short, cores)
    return claims.at_least(claim_id, sentence, growth, bound,
                           fail=f"BERT's speedup from {cores} cores was {speedup(points, 'bert', short, cores):.2f}× "
                                f"at T={short} and {speedup(points, 'bert', long, cores):.2f}× at T={long} "
                                f"({growth:.2f}× growth); more tokens should give its matrix multiplies more to share")


SLOWED_BY_THREADS = 0.9  # a 'gain' below this at the middle length: extra threads cost more than they gave


def claim_loop_gain_flat(points: Sequence[LatencyPoint], lengths: Sequence[int], cores: int, *,
                         bound: float = 1.3) -> claims.Claim:
    """The loop's gain from more cores does not grow with T: each step may split, the chain cannot.

    What depth predicts is one-sided: a longer chain gives more cores nothing more to share, so the
    gain at the longest input is at most ``bound`` × the gain at the second length (at the shortest
    the embedding and the head, not the chain, are a large part of the time). It may shrink. The bound
    leaves room for noise at the middle length: on one AMD EPYC the 2-thread loop was slower than one
    thread at T=64 (0.79×) and 0.96× at T=1024, a growth of 1.21× that is thread wake-ups, not depth.
    """
    middle, long = lengths[1], lengths[-1]
    claim_id = "ch3.loop_gain_flat"
    sentence = (f"The LSTMCell loop's gain from more cores does not grow from T = {middle} to {long}: "
                "extra cores can shorten each step, never the chain of T steps.")
    skip = _multicore_skip(claim_id, sentence, _pts(points, ["unrolled"], [middle, long], cores), cores)
    if skip:
        return skip
    first, last = speedup(points, "unrolled", middle, cores), speedup(points, "unrolled", long, cores)
    growth = last / first
    if first < SLOWED_BY_THREADS and growth > bound:
        # More threads made the short loop slower: a fixed cost per call (waking the thread pool) that a
        # longer input amortises. The growth then measures that cost, not the chain (seen on an AMD EPYC:
        # 0.71× at T=64, 0.95× at T=1024), so it is no verdict on depth either way.
        return claims.skipped(claim_id, sentence, kind="hardware", measured=f"{first:.2f}× → {last:.2f}×",
                              reason=f"{cores} threads made the loop slower at T={middle} ({first:.2f}× of one "
                                     "thread): the gain's growth is a per-call threading cost being amortised")
    return claims.condition(
        claim_id, sentence, growth <= bound, measured=f"{first:.2f}× → {last:.2f}× ({growth:.2f}×)",
        bound=f"growth ≤ {bound:.2f}×",
        fail=f"the loop's speedup from {cores} cores went from {first:.2f}× at T={middle} to {last:.2f}× at "
             f"T={long}; a chain of equal steps cannot gain more from more cores at a longer input")


def claim_fused_beats_bert(points: Sequence[LatencyPoint]) -> claims.Claim:
    """The fused nn.LSTM is faster than BERT-4L at every measured length and thread count.

    A margin of several times at every point: outside load on a single point is noise, so a
    failure on contended points is a skip.
    """
    pairs = [(p, lookup(points, "bert", p.T, p.threads)) for p in points if p.model == "fused"]
    worst = max(f.seconds / b.seconds for f, b in pairs)
    claim = claims.at_most("ch3.fused_beats_bert", "The fused nn.LSTM beats BERT-4L at every length we tried.",
                           worst, 1.0, fail=f"the fused LSTM took up to {worst:.2f}× BERT's time; the text says it always wins")
    return claims.unless_contended(claim, _busy([p for pair in pairs for p in pair]))


def claim_model_explains(points: Sequence[LatencyPoint], ratios: Sequence[float], *, calibration_contended: bool,
                         factor: float = 2.5) -> claims.Claim:
    """The latency model predicts every quiet point within ``factor``.

    2.5×, not 2×: the model is calibrated from a few micro-benchmarks, and on a slow, noisy AMD EPYC its
    worst point (the fused LSTM at T=16, 1 thread, a 1-2 ms call) missed by 2.06×.
    """
    claim_id, sentence = "ch3.model_explains", f"The latency model predicts every point within {factor:g}×."
    if calibration_contended:
        return claims.skipped(claim_id, sentence, kind="contended",
                              reason="other programs took CPU while the model was calibrated")
    quiet = [(p, r) for p, r in zip(points, ratios) if not p.contended]
    if not quiet:
        return claims.skipped(claim_id, sentence, kind="contended", reason="every latency point stayed contended")
    worst = max(max(r, 1 / r) for _, r in quiet)
    bad = [(p.model, p.T, p.threads, round(r, 2)) for p, r in quiet if not 1 / factor <= r <= factor]
    return claims.at_most(claim_id, sentence, worst, factor,
                          fail=f"the latency model missed these points by more than {factor:g}× (measured/predicted): {bad}")
