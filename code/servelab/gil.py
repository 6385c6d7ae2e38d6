"""Threads or processes? Server set-ups measured side by side on this CPU.

A *set-up* is one way to run the same Flask app under gunicorn: one worker,
N worker processes, N processes forked after loading the model
(``--preload``), or one process with N threads. For each running set-up we
measure, one server at a time:

- throughput, latency and the cores of the whole server tree under closed-loop
  load (:func:`measure_interleaved`, built on :mod:`servelab.load`'s one closed-loop measurement),
- the tree's memory: RSS, PSS and USS, summed over all its processes and
  over the workers alone (:func:`servelab.memory.measure_memory`).

:func:`measure_setup` does all of this for one set-up and stops its server,
even when a measurement fails.
Taught in: chapters/02_gil.ipynb.
"""

from __future__ import annotations

import dataclasses
import contextlib
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, TypeVar

from servelab import load, memory, plots, servers
from servelab.load import ClosedLoopPoint, predict_body
from servelab.memory import MemorySnapshot, measure_memory, profiler_memory_mib
from servelab.progress import progress

MiB = memory.MiB
T = TypeVar("T")
#: Iterations of pure-Python work in the app's ``/pyloop`` handler; every set-up passes it to its server.
PYLOOP_ITERS = 150_000


@dataclass(frozen=True)
class Setup:
    """One way to run the app: gunicorn workers × threads, preload or not, torch threads, extra env.

    ``kind`` names the concept for colours and prose: ``single``, ``threads``,
    ``processes`` or ``preload``.
    """

    label: str
    kind: str
    workers: int = 1
    threads: int = 1
    preload: bool = False
    gc_freeze: bool = False
    torch_threads: int | str = 1
    app: str = "servelab.apps.predict:app"
    env: Mapping[str, str] = field(default_factory=dict)

    def start(self, wait: bool = True) -> servers.Server:
        """Start this set-up's server and wait until every worker is ready (a context manager).

        ``wait=False`` returns at once (see :func:`servelab.servers.gunicorn`).
        """
        env = {**self.env, "SERVELAB_PYLOOP_ITERS": str(PYLOOP_ITERS)}  # calibrate_mixed_work relies on it
        return servers.gunicorn(self.app, workers=self.workers, threads=self.threads, preload=self.preload,
                                gc_freeze=self.gc_freeze, torch_threads=self.torch_threads, env=env, wait=wait)

    def with_(self, label: str, **changes: object) -> "Setup":
        """A copy with some settings changed (``env`` entries are added to the existing ones)."""
        env = {**self.env, **changes.pop("env", {})}  # type: ignore[dict-item]
        return dataclasses.replace(self, label=label, env=env, **changes)


def standard_setups(n: int, env: Mapping[str, str] | None = None) -> dict[str, Setup]:
    """The chapter's four set-ups for ``n`` cores: 1 worker, n threads, n processes, n preloaded processes."""
    env = dict(env or {})
    return {
        "single": Setup("1 worker", "single", env=env),
        "threads": Setup(f"1 process × {n} threads", "threads", threads=n, env=env),
        "processes": Setup(f"{n} processes", "processes", workers=n, env=env),
        "preload": Setup(f"{n} processes, --preload", "preload", workers=n, preload=True, env=env),
    }


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class LoadSpec:
    """What to send: ``path`` at ``concurrency`` (``/predict``: ``batch`` rows, ``python_work`` iterations)."""

    path: str = "/predict"
    concurrency: int = 1
    python_work: int = 0
    batch: int = 1


def measure_interleaved(running: Mapping[str, servers.Server], spec: LoadSpec, *, duration_s: float = 1.0,
                        warmup_s: float = 0.3, rounds: int = 2, retries: int = 2,
                        show_progress: bool = True) -> dict[str, ClosedLoopPoint]:
    """The same load on several running servers, alternating in ``rounds`` short runs, by label.

    See :func:`servelab.load.measure_closed_interleaved`: a machine that is faster for a few
    seconds favours every server alike, so their ratio is steadier than from runs far apart.
    """
    return load.measure_closed_interleaved(
        running, spec.concurrency, path=spec.path, batch=spec.batch, python_work=spec.python_work,
        duration_s=duration_s, warmup_s=warmup_s, rounds=rounds, retries=retries,
        desc=f"{spec.path} at concurrency {spec.concurrency}" if show_progress else None)


# --------------------------------------------------------------------------- memory


