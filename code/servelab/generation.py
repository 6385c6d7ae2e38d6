"""Serving generative models: prefill and decode, the KV cache, paged memory, and continuous batching.

- *Prefill and decode*: stream completions one at a time through a real server and take TTFT and
  TPOT against the prompt length (:func:`prompt_sweep`).
- *The KV cache*: time one decode step with the cache and without it (recomputing the prefix), in
  process (:func:`decode_steps`); and the cache's size from a model's config (:func:`kv_bytes_per_token`).
- *Where the memory goes*: a PagedAttention-style block allocator against reservation at the
  maximum length, replayed on one trace of requests (:func:`simulate_memory`).
- *Static against continuous batching*: open-loop Poisson sweeps of requests with varied output
  lengths, and the highest rate within a TTFT and TPOT objective (:func:`sweep`, :func:`max_rate_within`).
- *A long prompt in a busy server*: the inter-token gaps of running streams when it arrives
  (:func:`long_prompt_gaps`).

The ``claim_*`` functions check the chapter's claims for its check cell.
Taught in: chapters/06_generative.ipynb.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from servelab import claims, contention, load, plots, tinyllm
from servelab.dag import LineFit, fit_line
from servelab.rate_sweep import monotone_fit
from servelab.stats import percentile

# ---------------------------------------------------------------- requests


def completion_body(prompt_tokens: int, max_tokens: int, *, seed: int = 0, model: str = "servelab-tinyllm",
                    stream: bool = True) -> bytes:
    """An OpenAI completions request (streaming by default) with a prompt of exactly ``prompt_tokens`` tokens."""
    return json.dumps({"model": model, "prompt": tinyllm.prompt(prompt_tokens, seed), "max_tokens": max_tokens,
                       "stream": stream, "temperature": 0}).encode()  # fmt: skip


def status_of(url: str, body: bytes, timeout_s: float = 30.0) -> tuple[int, dict[str, Any]]:
    """POST ``body`` to ``url`` (loopback only); the HTTP status and the JSON answer (non-streaming)."""
    import urllib.error
    import urllib.request

    load.check_loopback(url)
    request = urllib.request.Request(url, data=body, headers=load.JSON_HEADERS)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def bad_requests(max_model_len: int) -> dict[str, bytes]:
    """Requests a server must refuse: a prompt too long for its context, max_tokens 0, malformed JSON."""
    return {"prompt too long": json.dumps({"prompt": tinyllm.prompt(max_model_len + 1), "max_tokens": 4}).encode(),
            "max_tokens 0": json.dumps({"prompt": "w1 w2", "max_tokens": 0}).encode(),
            "max_tokens -3": json.dumps({"prompt": "w1 w2", "max_tokens": -3, "stream": True}).encode(),
            "malformed JSON": b'{"prompt": "w1 w2", "max_tokens": 4'}  # fmt: skip


def stream_one(url: str, body: bytes, timeout_s: float = 30.0) -> load.StreamRecord:
    """One streamed completion, sent alone; its record (``url`` is the completions endpoint)."""
    return load.streams_on_schedule(url, [0.0], [body], deadline_s=timeout_s).records[0]


# ---------------------------------------------------------------- prefill and decode


@dataclass(frozen=True)
class PromptPoint:
    """Median TTFT and TPOT of requests sent alone with one prompt length. Seconds."""

    prompt_tokens: int
    ttft_s: float
    tpot_s: float
    records: int
    contended: bool


def prompt_sweep(url: str, lengths: Sequence[int], *, repeats: int = 3, max_tokens: int = 16) -> list[PromptPoint]:
    """TTFT and TPOT against prompt length, each request alone on the server, measured again if disturbed."""
    stream_one(url, completion_body(8, 4))  # the first request pays one-off costs

    def at(length: int) -> list[load.StreamRecord]:
        return [stream_one(url, completion_body(length, max_tokens, seed=r)) for r in range(repeats)]

    points = []
    for length in lengths:
        measured = contention.measure_uncontended(lambda: at(length), retries=1, pause=0.2)
        records = measured.value
        if not all(r.ok for r in records):
            raise RuntimeError(f"a {length}-token prompt was not answered: {[r.error for r in records]}")
        points.append(PromptPoint(length, float(np.median([r.ttft for r in records])),
                                  float(np.median([r.tpot for r in records])), len(records), measured.contended))  # fmt: skip
    return points


def ttft_line(points: Sequence[PromptPoint]) -> LineFit:
    """TTFT (s) ≈ slope · prompt tokens + intercept, least squares."""
    return fit_line([p.prompt_tokens for p in points], [p.ttft_s for p in points])


# ---------------------------------------------------------------- the KV cache


@dataclass(frozen=True)
class StepPoint:
    """One decode step at ``position`` tokens of context, with the KV cache and without it. Seconds."""

    position: int
    cached_s: float
    uncached_s: float

    @property
    def ratio(self) -> float:
        return self.uncached_s / self.cached_s


def _median_seconds(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def decode_steps(model: Any, positions: Sequence[int], *, repeats: int = 5) -> list[StepPoint]:
    """Time the step that produces token ``position + 1``, in process, on torch's current threads.

    With the cache the step feeds one token and attends to ``position`` cached keys and values;
    without it, the step runs the whole prefix again (what a model without a cache must do).
    """
    import copy

    import torch

    points = []
    with torch.inference_mode():
        for n in positions:
            ids = torch.randint(3, model.config.vocab_size, (1, n + 1))
            prefix = model(ids[:, :n], use_cache=True).cache
            next_token = ids[:, n:]
            caches = [copy.deepcopy(prefix) for _ in range(repeats + 1)]  # each step appends to its cache
            cached = _median_seconds(lambda: model(next_token, cache=caches.pop(), use_cache=True), repeats)
            uncached = _median_seconds(lambda: model(ids, use_cache=False), max(1, repeats // 2 + 1))
            points.append(StepPoint(n, cached, uncached))
    return points


def generation_cost(points: Sequence[StepPoint], new_tokens: int) -> tuple[float, float]:
    """Seconds to decode ``new_tokens`` from an empty context, with and without the cache, from the step times.

    Each step is interpolated from the measured positions (linear in the position, as both are).
    """
    positions = np.arange(1, new_tokens + 1)
    xs = [p.position for p in points]
    cached = np.interp(positions, xs, [p.cached_s for p in points])
    uncached = np.interp(positions, xs, [p.uncached_s for p in points])
    return float(cached.sum()), float(uncached.sum())


#: Published configurations (their config.json): layers, KV heads, head dimension, parameters.
PUBLISHED_MODELS: dict[str, dict[str, float]] = {
    "Llama-3-8B": {"layers": 32, "kv_heads": 8, "head_dim": 128, "params": 8.03e9},
    "Llama-3-70B": {"layers": 80, "kv_heads": 8, "head_dim": 128, "params": 70.6e9},
    "Llama-2-7B (no GQA)": {"layers": 32, "kv_heads": 32, "head_dim": 128, "params": 6.74e9},
}


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, bytes_per_value: int = 2) -> int:
    """KV-cache bytes one token occupies: a key and a value, per layer, per KV head, of head_dim numbers."""
    return 2 * layers * kv_heads * head_dim * bytes_per_value


def kv_bytes_per_token_of(config: Any, bytes_per_value: int = 4) -> int:
    """:func:`kv_bytes_per_token` of a transformers config (float32 by default, as our CPU model runs)."""
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return kv_bytes_per_token(config.num_hidden_layers, kv_heads, head_dim, bytes_per_value)


def max_sequences(memory_bytes: float, weight_bytes: float, tokens: int, kv_per_token: int) -> int:
    """How many sequences of ``tokens`` fit in the memory left after the weights."""
    return max(0, int((memory_bytes - weight_bytes) // (tokens * kv_per_token)))


def kv_rows(model: Any, *, memory_bytes: float = 80e9, tokens: int = 4096) -> list[dict[str, Any]]:
    """KV bytes per token, per sequence of ``tokens``, and sequences that fit in ``memory_bytes``, for our
    model (float32) and the published ones (16-bit): one dict per model, for a table."""
    ours = (kv_bytes_per_token_of(model.config), sum(p.numel() for p in model.parameters()) * 4)
    sizes = {"tiny Llama (ours, float32)": ours}
    for name, c in PUBLISHED_MODELS.items():
        sizes[name] = (kv_bytes_per_token(int(c["layers"]), int(c["kv_heads"]), int(c["head_dim"]), 2), c["params"] * 2)
    return [{"model": name, "KV per token (KiB)": per_token / 2**10, "weights (GB)": weights / 1e9,
             f"KV of one {tokens}-token sequence (GiB)": per_token * tokens / 2**30,
             f"sequences in {memory_bytes / 1e9:.0f} GB": max_sequences(memory_bytes, weights, tokens, per_token)}
            for name, (per_token, weights) in sizes.items()]  # fmt: skip


# ---------------------------------------------------------------- where the memory goes


class PagedAllocator:
    """PagedAttention-style KV memory: fixed-size blocks, a block table per sequence, freed on completion.

    A sequence holds ``ceil(tokens / block_size)`` blocks, anywhere in the pool; only its last block can
    be partly empty. Kwon et al. (SOSP 2023) call this internal fragmentation, bounded by one block.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("need at least one block of at least one token")
        self.block_size = block_size
        self.free_blocks: list[int] = list(range(num_blocks - 1, -1, -1))  # a stack: any free block will do
        self.tables: dict[Any, list[int]] = {}
        self.lengths: dict[Any, int] = {}

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def admit(self, seq: Any, tokens: int) -> bool:
        """Give a new sequence blocks for ``tokens`` tokens (its prompt); False if they are not free."""
        need = self._blocks_for(tokens)
        if seq in self.tables:
            raise ValueError(f"sequence {seq!r} is already admitted")
        if need > len(self.free_blocks):
            return False
        self.tables[seq] = [self.free_blocks.pop() for _ in range(need)]
        self.lengths[seq] = tokens
        return True

    def grow(self, seq: Any, tokens: int = 1) -> bool:
        """Append ``tokens`` to a sequence, taking a new block only when its last one is full."""
        need = self._blocks_for(self.lengths[seq] + tokens) - len(self.tables[seq])
        if need > len(self.free_blocks):
            return False
        self.tables[seq] += [self.free_blocks.pop() for _ in range(need)]
        self.lengths[seq] += tokens
        return True

    def free(self, seq: Any) -> None:
        """Return every block of a finished sequence to the pool."""
        self.free_blocks += reversed(self.tables.pop(seq))
        del self.lengths[seq]

    def block_table(self, seq: Any) -> list[int]:
        """The physical blocks of ``seq``, in token order."""
        return list(self.tables[seq])

    @property
    def reserved_tokens(self) -> int:
        return sum(len(t) for t in self.tables.values()) * self.block_size

    @property
    def stored_tokens(self) -> int:
        return sum(self.lengths.values())


