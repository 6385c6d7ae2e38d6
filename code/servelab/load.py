"""Load generators: closed loop (wrk or asyncio) and open loop (Poisson arrivals).

A *closed loop* keeps ``concurrency`` requests in flight: each worker sends its
next request as soon as the previous one is answered, so a slow server slows
the client down too. An *open loop* sends requests at scheduled (Poisson)
times whatever the server does, and measures latency from the scheduled time,
so queueing and client lateness are counted instead of hidden (coordinated
omission).

Every run is bounded in requests and time, with a hard wall-clock cap, and only
ever targets 127.0.0.1 / localhost / [::1].

Against a running server, :func:`measure_closed` is the book's one closed-loop
measurement: it adds the server tree's cores and the outside load to a run, and
returns a :class:`ClosedLoopPoint` (seconds in ``*_s``, CPU in ``server_cores`` and
``client_cores``). Chapters 1, 2 and 4 build on it. The request every chapter sends
lives here too: :data:`JSON_HEADERS`, :func:`predict_body` and :data:`PREDICT_BODY`.

Taught in: chapters/01_latency.ipynb (closed loop), chapters/04_batching.ipynb (open loop).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Coroutine, Mapping, Protocol, Sequence, TypeVar
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from servelab import contention, tools
from servelab.progress import progress
from servelab.stats import LatencySummary, summarize

T = TypeVar("T")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
REQUEST_TIMEOUT_S = 10.0
MIN_ANSWERS_PER_CONNECTION = 2  # fewer, and a run says nothing about latency: run_against runs longer
LONGEST_RUN_S = 8.0
#: Extra wall-clock time after the planned run before everything is cancelled / killed.
HARD_CAP_EXTRA_S = 15.0
WRK_SCRIPT = Path(__file__).with_name("wrk_report.lua")
_WRK_JSON_PREFIX = "SERVELAB_WRK_JSON "
_WRK_DONE_MARKER = "servelab-wrk: max_requests reached"


# --------------------------------------------------------------------------- the request every chapter sends

#: The headers of every JSON request the book sends.
JSON_HEADERS = {"Content-Type": "application/json"}


def predict_body(batch: int = 1, python_work: int = 0) -> bytes:
    """A /predict request body: ``batch`` synthetic rows made on the server, plus optional pure-Python work."""
    payload: dict[str, int] = {"batch": batch}
    if python_work:
        payload["python_work"] = int(python_work)
    return json.dumps(payload).encode()


#: The one-row /predict body: ``{"batch": 1}``.
PREDICT_BODY = predict_body()


# --------------------------------------------------------------------------- results


@dataclass
class LoadResult:
    """Outcome of a closed-loop run. Latencies in seconds.

    ``errors`` counts non-2xx answers (wrk: status > 399) plus socket errors and
    timeouts; ``completed`` counts answers of any status, so
    ``throughput = (completed - error answers) / duration_s``.
    Taught in: chapters/01_latency.ipynb.
    """

    latencies: np.ndarray
    completed: int
    errors: int
    succeeded: int
    duration_s: float
    client_cpu_cores: float
    tool: str
    concurrency: int

    @property
    def throughput(self) -> float:
        """Successful answers per second over the measured duration."""
        return self.succeeded / self.duration_s if self.duration_s > 0 else 0.0

    def summary(self) -> LatencySummary:
        """n, mean, p50, p95, p99 and max of the latencies (seconds)."""
        if self.latencies.size == 0:
            raise ValueError(f"no request completed ({self.errors} errors); nothing to summarize")
        return summarize(self.latencies)


@dataclass
class OpenLoopResult:
    """Outcome of an open-loop run. Latencies and send lags in seconds.

    One latency per sent request, measured from its *scheduled* send time;
    requests unfinished after ``duration + grace`` and requests that failed
    without an HTTP answer count as ``math.inf``. ``sent == answered +
    unfinished``; ``answered`` includes error answers.
    Taught in: chapters/04_batching.ipynb.
    """

    latencies: np.ndarray
    sent: int
    answered: int
    unfinished: int
    errors: int
    rate: float
    duration_s: float
    offered_rate: float
    achieved_rate: float
    send_lag: np.ndarray
    client_cpu_cores: float
    tool: str = "asyncio"

    def summary(self) -> LatencySummary:
        """n, mean, p50, p95, p99 and max of the latencies (inf for unfinished)."""
        if self.latencies.size == 0:
            raise ValueError("no request was sent; nothing to summarize")
        return summarize(self.latencies)


# --------------------------------------------------------------------------- helpers


def check_loopback(url: str) -> None:
    """Raise ValueError unless ``url`` is http(s) on 127.0.0.1, localhost or [::1].

    Taught in: chapters/01_latency.ipynb.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"load is only ever sent to 127.0.0.1/localhost/[::1], not {url!r}")


