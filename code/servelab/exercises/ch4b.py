"""Checks for chapter 4b's exercises (payloads, load shedding, retry budgets).

Each check prints a tick or a hint aimed at the usual mistake, and returns
whether the answer was right.
Taught in: chapters/04b_payloads_overload.ipynb.
"""

from __future__ import annotations

import math

from servelab.exercises import check


def _near(a: float, b: float, rel: float = 0.05) -> bool:
    return math.isclose(float(a), float(b), rel_tol=rel)


def expected_parse_cores(rate: float, parse_ms: float) -> float:
    """Cores that parsing alone keeps busy: requests per second × CPU seconds per request."""
    return rate * parse_ms / 1e3


def check_parse_cores(answer: float | None, rate: float, parse_ms: float) -> bool:
    """Exercise 1: how many cores JSON parsing alone needs at ``rate`` requests/s, ``parse_ms`` each."""
    expected = expected_parse_cores(rate, parse_ms)
    if answer is None or answer is Ellipsis:
        return check(answer, expected, name="cores spent parsing")
    hint = "Each second brings `rate` requests, and each takes `parse_ms` of CPU: how many CPU-seconds per second?"
    if _near(answer, rate * parse_ms):
        hint = "Right idea, but parse_ms is in milliseconds: divide by 1000 to get CPU-seconds per second (cores)."
    elif _near(answer, 1e3 / parse_ms):
        hint = "That is how many requests one core could parse per second; the question asks for cores at this rate."
    elif _near(answer, rate / parse_ms):
        hint = "Multiply the rate by the time per request, don't divide."
    return check(answer, expected, rel_tol=0.05, name="cores spent parsing", hint=hint)


def expected_queue_bound(max_batch: int, batch_ms: float, slo_ms: float) -> float:
    """The longest queue whose last request still meets the SLO.

    It waits for the batch in flight, then for ``queue / max_batch`` batches ahead of it, then
    rides in its own: ``(queue / max_batch + 2) × batch_ms ≤ slo_ms``.
    """
    return max(0.0, max_batch * (slo_ms / batch_ms - 2))


def check_queue_bound(answer: float | None, max_batch: int, batch_ms: float, slo_ms: float) -> bool:
    """Exercise 2: a ``max_queue`` for the batching server, from its batch size, batch time and the SLO."""
    expected = expected_queue_bound(max_batch, batch_ms, slo_ms)
    if answer is None or answer is Ellipsis:
        return check(answer, expected, name="max_queue")
    hint = ("The last request in the queue waits for the batch in flight, then for every batch ahead of it, "
            "then for its own. How many batches fit in the objective?")  # fmt: skip
    if _near(answer, max_batch * slo_ms / batch_ms, rel=0.1):
        hint = ("That fills the whole objective with queued batches: the batch in flight and the request's own "
                "batch take their time too.")  # fmt: skip
    elif _near(answer, slo_ms / batch_ms - 2, rel=0.1):
        hint = "That is a number of batches; each batch takes max_batch requests off the queue."
    return check(answer, expected, rel_tol=0.15, abs_tol=1.0, name="max_queue", hint=hint)


def expected_budget_retries(requests: int, ratio: float, burst: float) -> float:
    """The most retries a token-bucket budget allows: ``ratio`` per request, plus the bucket's burst."""
    return ratio * requests + burst


def check_budget_retries(answer: float | None, requests: int, ratio: float, burst: float) -> bool:
    """Exercise 3: the most retries a budget of ``ratio`` (and ``burst``) lets through for ``requests``."""
    expected = expected_budget_retries(requests, ratio, burst)
    if answer is None or answer is Ellipsis:
        return check(answer, expected, name="most retries")
    hint = "Every first attempt earns the budget `ratio` of a retry; the bucket also starts full."
    if _near(answer, ratio * requests):
        hint = "Nearly: the bucket starts with `burst` tokens, which can be spent at once."
    elif _near(answer, 3 * requests):
        hint = "That is what the policy would send with no budget (three retries each); the budget caps it."
    return check(answer, expected, rel_tol=0.0, abs_tol=1.0, name="most retries", hint=hint)