class ContiguousAllocator:
    """Reservation at the maximum length: each sequence gets ``max_len`` slots up front, as systems
    before paging did, because they cannot know how long it will grow."""

    def __init__(self, capacity_tokens: int, max_len: int) -> None:
        self.capacity, self.max_len = capacity_tokens, max_len
        self.lengths: dict[Any, int] = {}

    def admit(self, seq: Any, tokens: int) -> bool:
        if seq in self.lengths:
            raise ValueError(f"sequence {seq!r} is already admitted")
        if tokens > self.max_len or (len(self.lengths) + 1) * self.max_len > self.capacity:
            return False
        self.lengths[seq] = tokens
        return True

    def grow(self, seq: Any, tokens: int = 1) -> bool:
        if self.lengths[seq] + tokens > self.max_len:
            return False
        self.lengths[seq] += tokens
        return True

    def free(self, seq: Any) -> None:
        del self.lengths[seq]

    @property
    def reserved_tokens(self) -> int:
        return len(self.lengths) * self.max_len

    @property
    def stored_tokens(self) -> int:
        return sum(self.lengths.values())


@dataclass(frozen=True)
class TraceRequest:
    arrival_step: int
    prompt_tokens: int
    output_tokens: int


def request_trace(count: int, *, seed: int = 0, max_len: int = 1024, mean_gap_steps: float = 4.0) -> list[TraceRequest]:
    """Requests with varied lengths: prompts and outputs log-uniform from 8 tokens, within ``max_len`` together."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(mean_gap_steps, count)).astype(int)
    prompts = np.exp(rng.uniform(np.log(8), np.log(max_len // 2), count)).astype(int)
    outputs = np.exp(rng.uniform(np.log(8), np.log(max_len // 2), count)).astype(int)
    return [TraceRequest(int(a), int(p), int(o)) for a, p, o in zip(arrivals, prompts, outputs)]


@dataclass
class MemoryUse:
    """What an allocator held, step by step, while serving a trace."""

    name: str
    reserved: list[int] = field(default_factory=list)
    stored: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    finished: int = 0

    @property
    def utilization(self) -> float:
        """Fraction of reserved KV slots that held a real token, over the whole trace."""
        return sum(self.stored) / max(1, sum(self.reserved))

    @property
    def waste(self) -> float:
        return 1.0 - self.utilization

    @property
    def mean_running(self) -> float:
        return float(np.mean(self.running)) if self.running else 0.0


def simulate_memory(trace: Sequence[TraceRequest], allocator: Any, name: str, max_steps: int = 100_000) -> MemoryUse:
    """Replay ``trace``: admit arrivals first come, first served while memory allows; every step, each
    running sequence grows by one token (decode) if memory allows; a sequence is freed once its
    output is complete."""
    use = MemoryUse(name)
    waiting = sorted(range(len(trace)), key=lambda i: trace[i].arrival_step)
    produced: dict[int, int] = {}  # running sequence -> output tokens so far
    for step in range(max_steps):
        if not (waiting or produced):
            break
        while waiting and trace[waiting[0]].arrival_step <= step and allocator.admit(waiting[0], trace[waiting[0]].prompt_tokens):
            produced[waiting.pop(0)] = 0
        for seq in produced:
            if allocator.grow(seq):  # no free memory: the sequence stalls this step
                produced[seq] += 1
        use.reserved.append(allocator.reserved_tokens)
        use.stored.append(allocator.stored_tokens)
        use.running.append(len(produced))
        for seq in [s for s, n in produced.items() if n >= trace[s].output_tokens]:
            allocator.free(seq)
            del produced[seq]
            use.finished += 1
    return use


# ---------------------------------------------------------------- static against continuous batching


@dataclass(frozen=True)
class SLO:
    """A serving objective on p99 TTFT and p99 TPOT, in seconds."""

    ttft_s: float
    tpot_s: float

    def excess(self, ttft_s: float, tpot_s: float) -> float:
        """How far a point is from the objective: the larger of p99 TTFT / objective and p99 TPOT / objective."""
        return max(ttft_s / self.ttft_s, tpot_s / self.tpot_s)


@dataclass(frozen=True)
class GenPoint:
    """One open-loop run of streamed completions at one offered rate. Seconds, tokens per second."""

    engine: str
    rate: float
    sent: int
    ok: int
    errors: int
    unfinished: int
    ttft_p50_s: float
    ttft_p99_s: float
    tpot_p50_s: float
    tpot_p99_s: float
    tokens_per_s: float
    outside_cores: float
    contended: bool

    @property
    def accounted(self) -> bool:
        """Every sent request was answered, failed, or counted unfinished."""
        return self.sent == self.ok + self.errors + self.unfinished

    def meets(self, slo: SLO) -> bool:
        return self.errors == 0 and self.unfinished == 0 and slo.excess(self.ttft_p99_s, self.tpot_p99_s) <= 1


def workload(rate: float, duration_s: float, *, seed: int = 0, prompt_tokens: int = 32,
             output_tokens: tuple[int, int] = (8, 128)) -> tuple[np.ndarray, list[bytes]]:
    """Poisson send times at ``rate``/s for ``duration_s`` and their requests, output lengths uniform in the range."""
    schedule = load.poisson_schedule(rate, duration_s, seed)
    outputs = np.random.default_rng(seed + 1).integers(output_tokens[0], output_tokens[1] + 1, size=schedule.size)
    return schedule, [completion_body(prompt_tokens, int(m), seed=seed + i) for i, m in enumerate(outputs)]


def summarize_run(engine: str, rate: float, run: load.StreamRun, outside_cores: float = 0.0,
                  contended: bool = False) -> GenPoint:
    """p50 and p99 of TTFT over every sent request (inf for unanswered ones), and of TPOT over the finished."""
    ttfts = [r.ttft if r.ok else math.inf for r in run.records] or [math.inf]
    tpots = [r.tpot for r in run.records if r.ok and math.isfinite(r.tpot)]
    tpots = tpots + [math.inf] * (run.unfinished + run.errors) if tpots else [math.inf]
    return GenPoint(engine, float(rate), run.sent, run.ok, run.errors, run.unfinished, percentile(ttfts, 50),
                    percentile(ttfts, 99), percentile(tpots, 50), percentile(tpots, 99), run.tokens_per_s(),
                    outside_cores, contended)  # fmt: skip


def measure_point(url: str, engine: str, rate: float, *, duration_s: float, grace_s: float, seed: int = 0,
                  retries: int = 1, **workload_kwargs: Any) -> GenPoint:
    """One open-loop point, measured again if other programs were busy."""
    schedule, bodies = workload(rate, duration_s, seed=seed, **workload_kwargs)
    measured = contention.measure_uncontended(
        lambda: load.streams_on_schedule(url, schedule, bodies, deadline_s=duration_s + grace_s), retries=retries, pause=0.2)
    return summarize_run(engine, rate, measured.value, measured.outside_cores, measured.contended)


def sweep(url: str, engine: str, rates: Sequence[float], slo: SLO, *, stop_excess: float = 3.0,
          report: Any = None, **point_kwargs: Any) -> list[GenPoint]:
    """Measure ``rates`` upwards; stop after the first point ``stop_excess`` × past the objective or unfinished."""
    points = []
    for rate in sorted(rates):
        point = measure_point(url, engine, rate, **point_kwargs)
        points.append(point)
        if report:
            report(point)
        if point.unfinished or slo.excess(point.ttft_p99_s, point.tpot_p99_s) > stop_excess:
            break
    return points


def max_rate_within(points: Sequence[GenPoint], slo: SLO) -> float:
    """The highest offered rate whose p99 TTFT and p99 TPOT meet ``slo``, interpolated on a monotone fit.

    The excess (see :meth:`SLO.excess`) can only grow with the rate, so it is fitted as non-decreasing
    in log space and the crossing of 1 interpolated; a point with errors or unfinished requests never
    meets. 0.0 if even the lowest rate misses; the highest rate measured if none does.
    """
    ordered = sorted(points, key=lambda p: p.rate)
    if not ordered:
        raise ValueError("no points")
    never = 1e6
    excess = [slo.excess(p.ttft_p99_s, p.tpot_p99_s) if not (p.errors or p.unfinished) else never for p in ordered]
    fitted = monotone_fit([math.log(max(min(e, never), 1e-9)) for e in excess])
    for i, value in enumerate(fitted):
        if value <= 0:
            continue
        if i == 0:
            return 0.0
        if excess[i] >= never:
            return ordered[i - 1].rate
        fraction = (0 - fitted[i - 1]) / (value - fitted[i - 1])
        return ordered[i - 1].rate + fraction * (ordered[i].rate - ordered[i - 1].rate)
    return ordered[-1].rate


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if math.isfinite(seconds) else "infinite (requests left unfinished)"


def describe_sweeps(sweeps: dict[str, Sequence[GenPoint]], best: dict[str, float], slo: SLO) -> dict[str, Any]:
    """The numbers and sentences the chapter's prose shows about the two sweeps (names for glue)."""
    static_rate, continuous_rate = best["static"], best["continuous"]
    met_everywhere = continuous_rate == max(p.rate for p in sweeps["continuous"])
    last = max(sweeps["static"], key=lambda p: p.rate)
    ttft_excess, tpot_excess = last.ttft_p99_s / slo.ttft_s, last.tpot_p99_s / slo.tpot_s
    broke = "TTFT broke first" if ttft_excess >= tpot_excess else "here TPOT was the further from its objective"
    return {
        "best_static": static_rate,
        "best_continuous": continuous_rate,
        "continuous_rate_text": (f"at least {continuous_rate:.1f} (it met the objective at every rate we offered)"
                                 if met_everywhere else f"{continuous_rate:.1f}"),
        "best_ratio_text": (f"{continuous_rate / static_rate:.1f} times as many" if static_rate
                            else "static batching met the objective at no rate we tried"),
        "static_last_text": (f"At {last.rate:.1f} requests/s, the last rate its sweep reached, static batching's p99 "
                             f"TTFT was {_ms(last.ttft_p99_s)} ({ttft_excess:.1f}× its objective) and its p99 TPOT "
                             f"{_ms(last.tpot_p99_s)} ({tpot_excess:.1f}× its objective): {broke}."),
    }  # fmt: skip