def wrk_available() -> bool:
    """True when the ``wrk`` binary is on PATH (and not hidden by ``SERVELAB_WITHOUT=wrk``).

    Taught in: chapters/01_latency.ipynb.
    """
    return tools.find("wrk") is not None


def run_coro(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion, also from inside a running loop (Jupyter).

    ``asyncio.run`` refuses to nest, so with a loop already running we run the
    coroutine on a fresh loop in a helper thread and wait for it.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="servelab-load", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def new_session(limit: int) -> aiohttp.ClientSession:
    """An aiohttp session of up to ``limit`` keep-alive connections, each request bounded by REQUEST_TIMEOUT_S."""
    connector = aiohttp.TCPConnector(limit=limit, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


async def _send(session: aiohttp.ClientSession, request: dict[str, Any]) -> int | None:
    """Send one request and read the whole body; the HTTP status, or None on a socket error."""
    try:
        async with session.request(**request) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return None


def _connection_budget(wanted: int) -> int:
    """``wanted`` connections, but leave file descriptors for everything else in the process."""
    soft_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft_limit == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft_limit - 128))


def _request_kwargs(url: str, method: str, body: bytes | None, headers: dict[str, str] | None) -> dict[str, Any]:
    return {"method": method, "url": url, "data": body, "headers": headers}


# --------------------------------------------------------------------------- closed loop, asyncio


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    completed: int = 0
    errors: int = 0
    succeeded: int = 0

    def record(self, status: int | None, latency: float) -> None:
        if status is None:
            self.errors += 1
            return
        self.completed += 1
        self.latencies.append(latency)
        if 200 <= status < 300:
            self.succeeded += 1
        else:
            self.errors += 1