def predicted_pss_mib(shared_mib: float, private_mib_per_worker: float, workers: int, master_mib: float = 0.0) -> float:
    """PSS of ``workers`` forked workers: shared pages count once, private ones once per worker."""
    return master_mib + shared_mib + workers * private_mib_per_worker


# --------------------------------------------------------------------------- a whole set-up


@dataclass
class MixedWork:
    """How many pure-Python iterations make a handler's Python share ``share`` of its time.

    Calibrated on a running server from sequential requests: the time of
    ``/pyloop`` and ``/predict`` minus that of ``/health`` (the HTTP and
    Flask overhead they all pay).
    """

    seconds_per_iteration: float
    torch_seconds: float
    iterations: dict[float, int]  # share -> python_work iterations

    def python_seconds(self, share: float) -> float:
        """Seconds of pure-Python work per request at ``share``."""
        return self.iterations[share] * self.seconds_per_iteration


def _median_seconds(url: str, body: bytes | None, n: int) -> float:
    times = []
    for _ in range(n):
        req = urllib.request.Request(url, data=body, headers=load.JSON_HEADERS if body else {})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def calibrate_mixed_work(server: servers.Server, shares: Sequence[float], requests: int = 9) -> MixedWork:
    """Choose ``python_work`` iterations so that Python takes each share of a /predict handler's time."""
    if not all(0 < s < 1 for s in shares):
        raise ValueError(f"shares must lie strictly between 0 and 1, got {list(shares)}")
    _median_seconds(server.url + "/predict", predict_body(), 2)  # warm-up
    overhead = _median_seconds(server.url + "/health", None, requests)
    per_iteration = max(_median_seconds(server.url + "/pyloop", None, requests) - overhead, 1e-6) / PYLOOP_ITERS
    torch_s = max(_median_seconds(server.url + "/predict", predict_body(), requests) - overhead, 1e-6)
    iterations = {s: round(s / (1 - s) * torch_s / per_iteration) for s in shares}
    return MixedWork(per_iteration, torch_s, iterations)


@dataclass
class SetupResult:
    """Everything measured on one running set-up."""

    setup: Setup
    points: list[ClosedLoopPoint]
    memory: MemorySnapshot | None  # None when measured with read_memory=False
    profiler_mib: dict[str, float] | None = None
    mixed: MixedWork | None = None

    def point(self, path: str = "/predict", concurrency: int | None = None, python_work: int = 0,
              batch: int = 1) -> ClosedLoopPoint:
        """The load point at ``path``/``concurrency``/``python_work``/``batch`` (the highest concurrency if None)."""
        found = [p for p in self.points if p.path == path and p.python_work == python_work
                 and (p.batch == batch or path != "/predict")
                 and (concurrency is None or p.concurrency == concurrency)]  # fmt: skip
        if not found:
            raise KeyError(f"{self.setup.label}: no point at {path}, concurrency {concurrency}, "
                           f"python_work {python_work}, batch {batch}")
        return max(found, key=lambda p: p.concurrency)


def _warm_up(server: servers.Server, concurrency: int, duration_s: float) -> None:
    """A burst of predictions at ``concurrency``, so every worker and thread has served requests."""
    load.closed_loop(server.url + "/predict", concurrency=concurrency, duration_s=max(duration_s, 0.1),
                     method="POST", body=load.PREDICT_BODY, headers=load.JSON_HEADERS)