def format_point(p: GenPoint) -> str:
    """One line per point, for the notebook's running log."""
    return (f"{p.engine:10s} {p.rate:5.1f}/s: {p.ok}/{p.sent} finished ({p.unfinished} unfinished, {p.errors} errors), "
            f"{p.tokens_per_s:5.0f} tokens/s, TTFT p50 {p.ttft_p50_s * 1e3:6.0f} p99 {p.ttft_p99_s * 1e3:6.0f} ms, "
            f"TPOT p50 {p.tpot_p50_s * 1e3:5.1f} p99 {p.tpot_p99_s * 1e3:5.1f} ms, outside load {p.outside_cores:.2f}"
            + (" (contended)" if p.contended else ""))  # fmt: skip


# ---------------------------------------------------------------- a long prompt in a busy server


@dataclass
class LongPromptRun:
    """Running streams, and a long prompt sent while they run. Times in seconds from the first send."""

    budget_tokens: int
    arrival_s: float
    run: load.StreamRun
    long_index: int

    def background_gaps(self) -> tuple[np.ndarray, np.ndarray]:
        """(when, gap) of every inter-token gap of the running streams: the gap ends at ``when``."""
        whens, gaps = [], []
        for i, r in enumerate(self.run.records):
            if i != self.long_index and len(r.token_times) > 1:
                times = r.scheduled_s + np.asarray(r.token_times)
                whens.append(times[1:])
                gaps.append(np.diff(times))
        return (np.concatenate(whens), np.concatenate(gaps)) if whens else (np.array([]), np.array([]))

    @property
    def long_ttft_s(self) -> float:
        return self.run.records[self.long_index].ttft

    def worst_gap_s(self) -> float:
        """The longest gap of a running stream while the long prompt was prefilled."""
        whens, gaps = self.background_gaps()
        window = (whens > self.arrival_s) & (whens <= self.arrival_s + self.long_ttft_s + 0.05)
        return float(gaps[window].max()) if window.any() else 0.0

    def typical_gap_s(self) -> float:
        """The median gap before the long prompt arrived."""
        whens, gaps = self.background_gaps()
        before = gaps[whens < self.arrival_s]
        return float(np.median(before)) if before.size else math.nan