async def _closed_phase(
    session: aiohttp.ClientSession, request: dict[str, Any], concurrency: int, duration_s: float, max_requests: int
) -> tuple[_Tally, float, float]:
    """One closed-loop phase; returns the tally, its wall duration and its CPU seconds."""
    tally, budget = _Tally(), [max_requests]
    cpu0, start = time.process_time(), time.perf_counter()
    deadline = start + duration_s

    async def worker() -> None:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            t0 = time.perf_counter()
            status = await _send(session, request)
            tally.record(status, time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally, time.perf_counter() - start, time.process_time() - cpu0


async def _closed_loop_asyncio(
    request: dict[str, Any], concurrency: int, duration_s: float, max_requests: int, warmup_s: float
) -> LoadResult:
    async with new_session(concurrency) as session:
        if warmup_s > 0:
            await _closed_phase(session, request, concurrency, warmup_s, max_requests)
        tally, wall, cpu = await _closed_phase(session, request, concurrency, duration_s, max_requests)
    return LoadResult(
        latencies=np.asarray(tally.latencies, dtype=float),
        completed=tally.completed,
        errors=tally.errors,
        succeeded=tally.succeeded,
        duration_s=wall,
        client_cpu_cores=cpu / wall,
        tool="asyncio",
        concurrency=concurrency,
    )


# --------------------------------------------------------------------------- closed loop, wrk


def undo_wrk_correction(histogram: dict[int, int], duration_us: int, requests: int, connections: int) -> dict[int, int]:
    """Remove the synthetic samples wrk 4.x adds to its latency histogram.

    Before calling ``done()``, wrk runs ``stats_correct(latency, interval)`` with
    ``interval = duration_us // (requests // connections)``: for every recorded
    latency ``n >= 2*interval`` it adds one fake sample at each of
    ``n - interval, n - 2*interval, ...`` while above ``interval``. So for
    ``m > interval``, ``corrected[m] = sum_k original[m + k*interval]`` and
    ``original[m] = corrected[m] - corrected[m + interval]``.
    Taught in: chapters/01_latency.ipynb.
    """
    per_connection = requests // connections
    if per_connection <= 0:
        return dict(histogram)
    interval = duration_us // per_connection
    if interval <= 0:
        return dict(histogram)
    original = {}
    for value, count in histogram.items():
        if value > interval:
            count -= histogram.get(value + interval, 0)
        if count < 0:
            raise RuntimeError("wrk latency histogram does not match wrk 4.x's correction; cannot rebuild latencies")
        if count:
            original[value] = count
    return original


def _wrk_command(url: str, concurrency: int, duration_s: float, max_requests: int, method: str,
                 body_file: str, headers: dict[str, str] | None) -> list[str]:
    # -d is only a backstop: Python ends the run with SIGINT (wrk's -d is whole seconds).
    backstop_s = math.ceil(duration_s) + 2
    header_args = [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]
    return [
        "wrk", "-t1", f"-c{concurrency}", f"-d{backstop_s}s", "--timeout", f"{int(REQUEST_TIMEOUT_S)}s",
        "-s", str(WRK_SCRIPT), *header_args, url,
        "--", str(max_requests), str(concurrency), method, body_file,
    ]  # fmt: skip


class _WrkSupervisor:
    """Ends a wrk process on time and collects its CPU use.

    wrk stops on SIGINT (its main thread sleeps for -d otherwise). We send it at
    ``duration_s``, or as soon as the Lua script reports max_requests reached,
    repeat it every 10 ms in case it arrived before wrk installed its handler,
    and SIGKILL at ``cap_s``. The child is reaped with ``wait4`` for its rusage.
    """

    def __init__(self, proc: subprocess.Popen, duration_s: float, cap_s: float) -> None:
        self.proc, self.duration_s, self.cap_s = proc, duration_s, cap_s
        self.stop_now, self.exited, self.lock = threading.Event(), threading.Event(), threading.Lock()
        self.stderr_lines: list[str] = []
        self.killed = False

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            if _WRK_DONE_MARKER in line:
                self.stop_now.set()

    def _signal(self, sig: int) -> None:
        with self.lock:  # never signal after the pid was reaped (it could be reused)
            if not self.exited.is_set():
                os.kill(self.proc.pid, sig)

    def _end_on_time(self) -> None:
        started = time.monotonic()
        self.stop_now.wait(self.duration_s)
        while not self.exited.is_set():
            if time.monotonic() - started > self.cap_s:
                self.killed = True
                self._signal(signal.SIGKILL)
                return
            self._signal(signal.SIGINT)
            self.exited.wait(0.01)

    def run(self) -> tuple[int, float]:
        """Wait for wrk to exit; its exit code and CPU seconds."""
        threads = [threading.Thread(target=f, daemon=True) for f in (self._read_stderr, self._end_on_time)]
        for t in threads:
            t.start()
        interrupted = True
        try:
            os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
            interrupted = False
        finally:
            with self.lock:
                self.exited.set()
                if interrupted:  # e.g. KeyboardInterrupt: the pid is still ours until reaped
                    os.kill(self.proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(self.proc.pid, 0)
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            for t in threads:
                t.join(timeout=2.0)
        return self.proc.returncode, usage.ru_utime + usage.ru_stime


def _parse_wrk_report(stdout: str, stderr: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith(_WRK_JSON_PREFIX):
            return json.loads(line[len(_WRK_JSON_PREFIX):])
    raise RuntimeError(f"wrk gave no report. stderr:\n{stderr[-2000:]}\nstdout:\n{stdout[-2000:]}")


def _latencies_from_histogram(histogram: dict[int, int]) -> np.ndarray:
    values = np.fromiter(histogram.keys(), dtype=float, count=len(histogram))
    counts = np.fromiter(histogram.values(), dtype=np.int64, count=len(histogram))
    return np.repeat(values, counts) / 1e6


def _wrk_result(report: dict[str, Any], cpu_s: float, concurrency: int) -> LoadResult:
    """Build a LoadResult from the Lua report: undo wrk's correction, check the counts."""
    errors, requests = report["errors"], report["requests"]
    corrected = {int(v): int(c) for v, c in report["histogram"]}
    histogram = undo_wrk_correction(corrected, report["duration_us"], requests, concurrency)
    latencies = _latencies_from_histogram(histogram)
    # wrk counts answers slower than --timeout as complete but leaves them out of the
    # histogram; like the asyncio client we count them as errors, not completions.
    completed = requests - errors["timeout"]
    if latencies.size != completed:
        raise RuntimeError(f"rebuilt {latencies.size} latencies from wrk's histogram but it completed {completed}")
    duration_s = report["duration_us"] / 1e6
    return LoadResult(
        latencies=latencies,
        completed=completed,
        errors=sum(errors.values()),
        succeeded=completed - errors["status"],
        duration_s=duration_s,
        client_cpu_cores=cpu_s / duration_s if duration_s > 0 else 0.0,
        tool="wrk",
        concurrency=concurrency,
    )


def _closed_loop_wrk(url: str, concurrency: int, duration_s: float, max_requests: int, method: str,
                     body: bytes | None, headers: dict[str, str] | None) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="servelab-wrk-") as tmp:
        body_file = ""
        if body:
            body_file = os.path.join(tmp, "body")
            Path(body_file).write_bytes(body)
        cmd = _wrk_command(url, concurrency, duration_s, max_requests, method, body_file, headers)
        stdout_path = Path(tmp, "stdout")
        with open(stdout_path, "w") as stdout:
            proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)
            supervisor = _WrkSupervisor(proc, duration_s, duration_s + HARD_CAP_EXTRA_S)
            code, cpu_s = supervisor.run()
            proc.stderr.close()
        stderr = "".join(supervisor.stderr_lines)
        if supervisor.killed:
            raise RuntimeError(f"wrk did not finish within {duration_s + HARD_CAP_EXTRA_S:.0f} s and was killed")
        report = _parse_wrk_report(stdout_path.read_text(), stderr)
        if code != 0:
            raise RuntimeError(f"wrk exited with {code}: {stderr[-2000:]}")
    return _wrk_result(report, cpu_s, concurrency)


# --------------------------------------------------------------------------- closed loop, public


def closed_loop(
    url: str,
    *,
    concurrency: int,
    duration_s: float = 3.0,
    max_requests: int = 100_000,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    warmup_s: float = 0.0,
    tool: str = "auto",
) -> LoadResult:
    """Closed-loop load: ``concurrency`` workers, each sends its next request when the last is answered.

    Stops at ``duration_s`` or after ``max_requests`` requests, whichever comes
    first; a ``warmup_s`` run first is discarded. ``tool="auto"`` uses wrk when
    installed (about 10x less client CPU than Python), else an asyncio/aiohttp
    client running in this process. ``duration_s`` in the result is the measured
    one, and throughput is computed from it, never from the requested duration.

    With wrk, every request's latency is rebuilt from wrk's exact (1 µs) latency
    histogram after undoing wrk's built-in coordinated-omission correction (see
    :func:`undo_wrk_correction`), so ``len(latencies) == completed``. wrk runs
    until up to 0.1 s past ``duration_s`` (it checks its stop flag every 100 ms;
    the measured duration includes that), and if socket errors force reconnects
    its count can miss ``max_requests`` by a few. The asyncio client finishes
    requests in flight at ``duration_s``; its CPU is this whole process's
    ``time.process_time()``, so a server running inside this process would be
    counted too.

    >>> res = closed_loop("http://127.0.0.1:8000/predict", concurrency=4, duration_s=2)
    >>> res.throughput, res.summary().p99

    Taught in: chapters/01_latency.ipynb.
    """
    check_loopback(url)
    _check_positive(concurrency=concurrency, duration_s=duration_s, max_requests=max_requests)
    if tool == "auto":
        tool = "wrk" if wrk_available() else "asyncio"
    if tool == "wrk":
        if not wrk_available():
            raise RuntimeError("tool='wrk' but wrk is not installed (apt-get install wrk)")
        if warmup_s > 0:
            _closed_loop_wrk(url, concurrency, warmup_s, max_requests, method, body, headers)
        return _closed_loop_wrk(url, concurrency, duration_s, max_requests, method, body, headers)
    if tool != "asyncio":
        raise ValueError(f"tool must be 'auto', 'wrk' or 'asyncio', not {tool!r}")
    request = _request_kwargs(url, method, body, headers)
    cap_s = warmup_s + duration_s + HARD_CAP_EXTRA_S
    return run_coro(asyncio.wait_for(_closed_loop_asyncio(request, concurrency, duration_s, max_requests, warmup_s), cap_s))


# --------------------------------------------------------------------------- closed loop against a server


class MeasuredServer(Protocol):
    """What :func:`measure_closed` needs of a server: its URL and its tree's CPU-seconds
    (:class:`servelab.servers.Server` has both)."""

    url: str

    def cpu_seconds(self) -> float: ...


@dataclass(frozen=True)
class ClosedLoopPoint:
    """Closed-loop load at one concurrency against one server: the book's one closed-loop result.

    Times in seconds (``*_s``). CPU in cores, CPU-seconds per wall second: ``server_cores`` for
    the whole server tree, ``client_cores`` for the load generator, ``outside_cores`` for other
    programs (the most any attempt saw), and ``contended`` if they stayed busy after retries.
    ``label``, ``path``, ``batch`` and ``python_work`` record what was measured. If a run completed
    no request, its latencies are infinite. Taught in: chapters/01_latency.ipynb, 02_gil, 04_batching.
    """

    concurrency: int
    throughput: float  # successful answers per second
    mean_s: float
    p50_s: float
    p95_s: float
    p99_s: float
    completed: int
    errors: int
    server_cores: float
    client_cores: float
    outside_cores: float = 0.0
    contended: bool = False
    tool: str = ""
    label: str = ""
    path: str = "/predict"
    batch: int = 1
    python_work: int = 0

    @property
    def cpu_ms_per_request(self) -> float:
        """Server CPU time per answered request, in ms."""
        return 1e3 * self.server_cores / self.throughput if self.throughput > 0 else float("nan")

    def row(self) -> dict[str, object]:
        """The point as a table row (ms and cores)."""
        return {
            "set-up": self.label, "path": self.path, "batch": self.batch if self.path == "/predict" else "",
            "concurrency": self.concurrency, "req/s": round(self.throughput, 1), "p50 ms": round(1e3 * self.p50_s, 2),
            "p99 ms": round(1e3 * self.p99_s, 2), "server cores": round(self.server_cores, 2),
            "client cores": round(self.client_cores, 2), "CPU ms/req": round(self.cpu_ms_per_request, 2),
            "other programs' cores": round(self.outside_cores, 2), "errors": self.errors,
        }  # fmt: skip


@dataclass(frozen=True)
class ServerRun:
    """One closed-loop run against a server: the load result, the server tree's CPU-seconds and wall
    seconds during it, and the outside load (after :func:`servelab.contention.measure_uncontended`)."""

    result: LoadResult
    server_cpu_s: float
    wall_s: float
    outside_cores: float
    contended: bool


def run_against(server: MeasuredServer, concurrency: int, *, path: str = "/predict", body: bytes | None = None,
                duration_s: float = 1.0, warmup_s: float = 0.3, retries: int = 2, pause: float = 0.5) -> ServerRun:
    """One closed-loop run on ``server``: POST ``body`` to ``path`` (a GET when ``body`` is None).

    A ``warmup_s`` run comes first, separately, so the server's CPU delta covers the measured run
    only. The run is repeated (up to ``retries`` times) while other programs take CPU, and run again
    4× longer (up to ``LONGEST_RUN_S``) while it answered fewer than ``MIN_ANSWERS_PER_CONNECTION``
    requests per connection: on a slow or oversubscribed machine a request can outlast a short run
    (2.4 s for a batch of 16 under torch's default threads on one 2-core AMD EPYC).
    """
    kwargs: dict[str, Any] = dict(concurrency=concurrency, method="POST" if body else "GET", body=body,
                                  headers=JSON_HEADERS if body else None)  # fmt: skip
    url = server.url + path

    def attempt() -> tuple[LoadResult, float, float]:
        if warmup_s > 0:
            closed_loop(url, duration_s=warmup_s, **kwargs)
        run_s = duration_s
        while True:  # a run too short for its slow requests to finish is run again, longer
            cpu0, t0 = server.cpu_seconds(), time.perf_counter()
            result = closed_loop(url, duration_s=run_s, **kwargs)
            if result.completed >= MIN_ANSWERS_PER_CONNECTION * concurrency or run_s >= LONGEST_RUN_S:
                return result, server.cpu_seconds() - cpu0, time.perf_counter() - t0
            run_s = min(LONGEST_RUN_S, 4 * run_s)

    measured = contention.measure_uncontended(attempt, retries=retries, pause=pause)
    result, cpu_s, wall_s = measured.value
    return ServerRun(result, cpu_s, wall_s, measured.outside_cores, measured.contended)


def pooled_point(runs: Sequence[ServerRun], **what: Any) -> ClosedLoopPoint:
    """One point from one or more runs at the same concurrency: requests and seconds add up, latencies
    are pooled. ``what`` sets ``label``, ``path``, ``batch`` and ``python_work``."""
    results = [r.result for r in runs]
    duration = sum(r.duration_s for r in results)
    latencies = np.concatenate([r.latencies for r in results])
    # A run starved by other programs may complete no request at all: its percentiles are infinite.
    s = summarize(latencies) if latencies.size else LatencySummary(0, *[math.inf] * 5)
    return ClosedLoopPoint(
        concurrency=results[0].concurrency, throughput=sum(r.succeeded for r in results) / duration,
        mean_s=s.mean, p50_s=s.p50, p95_s=s.p95, p99_s=s.p99,
        completed=sum(r.completed for r in results), errors=sum(r.errors for r in results),
        server_cores=sum(r.server_cpu_s for r in runs) / sum(r.wall_s for r in runs),
        client_cores=sum(r.client_cpu_cores * r.duration_s for r in results) / duration,
        outside_cores=max(r.outside_cores for r in runs), contended=any(r.contended for r in runs),
        tool=results[0].tool, **what,
    )  # fmt: skip


def measure_closed_interleaved(
    running: Mapping[str, MeasuredServer], concurrency: int, *, path: str = "/predict", batch: int = 1,
    python_work: int = 0, body: bytes | None = None, duration_s: float = 1.0, warmup_s: float = 0.3,
    rounds: int = 2, retries: int = 2, pause: float = 0.5, desc: str | None = None,
) -> dict[str, ClosedLoopPoint]:
    """The same closed-loop load on several running servers, one at a time, in ``rounds`` short runs each.

    Each server gets ``duration_s`` in total, taken A, B, A, B, …: a machine that is faster for a
    few seconds favours every server alike, so their ratio is steadier than from runs far apart.
    ``/predict`` gets a POST of ``body`` (default :func:`predict_body` of ``batch`` rows and
    ``python_work`` iterations), other paths a GET. ``desc`` shows a progress bar.
    """
    if body is None and path == "/predict":
        body = predict_body(batch, python_work)
    turns = [(i, label) for i in range(rounds) for label in running]
    runs: dict[str, list[ServerRun]] = {label: [] for label in running}
    for i, label in (progress(turns, desc=desc, unit="run") if desc else turns):
        runs[label].append(run_against(running[label], concurrency, path=path, body=body, duration_s=duration_s / rounds,
                                       warmup_s=warmup_s if i == 0 else 0.0, retries=retries, pause=pause))  # fmt: skip
    return {label: pooled_point(r, label=label, path=path, batch=batch, python_work=python_work)
            for label, r in runs.items()}  # fmt: skip


def measure_closed(server: MeasuredServer, concurrency: int, *, label: str = "", **options: Any) -> ClosedLoopPoint:
    """Closed-loop load at one ``concurrency`` on a running server: throughput, latency, server and
    client cores, outside load (one run; ``options`` as for :func:`measure_closed_interleaved`).

    >>> point = measure_closed(server, 4, duration_s=2)
    >>> point.throughput, point.p99_s, point.server_cores

    Taught in: chapters/01_latency.ipynb.
    """
    return measure_closed_interleaved({label: server}, concurrency, rounds=1, **options)[label]


# --------------------------------------------------------------------------- open loop


def poisson_schedule(rate: float, duration_s: float, seed: int = 0) -> np.ndarray:
    """Send times (s from start) of a Poisson process at ``rate``/s within ``duration_s``.

    At most ``rate * duration_s * 1.5 + 10`` sends, whatever the random draw.
    Taught in: chapters/04_batching.ipynb.
    """
    max_sends = int(rate * duration_s * 1.5 + 10)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=max_sends)
    times = np.cumsum(gaps)
    return times[times < duration_s]


