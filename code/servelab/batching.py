"""A framework-agnostic dynamic batcher: a queue, one batching thread, futures.

Callers :meth:`DynamicBatcher.submit` one item and get a
:class:`concurrent.futures.Future`. One thread takes items off the queue and
calls ``forward(list_of_items)`` once per batch, then hands each caller its
own result. A batch is dispatched when it holds ``max_batch`` units (rows),
or when the *oldest* item in it has waited ``max_wait_ms``, whichever comes
first. Under load the oldest item has usually waited longer than that
already (behind the forward in flight), so batches form without any wait.

With an :class:`AIMD` policy the cap on the batch size adapts, after Clipper
(Crankshaw et al., NSDI 2017): it grows by ``step`` after every full batch
that ran faster than ``target_ms`` and is cut to ``backoff`` × itself after
any batch that ran slower.

Overload protection (both off by default, so the queue is unbounded and
every item is computed, however late):

- ``max_queue``: at most that many items wait; :meth:`DynamicBatcher.submit`
  raises :class:`QueueFull` at once for the next one (a server answers 503
  with ``Retry-After``), instead of queueing work it cannot finish in time.
- deadlines: ``submit(item, deadline=t)`` (a ``time.monotonic()`` time), or
  ``default_deadline_ms`` for every item. An item that can no longer finish
  by its deadline (now plus the recent batch time is past it) is dropped
  before compute and its future fails with :class:`DeadlineExceeded`.

Every submitted item's future is resolved exactly once: with its result, its
batch's exception, :class:`DeadlineExceeded`, or cancelled by its caller.
``stats()`` counts each outcome, and ``shed`` for the refused ones. It also
says where the batching thread's CPU went: ``forward_cpu_s`` in the forward
calls, ``batcher_cpu_s`` in all (the rest is forming batches and handing out
results), both since the last reset.

Nothing here knows about torch or HTTP: ``forward`` is any function from a
list of items to a list of results of the same length.
Taught in: chapters/04_batching.ipynb.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()  # sentinel: everything queued before it is served, then the thread ends


class BatcherClosed(RuntimeError):
    """The batcher no longer accepts items (it is shutting down or shut down)."""


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` items: this one is refused (shed) without queueing."""

    def __init__(self, depth: int, retry_after_s: float) -> None:
        super().__init__(f"the batcher's queue is full ({depth} items waiting)")
        self.depth = depth
        self.retry_after_s = retry_after_s


class DeadlineExceeded(TimeoutError):
    """The item could no longer finish by its deadline, so it was dropped before compute."""


@dataclass
class AIMD:
    """Additive-increase, multiplicative-decrease control of the batch cap.

    ``target_ms`` is the batch time to stay under. Because a request can wait
    for the batch in flight and then ride in the next one, its latency is
    about twice the batch time: aim ``target_ms`` at half the latency SLO.

    The cap starts high by default: a cap that is too big costs a few slow
    batches, each cutting it by 10%, while one grown from 1 must pass through
    tiny batches, which on some BLAS libraries cost as much per input as no
    batching at all and can trap it there.
    """

    target_ms: float
    step: float = 1.0
    backoff: float = 0.9
    min_cap: int = 1
    start_cap: int | None = None  # None: start at max_batch and let slow full batches cut it

    def next_cap(self, cap: float, batch_units: int, batch_ms: float, max_batch: int) -> float:
        """The cap after a batch of ``batch_units`` that took ``batch_ms``.

        A slow batch cuts the cap, full or not; only a full batch can say that
        a bigger one might still be fast enough.
        """
        if batch_ms > self.target_ms:
            return max(float(self.min_cap), cap * self.backoff)
        if batch_units >= int(cap):  # full and fast enough: try a bigger batch
            return min(float(max_batch), cap + self.step)
        return cap


@dataclass
class _Pending:
    item: Any
    future: Future
    units: int
    enqueued: float  # time.monotonic() at submit
    deadline: float = math.inf  # time.monotonic() by which its answer must be ready