def long_prompt_gaps(url: str, *, budget_tokens: int, streams: int = 4, stream_tokens: int = 64,
                     long_tokens: int = 1024, arrival_s: float = 0.4) -> LongPromptRun:
    """``streams`` short-prompt requests decode; at ``arrival_s`` a ``long_tokens`` prompt arrives."""
    schedule = [0.01 * i for i in range(streams)] + [arrival_s]
    bodies = [completion_body(16, stream_tokens, seed=i) for i in range(streams)]
    bodies.append(completion_body(long_tokens, 4, seed=99))
    run = load.streams_on_schedule(url, schedule, bodies, deadline_s=15.0)
    return LongPromptRun(budget_tokens, arrival_s, run, streams)


# ---------------------------------------------------------------- figures


def plot_prompt_sweep(points: Sequence[PromptPoint], fit: LineFit) -> "plots.Figure":
    """TTFT and TPOT against prompt length, requests alone on the server."""
    fig, (ax1, ax2) = plots.figure(ncols=2)
    xs = [p.prompt_tokens for p in points]
    ax1.plot(xs, [p.ttft_s * 1e3 for p in points], "o-", color=plots.COLORS["bert"], label="measured (median)")
    ax1.plot(xs, [fit(x) * 1e3 for x in xs], "--", color=plots.COLORS["predicted"], lw=1,
             label=f"line: {fit.slope * 1e6:.0f} µs/token + {fit.intercept * 1e3:.0f} ms")
    ax2.plot(xs, [p.tpot_s * 1e3 for p in points], "o-", color=plots.COLORS["rnn"])
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_ylim(bottom=0)
    ax1.legend(fontsize=8)
    plots.label(ax1, "prompt length (tokens)", "time to first token (ms)", "Prefill: grows with the prompt")
    plots.label(ax2, "prompt length (tokens)", "time per output token (ms)", "Decode: grows far less")
    return plots.caption(fig, "Each request alone on the continuous-batching server, streamed; torch at 1 thread.")