@dataclass
class _OpenTally:
    latencies: np.ndarray
    send_lag: np.ndarray
    answered: int = 0
    errors: int = 0
    succeeded: int = 0
    last_answer_s: float = 0.0


async def _open_phase(
    session: aiohttp.ClientSession, request: dict[str, Any], schedule: np.ndarray, duration_s: float, grace_s: float
) -> tuple[_OpenTally, float, float]:
    """Send on schedule regardless of answers; wait ``grace_s`` after ``duration_s``, cancel the rest."""
    tally = _OpenTally(np.full(schedule.size, math.inf), np.full(schedule.size, math.inf))
    cpu0, start = time.process_time(), time.perf_counter()

    async def send(i: int) -> None:
        scheduled = start + schedule[i]
        tally.send_lag[i] = time.perf_counter() - scheduled
        status = await _send(session, request)
        tally.answered += 1
        tally.last_answer_s = time.perf_counter() - start
        if status is not None:  # a socket error keeps latency inf: no answer came
            tally.latencies[i] = time.perf_counter() - scheduled
        if status is not None and 200 <= status < 300:
            tally.succeeded += 1
        else:
            tally.errors += 1

    tasks = []
    for i, offset in enumerate(schedule):
        wait = start + offset - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(send(i)))
    await _wait_then_cancel(tasks, start + duration_s + grace_s - time.perf_counter())
    return tally, time.perf_counter() - start, time.process_time() - cpu0