class DynamicBatcher(Generic[T, R]):
    """Serve single items through a batched ``forward``, from any number of threads.

    >>> with DynamicBatcher(lambda xs: [2 * x for x in xs], max_batch=8) as b:
    ...     b(21)
    42
    """

    def __init__(
        self,
        forward: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        adaptive: AIMD | None = None,
        units: Callable[[T], int] | None = None,
        history: int = 20_000,
        name: str = "batcher",
        max_queue: int | None = None,
        default_deadline_ms: float | None = None,
    ) -> None:
        """``units(item)`` says how many rows an item holds (default 1); a batch holds
        at most ``max_batch`` units, except a single item bigger than that, which runs alone.
        ``history`` bounds how many batch times are kept for the statistics.
        ``max_queue`` (None: unbounded) and ``default_deadline_ms`` (None: no deadline)
        protect against overload; see the module's docstring."""
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        _check_overload_settings(max_queue, default_deadline_ms)
        self.max_queue = max_queue
        self.default_deadline_ms = default_deadline_ms
        self._outstanding = 0  # submitted and not yet resolved; never reset, unlike the statistics
        self._recent_batch_s = 0.0  # moving average of batch times: how long a dispatched batch takes
        self._forward = forward
        self._units = units or (lambda _item: 1)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()  # guards settings, statistics and the closed flag
        self._closed = False
        self.max_batch = int(max_batch)
        self.max_wait_ms = float(max_wait_ms)
        self.adaptive = adaptive
        self._cap = float(adaptive.start_cap or max_batch) if adaptive else float(max_batch)
        self._history = history
        self._start_clock = time.monotonic()
        self.reset_stats()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- callers ------------------------------------------------------------
    def submit(self, item: T, deadline: float | None = None) -> Future:
        """Queue one item; the future resolves to its result (or its batch's exception).

        ``deadline`` is a ``time.monotonic()`` time (default: now + ``default_deadline_ms``,
        or none). Raises :class:`QueueFull` at once when ``max_queue`` items wait.
        """
        now = time.monotonic()
        pending = _Pending(item, Future(), max(1, int(self._units(item))), now)
        pending.future.add_done_callback(self._resolved)
        with self._lock:
            if self._closed:
                raise BatcherClosed("the batcher is shut down")
            self._refuse_if_full()
            if deadline is None and self.default_deadline_ms is not None:
                deadline = now + self.default_deadline_ms / 1e3
            pending.deadline = math.inf if deadline is None else deadline
            self._submitted += 1
            self._outstanding += 1
            self._queue.put(pending)  # under the lock, so nothing slips in after the stop sentinel
        return pending.future

    def refuse_if_full(self) -> None:
        """Raise :class:`QueueFull` (and count the item as shed) if a submit now would be refused.

        A server calls it before parsing a request, so an overloaded server
        spends no CPU on requests it will refuse anyway.
        """
        with self._lock:
            self._refuse_if_full()

    def _refuse_if_full(self) -> None:  # with the lock held
        depth = self._queue.qsize()
        if self.max_queue is not None and depth >= self.max_queue:
            self._shed += 1
            raise QueueFull(depth, self._drain_estimate_s(depth))

    def _drain_estimate_s(self, depth: int) -> float:
        """About how long the queue takes to empty: batches ahead × the recent batch time."""
        return math.ceil(depth / max(1, self.cap)) * self._recent_batch_s

    def _resolved(self, _future: Future) -> None:
        with self._lock:
            self._outstanding -= 1

    def __call__(self, item: T, timeout: float | None = None) -> R:
        """Submit and wait: the blocking form, for threaded servers."""
        return self.submit(item).result(timeout)

    async def submit_async(self, item: T, deadline: float | None = None) -> R:
        """Submit and await: the form for asyncio servers (the event loop never blocks)."""
        return await asyncio.wrap_future(self.submit(item, deadline))

    # ---- settings -----------------------------------------------------------
    @property
    def cap(self) -> int:
        """The current largest batch, in units (AIMD moves it; otherwise ``max_batch``)."""
        return max(1, min(self.max_batch, int(self._cap)))

    def configure(
        self,
        *,
        max_batch: int | None = None,
        max_wait_ms: float | None = None,
        adaptive: AIMD | None | str = "keep",
        max_queue: int | None | str = "keep",
        default_deadline_ms: float | None | str = "keep",
    ) -> None:
        """Change settings while serving; they apply from the next batch.

        ``adaptive=None`` switches AIMD off (cap = ``max_batch``); an :class:`AIMD`
        switches it on, restarting the cap from its ``start_cap`` (default ``max_batch``).
        ``max_queue`` and ``default_deadline_ms``: None switches them off, ``"keep"`` keeps them.
        Items already queued keep the deadline they were given.
        """
        with self._lock:
            new_queue = self.max_queue if max_queue == "keep" else max_queue
            new_deadline = self.default_deadline_ms if default_deadline_ms == "keep" else default_deadline_ms
            _check_overload_settings(new_queue, new_deadline)  # type: ignore[arg-type]
            self.max_queue, self.default_deadline_ms = new_queue, new_deadline  # type: ignore[assignment]
            if max_batch is not None:
                if max_batch < 1:
                    raise ValueError(f"max_batch must be >= 1, got {max_batch}")
                self.max_batch = int(max_batch)
            if max_wait_ms is not None:
                if max_wait_ms < 0:
                    raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
                self.max_wait_ms = float(max_wait_ms)
            if adaptive != "keep":
                self.adaptive = adaptive  # type: ignore[assignment]
                start = adaptive.start_cap if isinstance(adaptive, AIMD) else None
                self._cap = float(start or self.max_batch)
            elif self.adaptive is None:
                self._cap = float(self.max_batch)
            else:
                self._cap = min(self._cap, float(self.max_batch))

    # ---- statistics -----------------------------------------------------------
    def reset_stats(self) -> None:
        """Forget the statistics so far (settings and the AIMD cap stay)."""
        with self._lock:
            self._submitted = 0
            self._answered = 0
            self._failed = 0
            self._cancelled = 0
            self._shed = 0
            self._expired = 0
            self._batches = 0
            self._failed_batches = 0
            self._sizes: Counter[int] = Counter()
            self._batch_ms: deque[float] = deque(maxlen=self._history)
            self._wait_ms_sum = 0.0
            self._forward_cpu_s = 0.0  # CPU time of the forward calls, on the batching thread
            self._thread_cpu_at_reset = self._thread_cpu_s()
            self._cap_trace: deque[tuple[float, int]] = deque(maxlen=2_000)  # the latest caps, for plots

    def stats(self) -> dict[str, Any]:
        """JSON-ready statistics: batch-size histogram, batch times, the current cap, counts."""
        with self._lock:
            times = np.asarray(self._batch_ms, dtype=float)
            served = self._answered + self._failed
            return {
                "max_batch": self.max_batch,
                "max_wait_ms": self.max_wait_ms,
                "adaptive_target_ms": self.adaptive.target_ms if self.adaptive else None,
                "cap": self.cap,
                "max_queue": self.max_queue,
                "default_deadline_ms": self.default_deadline_ms,
                "queue_depth": self._queue.qsize(),
                "outstanding": self._outstanding,
                "submitted": self._submitted,
                "answered": self._answered,
                "failed": self._failed,
                "cancelled": self._cancelled,
                "shed": self._shed,
                "expired": self._expired,
                "batches": self._batches,
                "failed_batches": self._failed_batches,
                "batch_size_histogram": {str(k): v for k, v in sorted(self._sizes.items())},
                "mean_batch_size": (sum(k * v for k, v in self._sizes.items()) / self._batches) if self._batches else 0.0,
                "batch_ms": _summary_ms(times),
                "mean_queue_wait_ms": self._wait_ms_sum / served if served else 0.0,
                "forward_cpu_s": self._forward_cpu_s,
                "batcher_cpu_s": self._thread_cpu_s() - self._thread_cpu_at_reset,
                "cap_trace": list(self._cap_trace),
            }

    def _thread_cpu_s(self) -> float:
        """CPU seconds the batching thread has used: forward passes plus forming batches."""
        thread = getattr(self, "_thread", None)
        if thread is None or thread.ident is None or not thread.is_alive():
            return 0.0
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (OSError, AttributeError):  # the thread just ended, or no per-thread clocks (not Linux)
            return 0.0

    # ---- shutdown -------------------------------------------------------------
    def close(self, timeout: float | None = None) -> None:
        """Refuse new items, serve every queued one, then stop the thread."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> "DynamicBatcher[T, R]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the batching thread ------------------------------------------------------
    def _run(self) -> None:
        carry: _Pending | None = None  # an item that did not fit the previous batch
        stopping = False
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is _STOP:
                return
            batch, carry, stopping = self._collect(first)
            self._serve(batch)
            if stopping and carry is None:
                return

    def _collect(self, first: _Pending) -> tuple[list[_Pending], Any, bool]:
        """Fill a batch behind ``first`` until the cap or ``first``'s deadline."""
        with self._lock:
            cap, max_wait = self.cap, self.max_wait_ms / 1e3
        batch, units = [first], first.units
        deadline = first.enqueued + max_wait
        while units < cap:
            remaining = deadline - time.monotonic()
            try:
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                return batch, None, True
            if self._expire_if_late(nxt):
                continue
            if units + nxt.units > cap:
                return batch, nxt, False
            batch.append(nxt)
            units += nxt.units
        return batch, None, False

    def _expire_if_late(self, pending: _Pending) -> bool:
        """Fail ``pending`` with DeadlineExceeded if it cannot finish by its deadline; True if it did."""
        if time.monotonic() + self._recent_batch_s <= pending.deadline:
            return False
        if pending.future.set_running_or_notify_cancel():
            pending.future.set_exception(DeadlineExceeded("dropped before compute: it could not meet its deadline"))
            with self._lock:
                self._expired += 1
        else:
            with self._lock:
                self._cancelled += 1
        return True

    def _serve(self, batch: list[_Pending]) -> None:
        batch = [p for p in batch if not self._expire_if_late(p)]  # the wait for the batch may have made some late
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]
        dispatched = time.monotonic()
        wait_ms = sum(dispatched - p.enqueued for p in live) * 1e3
        error: BaseException | None = None
        results: Sequence[Any] = ()
        t0, cpu0 = time.perf_counter(), time.thread_time()
        if live:
            try:
                results = self._forward([p.item for p in live])
                if len(results) != len(live):
                    raise ValueError(f"forward returned {len(results)} results for {len(live)} items")
            except Exception as exc:  # noqa: BLE001 - every waiting caller gets it
                error = exc
        batch_ms = (time.perf_counter() - t0) * 1e3
        forward_cpu_s = time.thread_time() - cpu0  # CPU, not wall: other programs' load does not inflate it
        units = sum(p.units for p in live)
        for i, p in enumerate(live):  # hand out first: callers should not wait on our bookkeeping
            if error is None:
                p.future.set_result(results[i])
            else:
                p.future.set_exception(error)
        with self._lock:
            self._cancelled += len(batch) - len(live)
            if not live:
                return
            self._batches += 1
            self._sizes[units] += 1
            self._batch_ms.append(batch_ms)
            # A moving average, not the last batch: one slow batch should not expire a whole queue.
            seconds = batch_ms / 1e3
            self._recent_batch_s = seconds if not self._recent_batch_s else 0.8 * self._recent_batch_s + 0.2 * seconds
            self._wait_ms_sum += wait_ms
            self._forward_cpu_s += forward_cpu_s
            if error is None:
                self._answered += len(live)
            else:
                self._failed += len(live)
                self._failed_batches += 1
            if self.adaptive is not None:
                self._cap = self.adaptive.next_cap(self._cap, units, batch_ms, self.max_batch)
            self._cap_trace.append((round(time.monotonic() - self._start_clock, 4), self.cap))


def _check_overload_settings(max_queue: int | None, default_deadline_ms: float | None) -> None:
    if max_queue is not None and (isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1):
        raise ValueError(f"max_queue must be None or an integer >= 1, got {max_queue!r}")
    if default_deadline_ms is not None and not default_deadline_ms > 0:
        raise ValueError(f"default_deadline_ms must be None or > 0, got {default_deadline_ms!r}")


def _summary_ms(times: np.ndarray) -> dict[str, float]:
    if times.size == 0:
        return {"n": 0, "mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    return {
        "n": int(times.size),
        "mean": float(times.mean()),
        "p50": float(np.percentile(times, 50)),
        "p99": float(np.percentile(times, 99)),
        "max": float(times.max()),
    }
