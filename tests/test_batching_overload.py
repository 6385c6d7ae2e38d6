"""The batcher under overload: a bounded queue sheds at once, late items expire unrun, nothing is lost or doubled."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

import pytest

from servelab.batching import DeadlineExceeded, DynamicBatcher, QueueFull


class SlowDoubler:
    """``forward`` that doubles its items after ``delay_s``, and remembers every item it computed."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.computed: Counter[int] = Counter()
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.gate.wait(10)
        time.sleep(self.delay_s)
        with self.lock:
            self.computed.update(items)
        return [2 * x for x in items]


def test_defaults_keep_todays_behaviour() -> None:
    with DynamicBatcher(SlowDoubler(0.0), max_batch=4) as b:
        stats = b.stats()
        assert stats["max_queue"] is None and stats["default_deadline_ms"] is None
        assert [f.result(5) for f in [b.submit(i) for i in range(50)]] == [2 * i for i in range(50)]
        assert b.stats()["shed"] == b.stats()["expired"] == 0


def test_a_full_queue_refuses_at_once() -> None:
    forward = SlowDoubler(0.0)
    forward.gate.clear()  # hold the first batch, so the queue fills behind it
    with DynamicBatcher(forward, max_batch=1, max_wait_ms=0, max_queue=3) as b:
        first = b.submit(0)
        deadline = time.monotonic() + 5
        while b.stats()["queue_depth"] and time.monotonic() < deadline:  # the thread has taken item 0
            time.sleep(0.001)
        queued = [b.submit(i) for i in (1, 2, 3)]
        t0 = time.perf_counter()
        with pytest.raises(QueueFull) as caught:
            b.submit(4)
        assert time.perf_counter() - t0 < 0.05, "a full queue must refuse at once, not wait"
        assert caught.value.depth == 3
        with pytest.raises(QueueFull):
            b.refuse_if_full()
        forward.gate.set()
        assert [f.result(5) for f in [first, *queued]] == [0, 2, 4, 6]
        stats = b.stats()
        assert stats["shed"] == 2 and stats["submitted"] == 4 and stats["answered"] == 4
        b.submit(5).result(5)  # room again


def test_late_items_expire_before_compute() -> None:
    forward = SlowDoubler(0.05)
    with DynamicBatcher(forward, max_batch=1, max_wait_ms=0) as b:
        b.submit(100).result(5)  # one batch, so the batcher knows a batch takes about 50 ms
        blocker = b.submit(101)
        late = b.submit(102, deadline=time.monotonic() + 0.01)  # behind a 50 ms batch: cannot make it
        relaxed = b.submit(103, deadline=time.monotonic() + 5)
        assert blocker.result(5) == 202 and relaxed.result(5) == 206
        with pytest.raises(DeadlineExceeded):
            late.result(5)
        assert forward.computed[102] == 0, "an expired item was computed"
        assert b.stats()["expired"] == 1


def test_default_deadline_and_configure() -> None:
    with DynamicBatcher(SlowDoubler(0.0), max_batch=2, default_deadline_ms=1000) as b:
        assert b(3) == 6
        b.configure(max_queue=10, default_deadline_ms=None)
        assert b.stats()["max_queue"] == 10 and b.stats()["default_deadline_ms"] is None
        b.configure(max_batch=4)  # "keep" leaves the overload settings alone
        assert b.stats()["max_queue"] == 10
        with pytest.raises(ValueError):
            b.configure(max_queue=0)
        with pytest.raises(ValueError):
            b.configure(default_deadline_ms=-1)
    with pytest.raises(ValueError):
        DynamicBatcher(SlowDoubler(0.0), max_queue=True)


def test_every_request_is_answered_exactly_once() -> None:
    """Many threads, a bounded queue, random deadlines, some cancellations: every item has one fate."""
    forward = SlowDoubler(0.002)
    rng = random.Random(1)
    plan = [(i, rng.choice([None, 0.001, 0.02, 1.0]), rng.random() < 0.05) for i in range(3000)]
    outcomes: dict[int, str] = {}
    futures: dict[int, Future] = {}
    lock = threading.Lock()

    def outcome(i: int, future: Future) -> None:
        try:
            kind = "result" if future.result() == 2 * i else "wrong"
        except DeadlineExceeded:
            kind = "expired"
        except CancelledError:
            kind = "cancelled"
        with lock:
            assert i not in outcomes, f"item {i} was answered twice"
            outcomes[i] = kind

    def client(step: tuple[int, float | None, bool]) -> None:
        i, budget_s, cancel = step
        try:
            future = batcher.submit(i, None if budget_s is None else time.monotonic() + budget_s)
        except QueueFull:
            with lock:
                outcomes[i] = "shed"
            return
        futures[i] = future
        future.add_done_callback(lambda f, i=i: outcome(i, f))
        if cancel:
            future.cancel()

    batcher = DynamicBatcher(forward, max_batch=8, max_wait_ms=1, max_queue=40)
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(client, plan))
    batcher.close(timeout=30)

    assert set(outcomes) == {i for i, _, _ in plan}, "a request got no answer"
    assert all(f.done() for f in futures.values())
    kinds = Counter(outcomes.values())
    assert kinds["wrong"] == 0, "an answer went to the wrong caller"
    computed_results = {i for i, kind in outcomes.items() if kind == "result"}
    assert all(forward.computed[i] == 1 for i in computed_results), "an answered item was computed twice"
    assert not any(forward.computed[i] for i, kind in outcomes.items() if kind in ("expired", "shed")), \
        "a shed or expired item was computed"  # fmt: skip
    stats = batcher.stats()
    assert stats["shed"] == kinds["shed"] and stats["expired"] == kinds["expired"]
    assert stats["answered"] == kinds["result"]
    assert stats["submitted"] == len(plan) - kinds["shed"]
    assert stats["answered"] + stats["failed"] + stats["expired"] + stats["cancelled"] == stats["submitted"]
    assert stats["outstanding"] == 0
    assert kinds["shed"] > 0 and kinds["expired"] > 0 and kinds["result"] > 0, kinds  # every path was exercised


def test_outstanding_counts_the_batch_in_flight() -> None:
    forward = SlowDoubler(0.0)
    forward.gate.clear()
    with DynamicBatcher(forward, max_batch=4, max_wait_ms=0) as b:
        future = b.submit(1)
        deadline = time.monotonic() + 5
        while b.stats()["queue_depth"] and time.monotonic() < deadline:
            time.sleep(0.001)
        assert b.stats()["queue_depth"] == 0 and b.stats()["outstanding"] == 1
        forward.gate.set()
        future.result(5)
        assert b.stats()["outstanding"] == 0
