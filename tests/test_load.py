"""Load generators: bounded, honest counts, latencies that match a server of known speed."""

from __future__ import annotations

import asyncio
import http.server
import json
import math
import threading
import time
from collections import Counter
from typing import Iterator

import numpy as np
import pytest

from servelab import load, tools

SLEEP_S = 0.005  # the "/" handler's service time
SLOW_EVERY = 10  # "/bimodal": every 10th request is slow
SLOW_S, FAST_S = 0.040, 0.002
HANG_S = 3.0  # "/hang": longer than any grace used here

TOOLS = [
    "asyncio",
    pytest.param("wrk", marks=pytest.mark.skipif(not load.wrk_available(), reason=tools.missing_reason("wrk"))),
]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers
    disable_nagle_algorithm = True  # else headers+body in two writes meet delayed ACK: +40 ms

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        state = self.server.state  # type: ignore[attr-defined]
        with state["lock"]:
            state["hits"][self.path] += 1
            nth = state["hits"][self.path]
            state["last"] = {"method": self.command, "body": body, "x-test": self.headers.get("X-Test")}
        if self.path == "/error":
            self._reply(500, {"error": "always fails"})
            return
        if self.path == "/bimodal":
            slow = nth % SLOW_EVERY == 0
            with state["lock"]:
                state["slow_sent"] += slow
            time.sleep(SLOW_S if slow else FAST_S)
        elif self.path == "/serial":
            with state["serial"]:  # one at a time: a server that queues
                time.sleep(0.020)
        else:
            time.sleep(HANG_S if self.path == "/hang" else SLEEP_S)
        self._reply(200, {"ok": True})

    do_GET = do_POST = _serve

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops SYNs under c=8: +1 s retransmits

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients closing keep-alive connections at the end of a run


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.state = {"lock": threading.Lock(), "serial": threading.Lock(), "hits": Counter(), "slow_sent": 0, "last": None}
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


# --------------------------------------------------------------------------- safety


@pytest.mark.parametrize("url", ["http://example.com/", "http://10.0.0.1:8000/", "http://127.0.0.1.nip.io/", "ftp://127.0.0.1/"])
def test_non_loopback_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="only ever sent"):
        load.closed_loop(url, concurrency=1, duration_s=0.1)
    with pytest.raises(ValueError, match="only ever sent"):
        load.open_loop(url, rate=1, duration_s=0.1)


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/", "http://localhost:80/x", "http://[::1]:8000/"])
def test_loopback_urls_are_accepted(url: str) -> None:
    load.check_loopback(url)


# --------------------------------------------------------------------------- closed loop


@pytest.mark.parametrize("tool", TOOLS)
def test_closed_loop_latency_throughput_and_cpu(server: _Server, tool: str) -> None:
    res = load.closed_loop(server.url + "/", concurrency=4, duration_s=1.0, tool=tool)
    assert res.tool == tool and res.concurrency == 4
    assert res.errors == 0 and res.completed > 20
    assert res.latencies.size == res.completed
    assert res.latencies.min() >= SLEEP_S, "a reply came faster than the handler sleeps"
    assert 0.9 <= res.duration_s <= 1.6, f"measured duration {res.duration_s:.3f} s for a 1 s run"
    assert res.throughput == pytest.approx(res.completed / res.duration_s)
    # 4 workers, >= 5 ms each: at most 800 req/s, whatever the machine.
    assert res.throughput <= 4 / SLEEP_S
    assert res.completed <= server.state["hits"]["/"]
    cpu_per_request = res.client_cpu_cores * res.duration_s / res.completed
    assert 0 < cpu_per_request < (3e-3 if tool == "asyncio" else 1e-3)
    assert res.summary().n == res.completed


@pytest.mark.parametrize("tool", TOOLS)
def test_closed_loop_stops_at_max_requests(server: _Server, tool: str) -> None:
    t0 = time.monotonic()
    res = load.closed_loop(server.url + "/", concurrency=4, duration_s=10.0, max_requests=30, tool=tool)
    assert res.completed == 30 and res.latencies.size == 30
    assert server.state["hits"]["/"] == 30, "the client sent more than max_requests"
    assert time.monotonic() - t0 < 5, "the run did not stop when max_requests was reached"
    assert res.duration_s < 3, "duration should be the measured one, not the requested 10 s"