def measure_setups(
    setups: Sequence[Setup],
    *,
    concurrencies: Sequence[int] = (1,),
    duration_s: float = 1.0,
    warmup_s: float = 0.3,
    rounds: int = 1,
    pyloop_concurrency: int | None = None,
    mixed_shares: Sequence[float] = (),
    mixed: MixedWork | None = None,
    mixed_concurrency: int | None = None,
    batch_points: Sequence[tuple[int, int]] = (),
    profiler: Sequence[str] = (),
    retries: int = 2,
    read_memory: bool = True,
) -> list[SetupResult]:
    """Measure one or two set-ups side by side; every server is stopped at the end, also on errors.

    Load points: ``/pyloop`` at ``pyloop_concurrency`` if given; ``/predict``
    at each of ``concurrencies``; mixed handlers (Python share of the
    handler's time in ``mixed_shares``, calibrated on the first set-up unless
    ``mixed`` is given) at ``mixed_concurrency``; bigger ``/predict`` batches
    at each ``(batch, concurrency)`` of ``batch_points``. With two set-ups both
    servers run, only one gets load at a time, and each point is taken in
    ``rounds`` alternating runs (:func:`measure_interleaved`).

    Memory (and ``memory_profiler``'s view of it for the set-ups labelled in
    ``profiler``) is read
    while a server runs alone, after it has served a burst at the highest
    concurrency: PSS splits shared-library pages among every process that
    maps them, so a neighbour would lower it. The first server is read before
    the second starts, the second after the first has stopped. With
    ``read_memory=False`` there are no memory readings (``memory`` is None),
    so both servers start at once: start-ups overlap, measurements never do.
    """
    if not 1 <= len(setups) <= 2 or len({s.label for s in setups}) != len(setups):
        raise ValueError("measure one set-up, or two with distinct labels, at a time")
    specs = ([LoadSpec("/pyloop", pyloop_concurrency)] if pyloop_concurrency else []) + [
        LoadSpec("/predict", c) for c in concurrencies] + [LoadSpec("/predict", c, batch=b) for b, c in batch_points]
    burst = max([*concurrencies, *(c for _, c in batch_points), 1])
    memories: dict[str, MemorySnapshot] = {}
    profiles: dict[str, dict[str, float] | None] = {}

    def read_memory_of(setup: Setup, server: servers.Server) -> None:
        memories[setup.label] = measure_memory(server, setup.label)
        profiles[setup.label] = profiler_memory_mib(server) if setup.label in profiler else None

    stopped: list[servers.Server] = []

    def stop_once(server: servers.Server) -> None:  # stopping twice could signal a reused process group
        if all(s is not server for s in stopped):
            stopped.append(server)
            server.stop()

    with contextlib.ExitStack() as stack:
        running: dict[str, servers.Server] = {}
        # Registered first, so it also runs when a start fails: every server started so far stops.
        stack.callback(lambda: in_parallel([lambda s=s: stop_once(s) for s in running.values()]))
        if read_memory:
            for setup in setups:
                running[setup.label] = server = setup.start()
                _warm_up(server, burst, warmup_s)
                if len(running) == 1:
                    read_memory_of(setup, server)
        else:
            running.update(start_together(setups))
            for server in running.values():
                _warm_up(server, burst, warmup_s)
        if mixed_shares and mixed is None:
            mixed = calibrate_mixed_work(running[setups[0].label], mixed_shares)
        specs += [LoadSpec("/predict", mixed_concurrency or max(concurrencies), python_work=mixed.iterations[share])
                  for share in mixed_shares]  # type: ignore[union-attr]
        points: dict[str, list[ClosedLoopPoint]] = {label: [] for label in running}
        for spec in progress(specs, desc=f"load on {', '.join(running)}", unit="point"):
            measured = measure_interleaved(running, spec, duration_s=duration_s, warmup_s=warmup_s, rounds=rounds,
                                           retries=retries, show_progress=False)  # one bar: this loop's
            for label, point in measured.items():
                points[label].append(point)
        if len(setups) == 2 and read_memory:
            stop_once(running[setups[0].label])
            read_memory_of(setups[1], running[setups[1].label])
    return [SetupResult(s, points[s.label], memories.get(s.label), profiles.get(s.label), mixed) for s in setups]