async def _wait_then_cancel(tasks: list[asyncio.Task], timeout: float) -> None:
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, timeout))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def _open_loop_asyncio(request: dict[str, Any], rate: float, duration_s: float, grace_s: float,
                             warmup_s: float, seed: int, max_in_flight: int) -> OpenLoopResult:
    async with new_session(_connection_budget(max_in_flight)) as session:
        if warmup_s > 0:
            await _open_phase(session, request, poisson_schedule(rate, warmup_s, seed + 1), warmup_s, grace_s)
        schedule = poisson_schedule(rate, duration_s, seed)
        tally, wall_s, cpu_s = await _open_phase(session, request, schedule, duration_s, grace_s)
    sent = int(schedule.size)
    window_s = max(duration_s, tally.last_answer_s)
    return OpenLoopResult(
        latencies=tally.latencies,
        sent=sent,
        answered=tally.answered,
        unfinished=sent - tally.answered,
        errors=tally.errors,
        rate=rate,
        duration_s=duration_s,
        offered_rate=sent / duration_s,
        achieved_rate=tally.succeeded / window_s,
        send_lag=tally.send_lag,
        client_cpu_cores=cpu_s / wall_s,
    )


def open_loop(
    url: str,
    *,
    rate: float,
    duration_s: float = 3.0,
    method: str = "POST",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    grace_s: float = 1.0,
    warmup_s: float = 0.0,
    seed: int = 0,
    max_in_flight: int = 10_000,
) -> OpenLoopResult:
    """Open-loop load: Poisson arrivals at ``rate``/s for ``duration_s``, sent whatever the server does.

    Each request is sent at its scheduled time (an asyncio task per request,
    aiohttp with up to ``max_in_flight`` keep-alive connections) and its
    latency is measured from the *scheduled* time, so client lateness and
    queueing count (no coordinated omission). After ``duration_s`` the client
    waits ``grace_s``; requests still unanswered are cancelled and count as
    ``math.inf``, never dropped; so do requests that failed without an HTTP
    answer. ``send_lag`` is how late each send started (inf if it never did).
    ``max_in_flight`` is also capped by the open-file limit (minus 128); requests
    beyond it wait in the client, and that wait counts in their latency.

    ``offered_rate = sent / duration_s`` (the Poisson draw, not ``rate``);
    ``achieved_rate`` = successful answers per second from the start to the
    last answer (at least ``duration_s``), so a backlog drained during the grace
    period does not inflate it. ``client_cpu_cores`` is this process's CPU
    seconds over the run's wall time (sending plus waiting for answers).

    >>> res = open_loop("http://127.0.0.1:8000/predict", rate=50, body=b'{"x": 1}')
    >>> res.achieved_rate, res.summary().p99

    Taught in: chapters/04_batching.ipynb.
    """
    check_loopback(url)
    _check_positive(rate=rate, duration_s=duration_s, max_in_flight=max_in_flight)
    if grace_s < 0 or warmup_s < 0:
        raise ValueError("grace_s and warmup_s must be >= 0")
    request = _request_kwargs(url, method, body, headers)
    cap_s = warmup_s + duration_s + 2 * grace_s + HARD_CAP_EXTRA_S
    coro = _open_loop_asyncio(request, rate, duration_s, grace_s, warmup_s, seed, max_in_flight)
    return run_coro(asyncio.wait_for(coro, cap_s))