@pytest.mark.parametrize("tool", TOOLS)
def test_closed_loop_more_workers_than_requests(server: _Server, tool: str) -> None:
    res = load.closed_loop(server.url + "/", concurrency=8, duration_s=10.0, max_requests=3, tool=tool)
    assert res.completed == 3 and server.state["hits"]["/"] == 3
    assert res.duration_s < 3


@pytest.mark.parametrize("tool", TOOLS)
def test_closed_loop_counts_error_answers(server: _Server, tool: str) -> None:
    res = load.closed_loop(server.url + "/error", concurrency=2, duration_s=0.5, tool=tool)
    assert res.completed > 0
    assert res.errors == res.completed, "every 500 answer is an error"
    assert res.throughput == 0.0
    assert res.latencies.size == res.completed


@pytest.mark.parametrize("tool", TOOLS)
def test_closed_loop_sends_method_body_headers(server: _Server, tool: str) -> None:
    body = b'{"x": [1, 2, 3]}'
    res = load.closed_loop(server.url + "/echo", concurrency=1, duration_s=0.3, max_requests=5,
                           method="POST", body=body, headers={"X-Test": "yes"}, tool=tool)
    assert res.completed == 5 and res.errors == 0
    assert server.state["last"] == {"method": "POST", "body": body, "x-test": "yes"}


@pytest.mark.parametrize("tool", TOOLS)
def test_closed_loop_warmup_is_discarded(server: _Server, tool: str) -> None:
    res = load.closed_loop(server.url + "/", concurrency=2, duration_s=0.5, warmup_s=0.5, tool=tool)
    assert res.duration_s < 0.9, "warm-up time leaked into the measured duration"
    assert server.state["hits"]["/"] > res.completed * 1.4, "warm-up requests were not sent (or not discarded)"


@pytest.mark.parametrize("tool", TOOLS)
def test_closed_loop_refused_connection_is_not_silent(tool: str) -> None:
    from servelab.servers import free_port

    url = f"http://127.0.0.1:{free_port()}/"
    if tool == "wrk":
        with pytest.raises(RuntimeError, match="wrk"):
            load.closed_loop(url, concurrency=1, duration_s=0.3, tool=tool)
    else:
        res = load.closed_loop(url, concurrency=1, duration_s=0.3, tool=tool)
        assert res.completed == 0 and res.errors > 0 and res.throughput == 0


def test_closed_loop_works_inside_a_running_event_loop(server: _Server) -> None:
    async def like_jupyter() -> load.LoadResult:
        return load.closed_loop(server.url + "/", concurrency=1, duration_s=0.2, tool="asyncio")

    assert asyncio.run(like_jupyter()).completed > 0


@pytest.mark.skipif(not load.wrk_available(), reason=tools.missing_reason("wrk"))
def test_wrk_latencies_are_every_request_without_wrk_correction(server: _Server) -> None:
    # One connection, every 10th reply 40 ms vs 2 ms: wrk's coordinated-omission
    # correction would add several fake 40-ms-ish samples per slow reply.
    res = load.closed_loop(server.url + "/bimodal", concurrency=1, duration_s=1.0, tool="wrk")
    assert res.latencies.size == res.completed > 30
    n_slow = int((res.latencies >= SLOW_S).sum())
    slow_sent = server.state["slow_sent"]
    # The server may have sent one slow reply wrk no longer counted at the stop.
    assert slow_sent - 1 <= n_slow <= slow_sent, f"{n_slow} slow latencies but the server sent {slow_sent} slow replies"
    # wrk's fake samples would sit at 40 ms - k * (mean cycle, ~6 ms): ~40% of the sample.
    between = (res.latencies > 0.010) & (res.latencies < SLOW_S - 0.002)
    assert int(between.sum()) <= 0.10 * res.completed, (
        "latencies between the two modes: synthetic samples left in"
    )


