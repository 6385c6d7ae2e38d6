"""Unit tests for servelab.batching: the batcher's invariants, with plain-Python forwards."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from servelab.batching import AIMD, BatcherClosed, DynamicBatcher


class Recorder:
    """A forward that doubles its inputs and records every batch it saw."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        if self.delay_s:
            time.sleep(self.delay_s)
        with self.lock:
            self.batches.append(list(items))
        return [2 * x for x in items]


def test_every_caller_gets_its_own_answer_exactly_once():
    forward = Recorder(delay_s=0.002)
    n = 500
    with DynamicBatcher(forward, max_batch=16, max_wait_ms=1) as batcher:
        with ThreadPoolExecutor(max_workers=32) as pool:
            answers = list(pool.map(batcher, range(n)))  # distinct inputs: a mix-up shows
    assert answers == [2 * i for i in range(n)], "some caller got another caller's answer"
    seen = [x for batch in forward.batches for x in batch]
    assert sorted(seen) == list(range(n)), "an item was lost or computed twice"
    assert max(len(b) for b in forward.batches) > 1, "concurrent callers should have been batched"
    stats = batcher.stats()
    assert stats["submitted"] == stats["answered"] == n
    assert sum(int(k) * v for k, v in stats["batch_size_histogram"].items()) == n
    assert stats["batches"] == len(forward.batches)


def test_batches_never_exceed_max_batch():
    forward = Recorder(delay_s=0.005)
    with DynamicBatcher(forward, max_batch=4, max_wait_ms=5) as batcher:
        futures = [batcher.submit(i) for i in range(40)]
        assert [f.result(timeout=10) for f in futures] == [2 * i for i in range(40)]
    assert max(len(b) for b in forward.batches) == 4
    assert set(map(int, batcher.stats()["batch_size_histogram"])) <= {1, 2, 3, 4}


def test_units_count_rows_and_an_oversized_item_runs_alone():
    forward = Recorder()
    batcher = DynamicBatcher(forward, max_batch=4, max_wait_ms=50, units=lambda x: x)
    futures = [batcher.submit(x) for x in (1, 2, 2, 9, 1)]  # all within the 50 ms wait
    assert [f.result(timeout=10) for f in futures] == [2, 4, 4, 18, 2]
    batcher.close()
    assert forward.batches == [[1, 2], [2], [9], [1]], "batches must respect the row budget, in order"


def test_waits_for_max_wait_when_alone_and_not_when_full():
    with DynamicBatcher(Recorder(), max_batch=64, max_wait_ms=80) as batcher:
        t0 = time.monotonic()
        batcher(1)
        alone = time.monotonic() - t0
    assert 0.07 <= alone < 1.0, f"a lone request should wait ~80 ms for company, waited {alone * 1e3:.0f} ms"
    with DynamicBatcher(Recorder(), max_batch=4, max_wait_ms=2_000) as batcher:
        t0 = time.monotonic()
        futures = [batcher.submit(i) for i in range(4)]
        [f.result(timeout=10) for f in futures]
        full = time.monotonic() - t0
    assert full < 1.0, f"a full batch should go at once, took {full:.2f} s"


def test_a_failing_forward_raises_to_every_waiting_caller():
    def broken(items):
        raise RuntimeError("model exploded")

    with DynamicBatcher(broken, max_batch=8, max_wait_ms=20) as batcher:
        futures = [batcher.submit(i) for i in range(8)]
        for f in futures:
            with pytest.raises(RuntimeError, match="model exploded"):
                f.result(timeout=10)
        stats = batcher.stats()
    assert stats["failed"] == 8 and stats["answered"] == 0 and stats["failed_batches"] >= 1


def test_a_forward_returning_the_wrong_count_fails_the_batch():
    with DynamicBatcher(lambda xs: xs[:-1], max_batch=4, max_wait_ms=20) as batcher:
        futures = [batcher.submit(i) for i in range(4)]
        for f in futures:
            with pytest.raises(ValueError, match="results for"):
                f.result(timeout=10)


def test_the_batcher_survives_a_failed_batch():
    calls = []

    def flaky(items):
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("first batch fails")
        return items

    with DynamicBatcher(flaky, max_batch=2, max_wait_ms=0) as batcher:
        with pytest.raises(RuntimeError):
            batcher(1, timeout=10)
        assert batcher(2, timeout=10) == 2


def test_shutdown_drains_the_queue_then_refuses_new_items():
    forward = Recorder(delay_s=0.01)
    batcher = DynamicBatcher(forward, max_batch=3, max_wait_ms=0)
    futures = [batcher.submit(i) for i in range(30)]
    batcher.close()
    assert all(f.done() for f in futures), "close() returned before the queue was drained"
    assert [f.result() for f in futures] == [2 * i for i in range(30)]
    with pytest.raises(BatcherClosed):
        batcher.submit(99)
    assert batcher.closed


