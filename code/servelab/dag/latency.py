"""Latency: time a forward pass at 1 and at all usable threads, side by side, retrying contended points;
and greedy generation with and without the KV cache.

Part of :mod:`servelab.dag`. Taught in: chapters/03_dag.ipynb.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from servelab import contention, hardware
from servelab.hardware import torch_threads  # noqa: F401 - servelab.dag re-exports it
from servelab.models import tokens
from servelab.progress import progress


def thread_counts() -> list[int]:
    """1 thread and all usable cores (just [1] on a single core)."""
    return sorted({1, hardware.usable_cores()})


@dataclass(frozen=True)
class LatencyPoint:
    """Median latency of one forward pass, with the outside load seen while measuring it."""

    model: str
    T: int
    threads: int
    seconds: float
    outside_cores: float
    contended: bool


def median_forward_seconds(model: nn.Module, x: torch.Tensor, *, repeats: int = 5, min_seconds: float = 0.15,
                           max_seconds: float = 2.0) -> float:
    """Median seconds of ``model(x)`` (no warm-up here: the caller warms up).

    At least ``repeats`` calls, and more until ``min_seconds`` have passed, so a
    short burst of outside work cannot move the median of a fast call; at
    most ``max_seconds`` (one call always runs).
    """
    samples: list[float] = []
    start = time.perf_counter()
    with torch.inference_mode():
        while True:
            t0 = time.perf_counter()
            model(x)
            samples.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            if (len(samples) >= repeats and elapsed >= min_seconds) or elapsed >= max_seconds or len(samples) >= 200:
                return float(np.median(samples))


def block_medians(model: nn.Module, x: torch.Tensor, threads: Sequence[int], *, rounds: int = 3, repeats: int = 5,
                  max_seconds: float = 2.0) -> dict[int, float]:
    """Median seconds of ``model(x)`` at each thread count, in blocks 1, n, 1, n, ... (``rounds`` of them).

    Each block is a warm-up call and then at least ``repeats`` calls at one
    thread count (a warm thread pool, as a server has). Other work on a shared
    machine only ever slows a block down, and cannot always be seen from inside
    a virtual machine; so each count keeps the faster of its block medians.
    """
    best: dict[int, float] = {}
    if contention.persistent_load():  # a neighbour that stays spoils every round alike: one is enough
        rounds = 1
    for _ in range(rounds):
        for n in threads:
            with torch_threads(n):
                with torch.inference_mode():
                    model(x)  # thread pools start lazily
                median = median_forward_seconds(model, x, repeats=repeats, min_seconds=0.1, max_seconds=max_seconds)
            best[n] = min(best.get(n, math.inf), median)
    return best


def latency_sweep(
    models: dict[str, nn.Module],
    lengths: Sequence[int],
    threads: Sequence[int] | None = None,
    *,
    repeats: int = 5,
    max_seconds: float = 2.0,
) -> list[LatencyPoint]:
    """Latency of every model at every length and thread count.

    For each model and length: one warm-up call (oneDNN builds its kernels for
    a new shape on the first call), then the thread counts measured side by
    side in alternating blocks (:func:`block_medians`), re-measured while other
    programs load the machine.
    """
    threads = list(threads or thread_counts())
    points = []
    inputs = {T: tokens(T) for T in lengths}  # one input per length, the same for every model
    runs = [(T, name, model) for T in lengths for name, model in models.items()]
    for T, name, model in progress(runs, desc="latency sweep", unit="model × length"):
        x = inputs[T]
        with torch.inference_mode():
            model(x)
        m = contention.measure_uncontended(  # two retries: enough for a burst, bounded if the load stays
            lambda: block_medians(model, x, threads, repeats=repeats, max_seconds=max_seconds), retries=2)
        points += [LatencyPoint(name, T, n, m.value[n], m.outside_cores, m.contended) for n in threads]
    return points


def lookup(points: Sequence[LatencyPoint], model: str, T: int, threads: int) -> LatencyPoint:
    """The point measured for ``model`` at length ``T`` and ``threads``."""
    for p in points:
        if (p.model, p.T, p.threads) == (model, T, threads):
            return p
    raise KeyError((model, T, threads))


def speedup(points: Sequence[LatencyPoint], model: str, T: int, threads: int) -> float:
    """How many times faster ``threads`` threads ran ``model`` than one thread did."""
    return lookup(points, model, T, 1).seconds / lookup(points, model, T, threads).seconds


def crossover(lengths: Sequence[float], a_seconds: Sequence[float], b_seconds: Sequence[float]) -> float | None:
    """The first length where curve ``b`` becomes faster than curve ``a`` (log-log interpolation).

    ``None`` if ``b`` is never faster; the first length if it is faster everywhere.
    """
    logs = np.log(np.asarray(lengths, float))
    gap = np.log(np.asarray(b_seconds, float)) - np.log(np.asarray(a_seconds, float))
    if gap[0] < 0:
        return float(lengths[0])
    for i in range(1, len(gap)):
        if gap[i] < 0 <= gap[i - 1]:
            frac = gap[i - 1] / (gap[i - 1] - gap[i])
            return float(np.exp(logs[i - 1] + frac * (logs[i] - logs[i - 1])))
    return None


# ---------------------------------------------------------------- generation


def generation_seconds(model: nn.Module, prompt: torch.Tensor, new_tokens: int, *, use_cache: bool,
                       threads: int = 1) -> float:
    """Seconds to greedily generate ``new_tokens`` tokens after ``prompt``, with or without the KV cache.

    Either way it is ``new_tokens`` forward passes one after another: each
    needs the token the previous one chose. One torch thread by default: the
    steps are tiny, and on a busy machine a second thread's spin-waits made
    each step up to 25 times slower.
    """
    with torch.inference_mode(), torch_threads(threads):
        start = time.perf_counter()
        seq = prompt
        out = model(seq, use_cache=use_cache)
        for _ in range(new_tokens - 1):
            nxt = out.logits[:, -1:].argmax(-1)
            if use_cache:
                out = model(nxt, cache=out.cache, use_cache=True)  # only the new token; keys/values of the rest are cached
            else:
                seq = torch.cat([seq, nxt], dim=1)
                out = model(seq, use_cache=False)
        return time.perf_counter() - start