def plot_decode_steps(points: Sequence[StepPoint], totals: tuple[float, float], new_tokens: int) -> "plots.Figure":
    """One decode step against position, with and without the KV cache; and the whole generation's cost."""
    fig, (ax1, ax2) = plots.figure(ncols=2)
    xs = [p.position for p in points]
    ax1.plot(xs, [p.uncached_s * 1e3 for p in points], "o-", color=plots.COLORS["processes"], label="no cache: whole prefix again")
    ax1.plot(xs, [p.cached_s * 1e3 for p in points], "o-", color=plots.COLORS["threads"], label="KV cache: one new token")
    ax1.set(xscale="log", yscale="log")
    ax1.set_xticks(xs, [str(x) for x in xs])
    ax1.legend(fontsize=8)
    plots.label(ax1, "position (tokens already in the context)", "one decode step (ms, median)", "Per step")
    bars = ax2.bar(["KV cache", "no cache"], totals, color=[plots.COLORS["threads"], plots.COLORS["processes"]])
    ax2.bar_label(bars, fmt="%.2f s")
    plots.label(ax2, "", f"decoding {new_tokens} tokens (s)", "The whole generation")
    return plots.caption(fig, "In process, tiny Llama, float32, torch at 1 thread. Right: the sum of the interpolated "
                         "step times from an empty context.")