# --------------------------------------------------------------------------- streamed completions


@dataclass
class StreamRecord:
    """One streamed completion (OpenAI server-sent events). Times in seconds from its scheduled send.

    ``token_times`` holds the arrival of every event that carried text. The metrics follow vLLM's
    ``benchmarks/serve.py``: TTFT is the first token's arrival, ITL each gap between consecutive
    tokens, latency the last token's arrival, and TPOT = (latency − TTFT) / (output tokens − 1).
    ``status`` is the HTTP status, or None when no answer came (socket error, or still streaming
    at the deadline: then ``unfinished``). Taught in: chapters/06_generative.ipynb.
    """

    scheduled_s: float
    status: int | None = None
    token_times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    send_lag_s: float = math.inf
    unfinished: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        """Answered 200, streamed to the end, at least one token, no error event."""
        return self.status == 200 and not self.unfinished and not self.error and self.output_tokens > 0

    @property
    def ttft(self) -> float:
        """Time to first token (inf if none came)."""
        return self.token_times[0] if self.token_times else math.inf

    @property
    def latency(self) -> float:
        """Time to the last token (inf unless the stream finished)."""
        return self.token_times[-1] if self.token_times and not self.unfinished else math.inf

    @property
    def itl(self) -> np.ndarray:
        """Inter-token latencies: the gaps between consecutive tokens."""
        return np.diff(np.asarray(self.token_times, dtype=float))

    @property
    def tpot(self) -> float:
        """Time per output token after the first: (latency − TTFT) / (output tokens − 1); nan below 2 tokens."""
        if self.output_tokens < 2 or not math.isfinite(self.latency):
            return math.nan
        return (self.latency - self.ttft) / (self.output_tokens - 1)


