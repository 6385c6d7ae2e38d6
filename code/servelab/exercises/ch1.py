"""Auto-checks for chapter 1's exercises (latency, tails, fan-out, conversions).

Each check prints "✓ ..." for a right answer, or a hint that names the
likely mistake (the mean instead of p99, ``q**k`` instead of ``q**(1/k)``,
milliseconds instead of seconds, ...), and returns whether it was right.
Taught in: chapters/01_latency.ipynb.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from servelab import conversion, stats, tail
from servelab.exercises import check


def _near(a: float, b: float, rel: float = 0.01) -> bool:
    return math.isclose(a, b, rel_tol=rel)


def _first_hint(answer: float, wrong: dict[str, float], rel: float = 0.01) -> str:
    """The hint of the first known wrong answer the learner's answer matches."""
    for hint, value in wrong.items():
        if math.isfinite(value) and _near(answer, value, rel):
            return hint
    return ""


def _is_number(answer: object) -> bool:
    return isinstance(answer, (int, float, np.integer, np.floating)) and not isinstance(answer, bool)


#: The percentile definitions a learner may have been taught, as numpy names them.
USUAL_PERCENTILES = {
    "linear": "linear interpolation, numpy's default",
    "inverted_cdf": "the nearest-rank definition",
    "weibull": "Excel's PERCENTILE.EXC",
}


def check_p99(answer: object, latencies: Sequence[float], *, rel_tol: float = 0.02) -> bool:
    """Exercise 1: the 99th percentile of ``latencies`` (seconds).

    Any usual percentile definition (:data:`USUAL_PERCENTILES`) is accepted within
    ``rel_tol``, and the message echoes the learner's answer and names the definition it matches.
    Taught in: chapters/01_latency.ipynb.
    """
    values = np.sort(np.asarray(latencies, dtype=float))
    expected = stats.percentile(values, 99)
    if not _is_number(answer):
        return check(answer, expected, name="p99")
    n = values.size
    for method, described in USUAL_PERCENTILES.items():
        value = float(np.percentile(values, 99, method=method))
        if math.isclose(float(answer), value, rel_tol=rel_tol):
            print(f"✓ p99: {answer!r} is right ({described} gives {value:.4g}).")
            return True
    unsorted = np.asarray(latencies, dtype=float)
    hint = _first_hint(float(answer), {
        "That is the mean: the tail is what a percentile looks at, not the average.": float(values.mean()),
        "That is the median (p50). p99 is the latency 99% of requests beat.": float(np.median(values)),
        "That is p95; p99 is further out in the tail.": stats.percentile(values, 95),
        "That is the maximum, one single request; p99 leaves out the slowest 1%.": float(values[-1]),
        "Sort the latencies first: you took the value at the 99% position of the unsorted list.":
            float(unsorted[int(0.99 * (n - 1))]),
        "Units: the latencies are in seconds, and you answered in milliseconds.": 1e3 * expected,
    })  # fmt: skip
    return check(answer, expected, name="p99", hint=hint or "Sort the latencies and take the value 99% of the way up.")


def check_page_p99(answer: object, call_latencies: Sequence[float], k: int) -> bool:
    """Exercise 2: predicted p99 of a page of ``k`` parallel calls, from single-call latencies (seconds).

    Expected: the single call's ``0.99 ** (1/k)`` quantile
    (:func:`servelab.tail.predicted_page_quantile`).
    Taught in: chapters/01_latency.ipynb.
    """
    expected = tail.predicted_page_quantile(call_latencies, k, 0.99)
    calls = np.asarray(call_latencies, dtype=float)
    hint = ""
    if _is_number(answer) and not _near(float(answer), expected, 0.03):
        p99 = stats.percentile(calls, 99)
        hint = _first_hint(float(answer), {
            f"You used 0.99**{k}: the page is fast only if all {k} calls are, so P(call <= t) must be "
            f"0.99**(1/{k}), a *higher* single-call quantile.": stats.percentile(calls, 100 * 0.99**k),
            "That is one call's p99; a page waits for the slowest of k calls.": p99,
            "Adding k calls' p99s assumes the calls run one after another; they run in parallel.": k * p99,
            "Units: the latencies are in seconds, and you answered in milliseconds.": 1e3 * expected,
        }, rel=0.03)  # fmt: skip
    hint = hint or f"Solve P(call <= t)**{k} = 0.99 for t: take the single-call quantile at 0.99**(1/{k})."
    return check(answer, expected, rel_tol=0.03, name=f"page p99 at k = {k}", hint=hint)


def check_slo_concurrency(answer: object, concurrency: int, p99_s: float, slo_s: float = 0.1) -> bool:
    """Exercise 3: concurrency at which p99 reaches ``slo_s``, extrapolated from the last (saturated) sweep point.

    Past saturation a closed loop's latency grows in proportion to the
    concurrency (Little's law: latency = concurrency / throughput, and the
    throughput no longer grows), so ``c* = c_last * slo / p99_last``.
    Taught in: chapters/01_latency.ipynb.
    """
    expected = concurrency * slo_s / p99_s
    hint = ""
    if _is_number(answer):
        hint = _first_hint(float(answer), {
            "Upside down: the concurrency grows with the SLO, c* = c_last * SLO / p99_last.": concurrency * p99_s / slo_s,
            "Units: the SLO and p99 must be in the same unit.": concurrency * slo_s / (1e3 * p99_s),
        }, rel=0.1)  # fmt: skip
    hint = hint or "Scale the last concurrency by SLO / p99 at that concurrency (latency grows in proportion)."
    return check(answer, expected, rel_tol=0.1, abs_tol=1.0, name="concurrency at the SLO", hint=hint)


def check_smartphone_loss(answer: object, added_ms: float = 500.0) -> bool:
    """Exercise 4: fraction of smartphone conversions lost to ``added_ms`` in the Akamai-fitted model.

    Taught in: chapters/01_latency.ipynb.
    """
    expected = -conversion.AKAMAI.conversion_change("smartphone", added_ms)
    steps = added_ms / 100
    hint = ""
    if _is_number(answer):
        hint = _first_hint(float(answer), {
            f"You added 7.1% {steps:g} times; the model multiplies: 1 - 0.929**{steps:g}.": 0.071 * steps,
            "That is the loss for 100 ms.": 0.071,
            "Give a fraction (0.25), not a percentage (25).": 100 * expected,
            "That is the conversions *kept*; the question asks for those lost.": 1 - expected,
        })  # fmt: skip
    hint = hint or f"Each 100 ms multiplies conversions by 0.929; {steps:g} steps of 100 ms."
    return check(answer, expected, rel_tol=0.005, name="smartphone conversions lost", hint=hint)