def plot_memory(uses: Sequence[MemoryUse]) -> "plots.Figure":
    """Reserved against stored KV slots over the trace, per allocator."""
    fig, axes = plots.figure(ncols=len(uses), sharey=True)
    for ax, use in zip(np.atleast_1d(axes), uses):
        steps = np.arange(len(use.reserved))
        ax.fill_between(steps, use.reserved, color="#dddddd", label="reserved, empty")
        ax.fill_between(steps, use.stored, color=plots.COLORS["bert"], label="holding a token")
        ax.legend(fontsize=8, loc="upper right")
        plots.label(ax, "decode step", "KV slots (tokens)", f"{use.name}: {100 * use.waste:.0f}% wasted")
    return plots.caption(fig, "The same trace of requests replayed on each allocator, memory unlimited; a slot holds one "
                         "token's keys and values for every layer.")


def plot_sweeps(points: dict[str, Sequence[GenPoint]], slo: SLO, best: dict[str, float]) -> "plots.Figure":
    """Output tokens/s against p99 TTFT and p99 TPOT, one line per engine, labelled with the offered rate."""
    colors = {"static": plots.COLORS["unbatched"], "continuous": plots.COLORS["batched"]}
    fig, (ax1, ax2) = plots.figure(ncols=2, sharey=True)
    ceiling = 20 * slo.ttft_s * 1e3, 20 * slo.tpot_s * 1e3
    for engine, pts in points.items():
        pts = sorted(pts, key=lambda p: p.rate)
        label = f"{engine}: ≤ {best[engine]:.1f} requests/s within the objective"
        for ax, key, top in ((ax1, "ttft_p99_s", ceiling[0]), (ax2, "tpot_p99_s", ceiling[1])):
            xs = [min(getattr(p, key) * 1e3, top) for p in pts]
            plots.line_with_contended(ax, xs, [p.tokens_per_s for p in pts], [p.contended for p in pts],
                                      color=colors.get(engine, "k"), label=label)  # fmt: skip
            for x, p in zip(xs, pts):
                ax.annotate(f"{p.rate:g}/s", (x, p.tokens_per_s), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax1.axvline(slo.ttft_s * 1e3, color=plots.COLORS["p99"], lw=1, label=f"objective: p99 TTFT ≤ {slo.ttft_s * 1e3:g} ms")
    ax2.axvline(slo.tpot_s * 1e3, color=plots.COLORS["p99"], lw=1, label=f"objective: p99 TPOT ≤ {slo.tpot_s * 1e3:g} ms")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        plots.plain_log_axis(ax.xaxis)
        ax.legend(fontsize=7, loc="best")
    plots.label(ax1, "p99 time to first token (ms)", "output tokens per second", "Throughput against TTFT")
    plots.label(ax2, "p99 time per output token (ms)", "", "Throughput against TPOT")
    every = [p for pts in points.values() for p in pts]
    return plots.caption(fig, "Open-loop Poisson arrivals, labels: offered rate. Points at the right edge had a p99 "
                         "beyond it or left requests unfinished. " + plots.contended_note(every))


def plot_long_prompt(runs: Sequence[LongPromptRun]) -> "plots.Figure":
    """Inter-token gaps of the running streams against time, the long prompt's arrival marked."""
    fig, axes = plots.figure(ncols=len(runs), sharey=True)
    for ax, run in zip(np.atleast_1d(axes), runs):
        whens, gaps = run.background_gaps()
        ax.plot(whens * 1e3, gaps * 1e3, ".", ms=4, color=plots.COLORS["batched"], label="gap of a running stream")
        ax.axvline(run.arrival_s * 1e3, color=plots.COLORS["p99"], lw=1, label="long prompt arrives")
        ax.axvline((run.arrival_s + run.long_ttft_s) * 1e3, color=plots.COLORS["p99"], lw=1, ls="--",
                   label="its first token")
        ax.legend(fontsize=7)
        plots.label(ax, "time since the first request (ms)", "inter-token gap (ms)",
                    f"Step budget {run.budget_tokens} tokens: worst gap {run.worst_gap_s() * 1e3:.0f} ms")
    return plots.caption(fig, "Short-prompt streams decoding when a long prompt arrives, on the continuous-batching "
                         "server. Left: the whole prompt in one step; right: prefill in chunks (chunked prefill).")


# ---------------------------------------------------------------- claims (chapter 6's check cell)


def claim_ttft_grows(points: Sequence[PromptPoint], factor: float = 2.0) -> claims.Claim:
    """TTFT at the longest prompt is at least ``factor`` × TTFT at the shortest."""
    first, last = points[0], points[-1]
    ratio = last.ttft_s / first.ttft_s
    return _skip_if_disturbed(claims.at_least(
        "ch6.ttft_grows", f"TTFT at a {last.prompt_tokens}-token prompt is at least {factor:g}× TTFT at {first.prompt_tokens}.",
        ratio, factor, fail=f"TTFT went from {first.ttft_s * 1e3:.1f} ms to {last.ttft_s * 1e3:.1f} ms only ({ratio:.2f}×): "
        "prefill should grow with the prompt"), first.contended or last.contended)


def claim_tpot_flat(points: Sequence[PromptPoint], most: float = 4.0) -> claims.Claim:
    """TPOT changes far less than TTFT between the shortest and the longest prompt: its ratio is at most a
    quarter of TTFT's, and at most ``most``."""
    first, last = points[0], points[-1]
    ttft_ratio, tpot_ratio = last.ttft_s / first.ttft_s, last.tpot_s / first.tpot_s
    bound = min(most, ttft_ratio / 4)
    claim = claims.at_most(
        "ch6.tpot_flat", f"TPOT grows far less with the prompt than TTFT (at most a quarter of TTFT's ratio, and {most:g}×).",
        tpot_ratio, bound, fail=f"TPOT grew {tpot_ratio:.2f}× while TTFT grew {ttft_ratio:.2f}×: decoding should barely "
        "notice the prompt's length")
    return _skip_if_disturbed(claim, first.contended or last.contended)


def _skip_if_disturbed(claim: claims.Claim, contended: bool) -> claims.Claim:
    """A claim that failed on points other programs disturbed (even after a retry) is skipped, not failed."""
    if claim.held or not contended:
        return claim
    return claims.skipped(claim.id, claim.sentence, kind="contended", measured=claim.measured, bound=claim.bound,
                          reason=f"other programs took CPU while it was measured; unchecked: {claim.message}")


def claim_cache_margin_grows(points: Sequence[StepPoint], at_least_last: float = 2.0) -> claims.Claim:
    """The uncached step's cost over the cached one grows with position, to at least ``at_least_last``×."""
    ratios = [p.ratio for p in points]
    ok = ratios[-1] >= at_least_last and ratios[-1] > ratios[0]
    return claims.condition(
        "ch6.cache_margin_grows", "Cached decode steps beat uncached ones by a margin that grows with position.", ok,
        measured=f"{ratios[0]:.1f}× → {ratios[-1]:.1f}×", bound=f"grows, ≥ {at_least_last:g}× at the end",
        fail=f"uncached/cached step time went {', '.join(f'{r:.1f}×' for r in ratios)} over positions "
        f"{[p.position for p in points]}: it should grow, to at least {at_least_last:g}×")


def claim_paged_wastes_less(paged: MemoryUse, contiguous: MemoryUse, factor: float = 4.0) -> claims.Claim:
    """Paged allocation wastes at most 1/``factor`` of what reservation at the maximum length wastes."""
    ratio = paged.waste / contiguous.waste if contiguous.waste else math.inf
    return claims.at_most(
        "ch6.paged_wastes_less", f"On the same trace, paging wastes at most 1/{factor:g} of the KV memory that "
        "reservation at the maximum length wastes.", ratio, 1 / factor,
        fail=f"paged waste {100 * paged.waste:.1f}% against {100 * contiguous.waste:.1f}% contiguous")


def claim_continuous_beats_static(static_rate: float, continuous_rate: float, *, contended: bool,
                                  factor: float = 1.2) -> claims.Claim:
    """Continuous batching sustains at least ``factor`` × static batching's rate within the objective."""
    sentence = f"Continuous batching sustains at least {factor:g}× static batching's rate within the objective."
    ratio = continuous_rate / static_rate if static_rate > 0 else (math.inf if continuous_rate > 0 else 0.0)
    if contended:
        return claims.skipped("ch6.continuous_beats_static", sentence, kind="contended",
                              reason="other programs took CPU during the sweeps", measured=claims.fmt(ratio))
    return claims.condition(
        "ch6.continuous_beats_static", sentence, ratio >= factor, measured=f"{continuous_rate:.1f} vs {static_rate:.1f}/s",
        bound=f"≥ {factor:g}×", fail=f"continuous {continuous_rate:.1f}/s against static {static_rate:.1f}/s within the "
        f"objective ({ratio:.2f}×)")


def claim_chunked_prefill_smooths(whole: LongPromptRun, chunked: LongPromptRun, factor: float = 1.5) -> claims.Claim:
    """With a small step budget, the worst gap of running streams is ``factor`` × shorter than with the whole prompt."""
    ratio = whole.worst_gap_s() / chunked.worst_gap_s() if chunked.worst_gap_s() else math.inf
    return claims.at_least(
        "ch6.chunked_prefill_smooths", "Chunked prefill shortens the worst stall a long prompt causes to running streams.",
        ratio, factor, fail=f"worst gap {whole.worst_gap_s() * 1e3:.0f} ms with the whole prompt in one step against "
        f"{chunked.worst_gap_s() * 1e3:.0f} ms in chunks")


def claim_every_request_counted(points: Sequence[GenPoint], extra_runs: Sequence[load.StreamRun] = ()) -> claims.Claim:
    """Every sent request was answered, failed, or counted unfinished; and the runs outside sweeps all finished."""
    lost = sum(p.sent - p.ok - p.errors - p.unfinished for p in points)
    extra_bad = sum(r.sent - r.ok for r in extra_runs)
    total = sum(p.sent for p in points) + sum(r.sent for r in extra_runs)
    return claims.condition(
        "ch6.every_request_counted", "Every request was answered or counted.", lost == 0 and extra_bad == 0,
        measured=f"{total} sent, {lost} lost", bound="0 lost",
        fail=f"{lost} requests of the sweeps were neither answered nor counted, and {extra_bad} outside them failed")


def claim_bad_requests_refused(statuses: dict[str, int], still_serving: bool) -> claims.Claim:
    """Bad requests get a 4xx, and the server keeps serving."""
    ok = all(400 <= s < 500 for s in statuses.values()) and still_serving
    return claims.condition(
        "ch6.bad_requests_refused", "Bad requests get a 4xx JSON error, and the server keeps serving.", ok,
        measured=", ".join(f"{k}: {v}" for k, v in statuses.items()), bound="4xx each, then 200",
        fail=f"statuses {statuses}, served afterwards: {still_serving}")