def test_cancelled_items_are_not_computed():
    forward = Recorder(delay_s=0.05)
    with DynamicBatcher(forward, max_batch=1, max_wait_ms=0) as batcher:
        first = batcher.submit(1)
        time.sleep(0.01)  # the first batch is now in flight
        second = batcher.submit(2)
        assert second.cancel()
        assert first.result(timeout=10) == 2
    assert forward.batches == [[1]]
    assert batcher.stats()["cancelled"] == 1


def test_submit_async_from_an_event_loop():
    async def main(batcher):
        return await asyncio.gather(*(batcher.submit_async(i) for i in range(50)))

    forward = Recorder()
    with DynamicBatcher(forward, max_batch=8, max_wait_ms=5) as batcher:
        answers = asyncio.run(main(batcher))
    assert answers == [2 * i for i in range(50)]
    assert max(len(b) for b in forward.batches) > 1


def test_aimd_grows_on_full_fast_batches_and_backs_off_on_slow_ones():
    policy = AIMD(target_ms=10)
    assert policy.next_cap(4.0, batch_units=4, batch_ms=5, max_batch=32) == 5.0
    assert policy.next_cap(4.0, batch_units=2, batch_ms=5, max_batch=32) == 4.0, "a part-full batch says nothing"
    assert policy.next_cap(10.0, batch_units=10, batch_ms=12, max_batch=32) == pytest.approx(9.0)
    assert policy.next_cap(10.0, batch_units=3, batch_ms=50, max_batch=32) == pytest.approx(9.0), "slow cuts, full or not"
    assert policy.next_cap(32.0, batch_units=32, batch_ms=5, max_batch=32) == 32.0, "never above max_batch"
    assert policy.next_cap(1.0, batch_units=1, batch_ms=50, max_batch=32) == 1.0, "never below min_cap"
    assert policy.next_cap(4.7, batch_units=4, batch_ms=5, max_batch=32) == pytest.approx(5.7), "4 fills a cap of 4.7"


def test_aimd_settles_where_batches_meet_the_target():
    # A fake model whose batch of n costs 1 + n ms: a 9 ms target allows about 8.
    def forward(items):
        time.sleep((1 + len(items)) / 1e3)
        return items

    with DynamicBatcher(forward, max_batch=64, max_wait_ms=1, adaptive=AIMD(target_ms=9)) as batcher:
        assert batcher.cap == 64, "AIMD starts at max_batch by default"
        futures = [batcher.submit(i) for i in range(1500)]  # a backlog: every batch is full
        assert [f.result(timeout=30) for f in futures] == list(range(1500))
        stats = batcher.stats()
    assert 5 <= stats["cap"] <= 11, f"the cap should settle near 8, it is {stats['cap']}"
    assert stats["adaptive_target_ms"] == 9
    late_caps = [cap for _, cap in stats["cap_trace"][-50:]]
    assert max(late_caps) <= 12, f"the cap kept swinging: {late_caps}"


def test_aimd_cap_comes_down_from_max_batch_when_batches_are_slow():
    def forward(items):
        time.sleep(0.02)  # always slower than the target
        return items

    with DynamicBatcher(forward, max_batch=16, max_wait_ms=0, adaptive=AIMD(target_ms=5)) as batcher:
        for i in range(5):
            batcher(i)
        assert batcher.cap == int(16 * 0.9**5)


def test_configure_changes_the_cap_and_switches_aimd():
    with DynamicBatcher(Recorder(), max_batch=8, max_wait_ms=1) as batcher:
        assert batcher.cap == 8
        batcher.configure(max_batch=2)
        assert batcher.cap == 2
        batcher.configure(max_batch=16, adaptive=AIMD(target_ms=5))
        assert batcher.cap == 16 and batcher.stats()["adaptive_target_ms"] == 5, "AIMD starts at max_batch"
        batcher.configure(adaptive=AIMD(target_ms=5, start_cap=2))
        assert batcher.cap == 2
        batcher.configure(adaptive=None)
        assert batcher.cap == 16
        with pytest.raises(ValueError):
            batcher.configure(max_batch=0)


def test_reset_stats_forgets_counts():
    with DynamicBatcher(Recorder(), max_batch=4, max_wait_ms=0) as batcher:
        batcher(1)
        batcher.reset_stats()
        stats = batcher.stats()
    assert stats["batches"] == 0 and stats["submitted"] == 0 and stats["batch_ms"]["n"] == 0


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"max_wait_ms": -1}])
def test_rejects_nonsense_settings(kwargs):
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), **kwargs)


def spin_then_sleep(items: list[int]) -> list[int]:
    t0 = time.thread_time()
    while time.thread_time() - t0 < 0.02:  # 20 ms of CPU ...
        pass
    time.sleep(0.02)  # ... and 20 ms of waiting, which is not CPU
    return items


def test_stats_say_where_the_batching_threads_cpu_went():
    with DynamicBatcher(spin_then_sleep, max_batch=1, max_wait_ms=0) as batcher:
        for i in range(5):
            batcher(i)
        stats = batcher.stats()
    assert 0.1 <= stats["forward_cpu_s"] < 0.15, "forward CPU should count the spin, not the sleep"
    assert stats["forward_cpu_s"] <= stats["batcher_cpu_s"] < stats["forward_cpu_s"] + 0.05