@dataclass
class StreamRun:
    """Streamed completions sent on a schedule. ``sent == ok + errors + unfinished``.

    Taught in: chapters/06_generative.ipynb.
    """

    records: list[StreamRecord]
    duration_s: float
    wall_s: float
    client_cpu_cores: float

    @property
    def sent(self) -> int:
        return len(self.records)

    @property
    def ok(self) -> int:
        return sum(r.ok for r in self.records)

    @property
    def unfinished(self) -> int:
        return sum(r.unfinished for r in self.records)

    @property
    def errors(self) -> int:
        """Requests answered with an error (HTTP status, error event) or not at all (socket error)."""
        return sum(not r.ok and not r.unfinished for r in self.records)

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.records if r.ok)

    def tokens_per_s(self) -> float:
        """Output tokens of the finished requests per second, from the first send to the last token."""
        ends = [r.scheduled_s + r.latency for r in self.records if r.ok]
        window = max([self.duration_s, *ends]) if ends else self.duration_s
        return self.output_tokens / window if window > 0 else 0.0


def parse_sse_line(line: bytes) -> dict[str, Any] | str | None:
    """One ``data:`` line of a server-sent event stream: the JSON, ``"[DONE]"``, or None."""
    text = line.decode(errors="replace").strip()
    if not text.startswith("data:"):
        return None
    data = text[len("data:"):].strip()
    return data if data == "[DONE]" else json.loads(data)