def _wrk_stats_correct(hist: dict[int, int], expected: int) -> dict[int, int]:
    """A port of wrk 4.1.0's stats_correct (src/stats.c)."""
    out = dict(hist)
    for n in range(expected * 2, max(hist) + 1):
        count, m = hist.get(n, 0), n - expected
        while count and m > expected:
            out[m] = out.get(m, 0) + count
            m -= expected
    return out


@pytest.mark.parametrize("seed", range(5))
def test_undo_wrk_correction_inverts_wrks_correction(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.integers(900, 1500, 300), rng.integers(5_000, 40_000, 30)])
    original = dict(Counter(int(v) for v in values))
    connections, duration_us = int(rng.integers(1, 5)), 2_000_000
    requests = len(values)
    interval = duration_us // (requests // connections)
    corrected = _wrk_stats_correct(original, interval)
    assert sum(corrected.values()) > requests  # the correction did add samples
    assert load.undo_wrk_correction(corrected, duration_us, requests, connections) == original


# --------------------------------------------------------------------------- open loop


def test_poisson_schedule_is_bounded_sorted_and_seeded() -> None:
    times = load.poisson_schedule(200, 2.0, seed=3)
    assert np.all(np.diff(times) > 0) and times[-1] < 2.0
    assert 300 <= times.size <= 200 * 2.0 * 1.5 + 10
    assert np.array_equal(times, load.poisson_schedule(200, 2.0, seed=3))
    assert not np.array_equal(times, load.poisson_schedule(200, 2.0, seed=4))


def test_open_loop_counts_latency_and_lag(server: _Server) -> None:
    res = load.open_loop(server.url + "/", rate=100, duration_s=1.0, method="GET")
    assert 60 <= res.sent <= 160
    assert res.sent == res.answered + res.unfinished == server.state["hits"]["/"]
    assert res.unfinished == 0 and res.errors == 0
    assert res.latencies.size == res.send_lag.size == res.sent
    assert np.isfinite(res.latencies).all() and res.latencies.min() >= SLEEP_S
    assert np.median(res.send_lag) < 0.005, f"median send lag {np.median(res.send_lag) * 1e3:.1f} ms"
    assert res.offered_rate == pytest.approx(res.sent / 1.0)
    assert 0.8 * res.offered_rate <= res.achieved_rate <= res.offered_rate * 1.01
    assert 0 < res.client_cpu_cores < 1.0
    assert res.summary().n == res.sent


def test_open_loop_unfinished_requests_are_infinite(server: _Server) -> None:
    t0 = time.monotonic()
    res = load.open_loop(server.url + "/hang", rate=20, duration_s=0.5, grace_s=0.3, method="GET")
    assert time.monotonic() - t0 < HANG_S, "the client waited for replies past duration + grace"
    assert res.sent > 0 and res.unfinished == res.sent and res.answered == 0
    assert np.isinf(res.latencies).all() and res.latencies.size == res.sent
    assert res.achieved_rate == 0.0
    assert math.isinf(res.summary().p50)


def test_open_loop_counts_error_answers(server: _Server) -> None:
    res = load.open_loop(server.url + "/error", rate=50, duration_s=0.5, method="GET")
    assert res.sent > 0 and res.errors == res.answered == res.sent
    assert res.achieved_rate == 0.0


def test_open_loop_counts_queueing_from_the_scheduled_time(server: _Server) -> None:
    # A server that handles one request at a time in 20 ms gets 100/s (twice what it
    # can do). An open loop keeps sending, so waiting shows up in the latencies.
    res = load.open_loop(server.url + "/serial", rate=100, duration_s=0.5, grace_s=1.0, method="GET")
    finished = res.latencies[np.isfinite(res.latencies)]
    assert res.sent == res.answered + res.unfinished
    assert finished.max() > 0.15, f"worst latency {finished.max() * 1e3:.0f} ms: queueing was not counted"
    assert res.achieved_rate < 0.8 * res.offered_rate


def test_open_loop_warmup_is_discarded(server: _Server) -> None:
    res = load.open_loop(server.url + "/", rate=50, duration_s=0.5, warmup_s=0.5, method="GET")
    assert server.state["hits"]["/"] > res.sent * 1.4
    assert res.sent == res.answered and res.latencies.size == res.sent
