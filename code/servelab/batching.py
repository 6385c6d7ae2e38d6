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

Nothing here knows about torch or HTTP: ``forward`` is any function from a
list of items to a list of results of the same length.
Taught in: chapters/04_batching.ipynb.
"""

from __future__ import annotations

import asyncio
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
    ) -> None:
        """``units(item)`` says how many rows an item holds (default 1); a batch holds
        at most ``max_batch`` units, except a single item bigger than that, which runs alone.
        ``history`` bounds how many batch times are kept for the statistics."""
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
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
    def submit(self, item: T) -> Future:
        """Queue one item; the future resolves to its result (or its batch's exception)."""
        pending = _Pending(item, Future(), max(1, int(self._units(item))), time.monotonic())
        with self._lock:
            if self._closed:
                raise BatcherClosed("the batcher is shut down")
            self._submitted += 1
            self._queue.put(pending)  # under the lock, so nothing slips in after the stop sentinel
        return pending.future

    def __call__(self, item: T, timeout: float | None = None) -> R:
        """Submit and wait: the blocking form, for threaded servers."""
        return self.submit(item).result(timeout)

    async def submit_async(self, item: T) -> R:
        """Submit and await: the form for asyncio servers (the event loop never blocks)."""
        return await asyncio.wrap_future(self.submit(item))

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
    ) -> None:
        """Change settings while serving; they apply from the next batch.

        ``adaptive=None`` switches AIMD off (cap = ``max_batch``); an :class:`AIMD`
        switches it on, restarting the cap from its ``start_cap`` (default ``max_batch``).
        """
        with self._lock:
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
            self._batches = 0
            self._failed_batches = 0
            self._sizes: Counter[int] = Counter()
            self._batch_ms: deque[float] = deque(maxlen=self._history)
            self._wait_ms_sum = 0.0
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
                "queue_depth": self._queue.qsize(),
                "submitted": self._submitted,
                "answered": self._answered,
                "failed": self._failed,
                "cancelled": self._cancelled,
                "batches": self._batches,
                "failed_batches": self._failed_batches,
                "batch_size_histogram": {str(k): v for k, v in sorted(self._sizes.items())},
                "mean_batch_size": (sum(k * v for k, v in self._sizes.items()) / self._batches) if self._batches else 0.0,
                "batch_ms": _summary_ms(times),
                "mean_queue_wait_ms": self._wait_ms_sum / served if served else 0.0,
                "cap_trace": list(self._cap_trace),
            }

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
            if units + nxt.units > cap:
                return batch, nxt, False
            batch.append(nxt)
            units += nxt.units
        return batch, None, False

    def _serve(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]
        dispatched = time.monotonic()
        wait_ms = sum(dispatched - p.enqueued for p in live) * 1e3
        error: BaseException | None = None
        results: Sequence[Any] = ()
        t0 = time.perf_counter()
        if live:
            try:
                results = self._forward([p.item for p in live])
                if len(results) != len(live):
                    raise ValueError(f"forward returned {len(results)} results for {len(live)} items")
            except Exception as exc:  # noqa: BLE001 - every waiting caller gets it
                error = exc
        batch_ms = (time.perf_counter() - t0) * 1e3
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
            self._wait_ms_sum += wait_ms
            if error is None:
                self._answered += len(live)
            else:
                self._failed += len(live)
                self._failed_batches += 1
            if self.adaptive is not None:
                self._cap = self.adaptive.next_cap(self._cap, units, batch_ms, self.max_batch)
            self._cap_trace.append((round(time.monotonic() - self._start_clock, 4), self.cap))


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