def in_parallel(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run ``calls`` at once, in threads; their results in order. The first error is raised after all ended."""
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        futures = [pool.submit(call) for call in calls]
    for future in futures:
        if future.exception() is not None:
            raise future.exception()  # type: ignore[misc]
    return [future.result() for future in futures]


def start_together(setups: Sequence[Setup]) -> dict[str, servers.Server]:
    """Start every set-up at once (their start-ups overlap), then wait for all; by label.

    On an error, the others stop; the one that failed is handled as by :meth:`Setup.start`.
    Started from this thread, not a pool: a server's guard dies with the thread that started it.
    """
    started: dict[str, servers.Server] = {}
    waiting: servers.Server | None = None  # the one whose wait_ready raised, if any
    try:
        for setup in setups:
            started[setup.label] = setup.start(wait=False)
        for waiting in started.values():
            waiting.wait_ready()
    except BaseException:
        in_parallel([server.stop for server in started.values() if server is not waiting])
        raise
    return started


def measure_setup(setup: Setup, **kwargs: object) -> SetupResult:
    """Start one set-up, measure it (see :func:`measure_setups` for the options), stop it."""
    return measure_setups([setup], **kwargs)[0]  # type: ignore[arg-type]


def memory_of(setup: Setup, requests: int = 3) -> MemorySnapshot:
    """Start ``setup``, send a few predictions (so workers run their request path), measure memory, stop."""
    with setup.start() as server:
        for _ in range(requests):
            _median_seconds(server.url + "/predict", predict_body(), 1)
        return measure_memory(server, setup.label)


# --------------------------------------------------------------------------- presentation


def profiler_comparison(result: SetupResult) -> list[dict[str, object]]:
    """memory_profiler's three backends next to psutil's sums over the same tree (MiB)."""
    if result.profiler_mib is None:
        raise ValueError(f"{result.setup.label} was measured without memory_profiler (see measure_setups)")
    ours = {"psutil": "rss", "psutil_pss": "pss", "psutil_uss": "uss"}
    return [
        {"memory_profiler backend": backend, "measures": kind.upper(),
         "memory_profiler MiB": round(mib, 1), "psutil summed MiB": round(result.memory.total_mib(kind), 1),
         "difference %": round(100 * (mib / result.memory.total_mib(kind) - 1), 1)}
        for backend, kind in ours.items() for mib in [result.profiler_mib[backend]]
    ]  # fmt: skip


# --------------------------------------------------------------------------- figures (chapter 2)


def setup_color(kind: str) -> str:
    """The house colour of a standard set-up ("single" shares the neutral colour)."""
    return plots.COLORS["throughput" if kind == "single" else kind]


def plot_memory(results: Mapping[str, SetupResult], weights_mib: float) -> "plots.Figure":
    """Summed RSS, PSS and USS of each set-up's whole server tree, against one copy of the weights."""
    fig, ax = plots.figure()
    kinds = {"summed RSS": ("rss", 0.35, "//"), "PSS": ("pss", 1.0, None), "USS": ("uss", 0.65, None)}
    series = {name: [r.memory.total_mib(kind) for r in results.values()] for name, (kind, _, _) in kinds.items()}
    plots.grouped_bars(ax, [r.setup.label.replace(", ", ",\n") for r in results.values()], series,
                       [setup_color(k) for k in results], alphas=[a for _, a, _ in kinds.values()],
                       hatches=[h for _, _, h in kinds.values()], color_by_group=True, fontsize=7.5)
    ax.axhline(weights_mib, ls=":", color=plots.COLORS["predicted"], lw=1)
    ax.text(len(results) - 0.5, weights_mib, "one copy of the weights", ha="right", va="bottom", fontsize=8)
    ax.legend(loc="upper left")
    plots.label(ax, "set-up", "memory of the whole server tree (MiB)", "RSS, PSS and USS, summed over the tree's processes")
    plots.caption(fig, "Bars left to right: summed RSS (hatched), PSS (solid), USS (light). Read after a burst "
                       "of requests, with no other server running; the tree includes gunicorn's master.")
    return fig


def plot_predict(results: Mapping[str, SetupResult], levels: Sequence[int], note: str) -> "plots.Figure":
    """Throughput and p99 of POST /predict against concurrency, one line per set-up."""
    fig, (left, right) = plots.figure(ncols=2)
    for kind, r in results.items():
        points = [r.point("/predict", c) for c in levels]
        busy = [p.contended for p in points]
        plots.line_with_contended(left, levels, [p.throughput for p in points], busy, color=setup_color(kind),
                                  label=r.setup.label)
        plots.line_with_contended(right, levels, [1e3 * p.p99_s for p in points], busy, color=setup_color(kind))
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_ylim(bottom=0)
    left.legend(fontsize=8)
    plots.label(left, "requests in flight (concurrency)", "throughput (requests/s)", "Throughput")
    plots.label(right, "requests in flight (concurrency)", "p99 latency (ms)", "Tail latency")
    every = [r.point("/predict", c) for r in results.values() for c in levels]
    plots.caption(fig, " ".join(filter(None, [note, plots.contended_note(every)])))
    return fig


def plot_oversubscription(one: ClosedLoopPoint, default: ClosedLoopPoint, workers: int, cores: int, rows: int) -> "plots.Figure":
    """CPU per request, throughput and p50 with 1 torch thread per worker against torch's default."""
    fig, axes = plots.figure(ncols=3)
    names = ["torch: 1 thread\nper worker", f"torch default:\n{cores} per worker"]
    panels = [("CPU spent per request", "server CPU per request (ms)", [p.cpu_ms_per_request for p in (one, default)]),
              ("Throughput", "throughput (requests/s)", [p.throughput for p in (one, default)]),
              ("Median latency", "p50 latency (ms)", [1e3 * p.p50_s for p in (one, default)])]
    for ax, (title, unit, values) in zip(axes, panels):
        ax.bar_label(ax.bar(names, values, color=[plots.COLORS["preload"], plots.COLORS["processes"]]), fmt="%.0f")
        ax.margins(y=0.15)
        plots.label(ax, "", unit, title)
    plots.caption(fig, f"{workers} preloaded gunicorn workers, 256 MiB MLP, {rows} rows per request, "
                       f"{workers} requests in flight. " + plots.contended_note([one, default]))
    return fig


def plot_proxy_hop(via: Mapping[str, ClosedLoopPoint]) -> "plots.Figure":
    """Median latency of GET /health directly and through nginx."""
    fig, ax = plots.figure()
    bars = ax.bar(list(via), [1e3 * p.p50_s for p in via.values()], color=[plots.COLORS["threads"], plots.COLORS["throughput"]])
    ax.bar_label(bars, fmt="%.3f")
    plots.label(ax, "", "median latency of GET /health (ms)", "The cost of one proxy hop")
    plots.caption(fig, "Concurrency 1; 3 interleaved runs per route, latencies pooled; nginx with 1 worker and "
                       "keep-alive connections to gunicorn. " + plots.contended_note(list(via.values())))
    return fig


def describe_proxy_hop(via: Mapping[str, ClosedLoopPoint], inference_ms: float) -> str:
    """The sentence that reads the proxy hop's cost, from the numbers."""
    direct, proxied = via["direct"].p50_s, via["through nginx"].p50_s
    added_ms = 1e3 * (proxied - direct)
    return (f"nginx added {1e3 * added_ms:.0f} µs to the median request ({1e3 * direct:.2f} ms direct, "
            f"{1e3 * proxied:.2f} ms through nginx), {100 * added_ms / inference_ms:.1f}% of the "
            f"{inference_ms:.1f} ms a prediction takes")


def amdahl_bound(share: float, workers: int) -> float:
    """The most threads can reach of processes' throughput when ``share`` of a handler holds the GIL."""
    return min(1.0, 1 / (workers * share)) if share else 1.0


def plot_python_share(shares: Sequence[float], measured: Sequence[float], workers: int, torch_ms: float) -> "plots.Figure":
    """Threads ÷ processes throughput against the handler's Python share, with Amdahl's bound."""
    fig, ax = plots.figure()
    fine = [0.0] + [i / 100 for i in range(1, 101)]
    ax.plot(fine, [amdahl_bound(s, workers) for s in fine], "--", color=plots.COLORS["predicted"],
            label=f"bound: min(1, 1 / ({workers} · share))")
    ax.plot(shares, measured, "o", ms=8, color=plots.COLORS["threads"],
            label=f"measured: 1 process × {workers} threads ÷ {workers} processes")
    ax.set_ylim(0, 1.25)
    ax.legend(fontsize=8, loc="lower left")
    plots.label(ax, "share of the handler's time spent in Python (holding the GIL)", "throughput ratio, threads ÷ processes",
                "Threads scale until the Python part saturates one core")
    plots.caption(fig, f"Concurrency {workers}; share 0 = /predict, 1 = /pyloop; the middle points add pure-Python "
                       f"work to /predict (torch part {torch_ms:.1f} ms).")
    return fig


# --------------------------------------------------------------------------- claims (chapter 2's check cell)
# Each function takes numbers the chapter measured and returns a claims.Claim. The import sits here, not at
# the top, so that this section merges independently of edits to the measurement code above.

from servelab import claims  # noqa: E402


def _busiest(points: Sequence[ClosedLoopPoint]) -> float:
    return max(p.outside_cores for p in points)


def claim_load_runs_clean(points: Sequence[ClosedLoopPoint]) -> claims.Claim:
    """Every load run got answers and no errors."""
    bad = [p for p in points if p.errors or not p.completed]
    return claims.condition(
        "ch2.load_runs_no_errors", "Every load run of the chapter gets answers and no errors from its server.",
        not bad, measured=f"{len(points) - len(bad)} of {len(points)} runs clean", bound="all runs",
        fail="some load runs got errors from the server: " + str([p.row() for p in bad]))


#: The most cores threads may use on pure-Python work (:func:`claim_threads_cap_pyloop`), and so the
#: least that shows processes running in parallel when the asyncio client's turnaround idles them.
THREADS_CAP_CORES = 1.2


def claim_threads_cap_pyloop(point: ClosedLoopPoint, cap: float = THREADS_CAP_CORES) -> claims.Claim:
    """Threads of one process use at most ``cap`` cores on pure-Python work: the GIL runs one at a time."""
    return claims.at_most(
        "ch2.threads_cap_pyloop", "On pure-Python work, the threads of one process use about one core: the GIL.",
        point.server_cores, cap, unit=" cores",
        fail=f"threads used {point.server_cores:.2f} cores on pure-Python work; the GIL should cap them near 1")


def claim_processes_parallel_pyloop(point: ClosedLoopPoint, workers: int, cores: int, floor: float = 1.6) -> claims.Claim:
    """``workers`` processes use at least ``floor`` cores on pure-Python work: one interpreter each.

    A contended run is still judged when it reached the floor: other programs can only take cores
    away from the server, never lend it some, so a busy machine cannot fake this claim holding.

    Without wrk the load comes from the book's asyncio client, one Python thread that turns every
    answer into the next request while the worker that sent it waits: at one request in flight per
    worker that idles the workers (on a 2-core AMD EPYC, 1.24 and 1.64 cores, against 1.92 with wrk).
    There the floor is ``THREADS_CAP_CORES``, the threads' cap: more than one interpreter can use.
    """
    claim_id = "ch2.processes_parallel_pyloop"
    sentence = "On pure-Python work, separate worker processes run in parallel on 2 or more cores."
    if cores < 2:
        return claims.skipped(claim_id, sentence, kind="one core", reason="only 1 usable core: nothing to run beside")
    if point.tool != "wrk":
        floor = min(floor, THREADS_CAP_CORES)
    if point.contended and point.server_cores < floor:
        return claims.skipped(claim_id, sentence, kind="contended", measured=claims.fmt(point.server_cores, " cores"),
                              bound=f"≥ {claims.fmt(floor, ' cores')}",
                              reason=f"other programs took up to {point.outside_cores:.2f} cores during the /pyloop "
                                     "run, after retries, and the processes fell short")
    return claims.at_least(
        claim_id, sentence, point.server_cores, floor, unit=" cores",
        fail=f"{workers} processes used only {point.server_cores:.2f} cores on pure-Python work; separate "
             "interpreters should run in parallel on 2 or more cores")


def claim_processes_capped_on_one_core(point: ClosedLoopPoint, cap: float = 1.2) -> claims.Claim:
    """On a 1-core machine, processes cannot beat one core either (the check that replaces the one above)."""
    return claims.at_most(
        "ch2.processes_capped_one_core", "With one usable core, processes cannot use more than one core either.",
        point.server_cores, cap, unit=" cores", fail=f"{point.server_cores:.2f} cores used on a 1-core machine?")


def claim_threads_match_processes(threads: Sequence[ClosedLoopPoint], processes: Sequence[ClosedLoopPoint],
                                  ratio: float = 0.8) -> claims.Claim:
    """The threads' best /predict throughput is at least ``ratio`` × the processes' best.

    ``threads`` and ``processes`` are the /predict points at every concurrency. Other programs only
    ever slow a run down, so a contended run still decides the claim one way: contended threads runs
    can only lower the ratio (a pass stands if the processes' runs were quiet), and contended
    processes runs can only raise it (a failure stands if the threads' runs were quiet).
    """
    claim_id = "ch2.threads_match_processes_predict"
    sentence = f"On /predict, threads reach at least {ratio:g}× the processes' throughput: torch releases the GIL."
    best_threads, best_processes = max(p.throughput for p in threads), max(p.throughput for p in processes)
    measured = best_threads / best_processes
    side, runs = ("processes'", processes) if measured >= ratio else ("threads'", threads)
    if any(p.contended for p in runs):
        return claims.skipped(claim_id, sentence, kind="contended", measured=claims.fmt(measured),
                              bound=f"≥ {claims.fmt(ratio)}",
                              reason=f"other programs took up to {_busiest(runs):.2f} cores during the {side} "
                                     f"/predict runs, after retries, which could explain a ratio of {measured:.2f}×")
    return claims.at_least(
        claim_id, sentence, measured, ratio,
        fail=f"threads reached only {measured:.2f}× the processes' /predict throughput ({best_threads:.0f} against "
             f"{best_processes:.0f} requests/s); torch releases the GIL, so threads should come close")


def claim_processes_pss(pss: Mapping[str, float], workers: int, factor: float = 1.6) -> claims.Claim:
    """``workers`` plain workers take at least ``factor`` × one worker's PSS: each loads its own model."""
    return claims.at_least(
        "ch2.processes_pss_multiplies", f"{workers} plain workers take far more memory (PSS) than one: a model each.",
        pss["processes"] / pss["single"], factor,
        fail=f"{workers} plain workers took only {pss['processes'] / pss['single']:.2f}× one worker's PSS; each "
             "should hold its own model")


def claim_preload_pss(pss: Mapping[str, float], workers: int, factor: float = 1.3) -> claims.Claim:
    """``workers`` preloaded workers take at most ``factor`` × one worker's PSS: copy-on-write shares the weights."""
    return claims.at_most(
        "ch2.preload_shares_pss", f"{workers} preloaded workers take little more memory (PSS) than one.",
        pss["preload"] / pss["single"], factor,
        fail=f"{workers} preloaded workers took {pss['preload'] / pss['single']:.2f}× one worker's PSS; "
             "copy-on-write should share the weights")


def claim_threads_pss(pss: Mapping[str, float], workers: int, fraction: float = 0.75) -> claims.Claim:
    """One process with ``workers`` threads takes at most ``fraction`` of the plain workers' PSS."""
    return claims.at_most(
        "ch2.threads_save_pss",
        f"One process with {workers} threads saves at least a quarter of the plain workers' PSS.",
        pss["threads"] / pss["processes"], fraction,
        fail=f"one process with {workers} threads took {pss['threads'] / pss['processes']:.2f}× the PSS of "
             f"{workers} plain workers; sharing one model should save at least a quarter")


def claim_rss_overstates_pss(workers_rss_mib: float, workers_pss_mib: float, factor: float = 1.5) -> claims.Claim:
    """Summed RSS of preloaded workers is at least ``factor`` × their PSS: each maps the shared model."""
    return claims.at_least(
        "ch2.rss_overstates_pss", "Summing the preloaded workers' RSS overstates their memory (PSS) by 1.5× or more.",
        workers_rss_mib / workers_pss_mib, factor,
        fail=f"summed RSS of the preloaded workers was only {workers_rss_mib / workers_pss_mib:.2f}× their PSS; it "
             f"should overstate it by at least {factor:g}×, since each maps the shared model")


def claim_profiler_agrees(rows: Sequence[Mapping[str, object]], kind: str, *, share: float = 0.05,
                          floor_mib: float = 5.0) -> claims.Claim:
    """memory_profiler's ``kind`` (PSS or USS) agrees with psutil's sums within ``share`` or ``floor_mib``.

    ``rows`` are :func:`profiler_comparison`'s; memory moves a little between the two readings.
    """
    row = next(r for r in rows if r["measures"] == kind)
    ours, theirs = float(row["psutil summed MiB"]), float(row["memory_profiler MiB"])  # type: ignore[arg-type]
    allowed = max(share * ours, floor_mib)
    return claims.condition(
        f"ch2.memory_profiler_{kind.lower()}", f"memory_profiler's {kind} agrees with psutil's summed {kind}.",
        abs(theirs - ours) <= allowed, measured=f"{theirs:.1f} vs {ours:.1f} MiB", bound=f"within {allowed:.1f} MiB",
        fail=f"memory_profiler's {kind} disagrees with psutil's: {dict(row)}")


def claim_preload_stays_shared(worker_uss_mib: float, weights_mib: float, share: float = 0.25) -> claims.Claim:
    """A preloaded worker holds at most ``share`` of the weights as its own (USS)."""
    return claims.at_most(
        "ch2.preload_workers_share_weights", "Preloaded workers keep the weights shared: little memory of their own.",
        worker_uss_mib, share * weights_mib, unit=" MiB", digits=0,
        fail=f"preloaded workers hold {worker_uss_mib:.0f} MiB each of their own; the weights should stay shared")


#: The two ways chapter 2 shows a worker ending up with its own copy of the weights.
PRIVATE_COPY_CASES = {
    "write": ("ch2.write_copies_weights", "writing to the weights"),
    "lazy": ("ch2.lazy_load_copies_weights", "loading the model after the fork (no --preload)"),
}


def claim_worker_holds_copy(case: str, worker_uss_mib: float, weights_mib: float, share: float = 0.8) -> claims.Claim:
    """After ``case`` (see :data:`PRIVATE_COPY_CASES`), each worker holds at least ``share`` of the weights' size."""
    claim_id, how = PRIVATE_COPY_CASES[case]
    return claims.at_least(
        claim_id, f"After {how}, each worker holds its own copy of the weights.", worker_uss_mib,
        share * weights_mib, unit=" MiB", digits=0,
        fail=f"after {how}, each worker holds only {worker_uss_mib:.0f} MiB of its own; it should hold a private "
             f"copy of the {weights_mib:.0f} MiB of weights")


def claim_gc_collect_copies(collect_uss_mib: float, freeze_uss_mib: float, records: int,
                            extra_mib: float = 40.0) -> claims.Claim:
    """A gc.collect() after the fork copies at least ``extra_mib`` more per worker than with gc.freeze() first."""
    return claims.at_least(
        "ch2.gc_collect_copies_records", f"One gc.collect() after the fork copies the pages of {records:,} Python "
        "records into every worker; gc.freeze() first prevents it.", collect_uss_mib - freeze_uss_mib, extra_mib,
        unit=" MiB", digits=0,
        fail=f"a full collection copied only {collect_uss_mib - freeze_uss_mib:.0f} MiB more per worker than with "
             f"gc.freeze(); {records:,} records should take far more")


def claim_oversubscription_costs_cpu(one: ClosedLoopPoint, default: ClosedLoopPoint, workers: int, cores: int,
                                     factor: float = 1.2) -> claims.Claim:
    """torch's default threads (one per core, in every worker) cost at least ``factor`` × the CPU per request."""
    claim_id = "ch2.oversubscription_costs_cpu"
    sentence = "torch's default threads in every worker waste CPU: more CPU per request than 1 thread per worker."
    if cores < 2:
        return claims.skipped(claim_id, sentence, kind="one core", reason="only 1 usable core: torch starts 1 thread")
    if one.contended or default.contended:
        # Preempted threads spin longer waiting for each other, so a busy machine inflates the default's cost.
        return claims.skipped(claim_id, sentence, kind="contended",
                              reason=f"other programs took up to {_busiest([one, default]):.2f} cores during the "
                                     "runs, after retries")
    ratio = default.cpu_ms_per_request / one.cpu_ms_per_request
    return claims.at_least(
        claim_id, sentence, ratio, factor,
        fail=f"torch's default threads cost only {ratio:.2f}× the CPU per request of 1 thread per worker with all "
             f"{workers} workers busy; {workers} × {cores} threads on {cores} cores should waste more")


def _nginx_skip(claim_id: str, sentence: str, added_ms: float | None,
                via: Mapping[str, ClosedLoopPoint] | None) -> claims.Claim | None:
    if added_ms is None or not via:
        return claims.skipped(claim_id, sentence, kind="tool missing", reason="nginx is not installed here")
    if any(p.contended for p in via.values()):
        # A slower direct run would make the hop look cheaper: a busy machine is no evidence.
        return claims.skipped(claim_id, sentence, kind="contended",
                              reason=f"other programs took up to {_busiest(list(via.values())):.2f} cores during the "
                                     "nginx runs, after retries")
    return None


def claim_nginx_hop_small(added_ms: float | None, via: Mapping[str, ClosedLoopPoint] | None,
                          bound_ms: float = 0.5) -> claims.Claim:
    """nginx adds less than ``bound_ms`` to the median /health request."""
    claim_id, sentence = "ch2.nginx_hop_small", "A local nginx hop adds well under 1 ms to a request."
    skip = _nginx_skip(claim_id, sentence, added_ms, via)
    if skip:
        return skip
    return claims.condition(
        claim_id, sentence, added_ms < bound_ms, measured=f"{added_ms:.3f} ms", bound=f"< {bound_ms:g} ms",
        fail=f"nginx added {added_ms:.2f} ms to /health; a local proxy hop costs well under 1 ms")


def claim_nginx_invisible(added_ms: float | None, inference_ms: float, via: Mapping[str, ClosedLoopPoint] | None,
                          share: float = 0.05) -> claims.Claim:
    """nginx adds less than ``share`` of a prediction's time."""
    claim_id = "ch2.nginx_invisible"
    sentence = "Next to inference, the nginx hop is invisible (under 5% of a prediction)."
    skip = _nginx_skip(claim_id, sentence, added_ms, via)
    if skip:
        return skip
    return claims.condition(
        claim_id, sentence, added_ms < share * inference_ms, measured=f"{100 * added_ms / inference_ms:.1f}%",
        bound=f"< {100 * share:g}%",
        fail=f"nginx added {added_ms:.2f} ms, {100 * added_ms / inference_ms:.0f}% of a {inference_ms:.1f} ms "
             "prediction; it should be invisible next to inference")