def event_text(event: dict[str, Any]) -> str:
    choices = event.get("choices") or [{}]
    return choices[0].get("text") or (choices[0].get("delta") or {}).get("content") or ""


async def _stream_one(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
                      record: StreamRecord, scheduled: float) -> None:
    """Send one streaming request and time its tokens from ``scheduled`` (a perf_counter time)."""
    record.send_lag_s = time.perf_counter() - scheduled
    usage_tokens = None
    try:
        async with session.post(url, data=body, headers=headers) as response:
            record.status = response.status
            if response.status != 200:
                record.error = (await response.read()).decode(errors="replace")[:300]
                return
            async for line in response.content:
                event = parse_sse_line(line)
                if event is None or event == "[DONE]":
                    continue
                if "error" in event:
                    record.error = str(event["error"])[:300]
                    continue
                if event_text(event):
                    record.token_times.append(time.perf_counter() - scheduled)
                usage_tokens = (event.get("usage") or {}).get("completion_tokens", usage_tokens)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        record.status, record.error = None, f"{type(exc).__name__}: {exc}"[:300]
    record.output_tokens = usage_tokens if usage_tokens is not None else len(record.token_times)


async def _streams_on_schedule(url: str, schedule: np.ndarray, bodies: list[bytes], headers: dict[str, str],
                               deadline_s: float) -> StreamRun:
    records = [StreamRecord(float(t)) for t in schedule]
    connector = aiohttp.TCPConnector(limit=_connection_budget(len(records) + 1))
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT_S, sock_read=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu0, start = time.process_time(), time.perf_counter()
        tasks = []
        for record, body in zip(records, bodies):
            wait = start + record.scheduled_s - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(_stream_one(session, url, body, headers, record, start + record.scheduled_s)))
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, start + deadline_s - time.perf_counter()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu0
    for record, task in zip(records, tasks):
        if task.cancelled():  # still streaming at the deadline: counted, never dropped
            record.unfinished, record.status = True, None
    return StreamRun(records, float(schedule[-1]) if len(schedule) else 0.0, wall, cpu / wall if wall > 0 else 0.0)


def streams_on_schedule(
    url: str,
    schedule: Sequence[float],
    bodies: Sequence[bytes],
    *,
    deadline_s: float,
    headers: dict[str, str] | None = None,
) -> StreamRun:
    """Send streaming completion requests ``bodies[i]`` at ``schedule[i]`` seconds, whatever the server does.

    Each request's tokens are timed from its *scheduled* send (so queueing and a late client count).
    Requests still streaming ``deadline_s`` after the start are cancelled and counted ``unfinished``.
    The body is any OpenAI completions (or chat) request with ``"stream": true``; the events are
    parsed as OpenAI's, so vLLM, ``transformers serve`` or any compatible server answers it.
    Taught in: chapters/06_generative.ipynb.
    """
    check_loopback(url)
    if len(schedule) != len(bodies):
        raise ValueError(f"{len(schedule)} send times for {len(bodies)} bodies")
    _check_positive(deadline_s=deadline_s)
    order = np.argsort(np.asarray(schedule, dtype=float), kind="stable")
    times = np.asarray(schedule, dtype=float)[order]
    sorted_bodies = [bodies[i] for i in order]
    coro = _streams_on_schedule(url, times, sorted_bodies, {**JSON_HEADERS, **(headers or {})},
                                deadline_s)  # fmt: skip
    run = run_coro(asyncio.wait_for(coro, deadline_s + HARD_CAP_EXTRA_S))
    back = np.empty_like(order)
    back[order] = np.arange(order.size)
    run.records = [run.records[i] for i in back]  # in the caller's order
    return run
