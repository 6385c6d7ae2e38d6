"""Checks for chapter 4's exercises (batching, open-loop load).

Each check prints a tick or a hint aimed at the usual mistake, and returns
whether the answer was right.
Taught in: chapters/04_batching.ipynb.
"""

from __future__ import annotations

import math
from typing import Sequence

from servelab.exercises import check
from servelab.roofline import ForwardCost


def _near(a: float, b: float, rel: float = 0.05) -> bool:
    return math.isclose(float(a), float(b), rel_tol=rel)


def _cost_at(costs: Sequence[ForwardCost], batch: int, threads: int = 1) -> ForwardCost:
    for c in costs:
        if c.batch == batch and c.threads == threads:
            return c
    raise ValueError(f"the table has no batch {batch} at {threads} thread(s)")


def expected_max_batched_rate(costs: Sequence[ForwardCost], max_batch: int) -> float:
    """Requests per second one forward loop serves when every batch is full."""
    return _cost_at(costs, max_batch).samples_per_s


def check_max_batched_rate(answer: float | None, costs: Sequence[ForwardCost], max_batch: int) -> bool:
    """Exercise 1: the throughput ceiling of a batcher whose batches are all ``max_batch``."""
    if answer is None or answer is Ellipsis:
        return check(answer, 0, name="max batched rate")
    full, single = _cost_at(costs, max_batch), _cost_at(costs, 1)
    hint = "Full batches of max_batch requests, one after another: how many requests per second is that?"
    if _near(answer, 1 / full.seconds):
        hint = "That is batches per second; every batch answers max_batch requests."
    elif _near(answer, single.samples_per_s):
        hint = "That is the unbatched rate (batch 1). Use the row of the table at max_batch."
    elif _near(answer, max_batch * single.samples_per_s):
        hint = "That assumes a full batch costs as much as batch 1. Past the ridge it costs more: use its own time."
    elif _near(answer, full.seconds) or _near(answer, full.per_sample_s):
        hint = "That is a time, not a rate: invert it."
    return check(answer, full.samples_per_s, rel_tol=0.05, name="max batched rate (requests/s)", hint=hint)


def check_aimd_target(answer_ms: float | None, slo_ms: float) -> bool:
    """Exercise 2: an AIMD batch-time target that keeps p99 within ``slo_ms``.

    A request may arrive just after a batch left: it waits for that batch, then
    rides in the next one, so its latency is about twice the batch time. Any
    target from about 0.3 to 0.55 of the SLO is accepted.
    """
    if answer_ms is None or answer_ms is Ellipsis:
        return check(answer_ms, slo_ms / 2, name="AIMD target (ms)")
    answer = float(answer_ms)
    ok = 0.3 * slo_ms <= answer <= 0.55 * slo_ms
    if ok:
        print(f"✓ AIMD target (ms): {answer:g} ms works: p99 ≈ 2 × batch time ≈ {2 * answer:g} ms "
              f"stays within the {slo_ms:g} ms SLO.")  # fmt: skip
        return True
    if answer >= slo_ms:
        hint = ("A request can wait for the batch in flight and then ride in its own: "
                "its latency is about 2 × the batch time, so this target misses the SLO.")  # fmt: skip
    elif answer > 0.55 * slo_ms:
        hint = "Close, but p99 ≈ 2 × the batch time leaves no room for queueing: aim a little lower."
    elif answer > 0:
        hint = "Safe, but so small that batches stay tiny and throughput is lost: you may aim higher."
    else:
        hint = "The target is a batch time in milliseconds, so it must be positive."
    print(f"✗ AIMD target (ms): {answer:g} is not it. {hint}")
    return False


def check_closed_loop_latency(answer_s: float | None, concurrency: int, throughput: float) -> bool:
    """Exercise 3: the mean latency a closed loop must see, from Little's law (W = L / λ)."""
    expected = concurrency / throughput
    if answer_s is None or answer_s is Ellipsis:
        return check(answer_s, expected, name="closed-loop mean latency (s)")
    hint = "Little's law: requests in flight = throughput × latency. Solve it for the latency."
    if _near(answer_s, concurrency * throughput):
        hint = "You multiplied: latency = in flight ÷ throughput, not in flight × throughput."
    elif _near(answer_s, 1 / throughput):
        hint = "That is the time per answer with the whole server to one request; there are more in flight."
    elif _near(answer_s, expected * 1e3):
        hint = "Right number, wrong unit: the check wants seconds."
    return check(answer_s, expected, rel_tol=0.05, name="closed-loop mean latency (s)", hint=hint)


def check_low_load_p50(answer_ms: float | None, p50_no_wait_ms: float, max_wait_ms: float) -> bool:
    """Exercise 4: p50 at low load with ``max_wait_ms``, given the p50 without waiting.

    Alone in an idle server, a request waits the whole ``max_wait_ms`` for company.
    """
    expected = p50_no_wait_ms + max_wait_ms
    if answer_ms is None or answer_ms is Ellipsis:
        return check(answer_ms, expected, name="p50 with max_wait (ms)")
    hint = "At low load, does a request find company to share its batch with, or does it wait alone?"
    if _near(answer_ms, p50_no_wait_ms, rel=0.1):
        hint = "At low load the queue is empty: the request waits the full max_wait before its batch leaves."
    elif _near(answer_ms, p50_no_wait_ms + max_wait_ms / 2, rel=0.03):
        hint = "It waits the whole max_wait, not half of it: the deadline counts from its own arrival."
    return check(answer_ms, expected, rel_tol=0.0, abs_tol=max(1.0, 0.1 * max_wait_ms),
                 name="p50 with max_wait (ms)", hint=hint)  # fmt: skip
