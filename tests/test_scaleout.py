"""Chapter 5's measurement helpers and claims: each claim holds on numbers that fit the text and breaks,
with its plain-words message, on numbers that do not."""

from __future__ import annotations

import math

import numpy as np
import psutil

from servelab import claims, scaleout
from servelab.rate_sweep import RatePoint
from servelab.scaleout import FaultOutcome, Phase, ThroughputPoint, Timeline


def point(label: str, rps: float, cpu: dict[str, float], *, contended: bool = False) -> ThroughputPoint:
    return ThroughputPoint(label, 4, rps, 0.03, 0.06, cpu, 0, "wrk", 0.8 if contended else 0.0, contended)


def rate_point(rate: float, server_cores: float, *, contended: bool = False) -> RatePoint:
    return RatePoint(rate, 100, 100, 0, 0, 100, 0, rate, 0.02, 0.05, 0.001, 0.1, server_cores,
                     0.9 if contended else 0.0, contended, 1)  # fmt: skip


RAY_ONE = point("Ray, 1 replica", 60, {"replica": 17, "proxy": 5, "Ray system": 1})
RAY_TWO = point("Ray, 2 replicas", 75, {"replica": 18, "proxy": 5, "Ray system": 1})
GUNICORN = point("gunicorn, 2 workers", 145, {"worker": 13.5, "master": 0.1})


def test_cpu_delta_by_role_counts_new_processes_whole():
    before = {(1, 0.0): ("replica", 2.0), (2, 0.0): ("proxy", 1.0)}
    after = {(1, 0.0): ("replica", 3.5), (2, 0.0): ("proxy", 1.25), (3, 5.0): ("replica", 0.5)}
    assert scaleout.cpu_delta_by_role(before, after) == {"replica": 2.0, "proxy": 0.25}


def test_cpu_by_process_reads_this_process():
    snapshot = scaleout.cpu_by_process([psutil.Process()], lambda p: "me")
    ((role, seconds),) = snapshot.values()
    assert role == "me" and seconds > 0


def test_cpu_per_request_sums_the_roles():
    assert RAY_TWO.cpu_ms_per_request == 24
    assert scaleout.cpu_ms_per_request(rate_point(100, 1.5)) == 15
    assert math.isinf(scaleout.cpu_ms_per_request(rate_point(0, 1.5)))


def test_timeline_in_flight_and_windows():
    timeline = Timeline([Phase(0, 10, 2.0)], np.array([0.1, 0.5, 0.9, 1.5]), np.array([0.2, 1.0, math.inf, 0.1]), 1)
    assert timeline.in_flight_at(1.0) == 2  # sent at 0.5 (answered at 1.5) and at 0.9 (never answered)
    centres, p99s = timeline.p99_windows(1.0)
    assert list(centres) == [0.5, 1.5] and math.isinf(p99s[0]) and p99s[1] == 0.1


def test_first_time_and_fault_outcome():
    samples = [(0.0, {"RUNNING": 2}), (2.5, {"RUNNING": 1}), (4.0, {"RUNNING": 2})]
    assert scaleout.first_time(samples, lambda s: s["RUNNING"] == 2, after_s=1.0) == 4.0
    timeline = Timeline([Phase(0, 10, 5)], np.array([1.9, 2.05]), np.array([0.5, 0.01]), 1, samples, {"kill": 2.0})
    outcome = scaleout.fault_outcome("Ray", "kill", timeline, lambda s: s["RUNNING"] == 2, limit=5)
    assert (outcome.in_flight, outcome.failed, outcome.recovery_s) == (1, 1, 2.0)


def test_replica_scaling_is_measured_again_only_when_two_did_not_beat_one(monkeypatch):
    deployed, runs = [2], iter([50, 60, 75, 58])  # round 1: two slowed (50 against 60); round 2: 75 against 58
    in_flight = []

    def measured(label, *args, concurrency, **kwargs):
        in_flight.append(concurrency)
        return point(f"{label} @{deployed[-1]}", next(runs), {})

    monkeypatch.setattr(scaleout, "measure_throughput", measured)
    one, two = scaleout.measure_one_and_two_replicas("u", list, str, deployed.append, in_flight_per_replica=5,
                                                     duration_s=1)
    assert deployed == [2, 1, 2, 1] and (one.throughput, two.throughput) == (60, 75)
    assert in_flight == [10, 5, 10, 5]  # each replica's slots full, none waiting in the proxy
    assert one.label == "Ray, 1 replica @1" and two.label == "Ray, 2 replicas @2"
    deployed[:], runs = [2], iter([75, 60])
    scaleout.measure_one_and_two_replicas("u", list, str, deployed.append, in_flight_per_replica=5, duration_s=1)
    assert deployed == [2, 1]  # no second round


def test_gunicorn_workers_measured_one_after_another_and_stopped(monkeypatch):
    measured = []

    def measure(label, url, processes, classify, *, concurrency, duration_s):
        measured.append((label, concurrency, duration_s, {p.pid for p in processes()}))
        return point(label, 10.0 * len(measured), {})

    monkeypatch.setattr(scaleout, "measure_throughput", measure)
    points = scaleout.measure_gunicorn_workers((1, 2), concurrency=3, duration_s=0.1)
    assert [p.label for p in points] == ["gunicorn, 1 worker(s)", "gunicorn, 2 worker(s)"]
    assert [(label, c, d) for label, c, d, _ in measured] == [("gunicorn, 1 worker(s)", 3, 0.1), ("gunicorn, 2 worker(s)", 3, 0.1)]
    assert len(measured[0][3]) == 2 and len(measured[1][3]) == 3  # master + workers, each its own tree
    assert not measured[0][3] & measured[1][3]
    still = [pid for *_, pids in measured for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert still == [], "a gunicorn outlived the measurement"


def test_placement_claim():
    assert scaleout.claim_replicas_on_both_nodes({11: "head", 12: "worker"}).held
    failed = scaleout.claim_replicas_on_both_nodes({11: "head", 12: "head"})
    assert failed.outcome == claims.FAILED and "must place them on both" in failed.message


def test_two_replicas_claim_holds_breaks_and_skips():
    assert scaleout.claim_two_replicas_beat_one(RAY_ONE, RAY_TWO, cores=2).held
    # a second replica that never serves: the same requests on the same cores
    idle = scaleout.claim_two_replicas_beat_one(RAY_ONE, point("Ray, 2", 61, RAY_ONE.cpu_ms_by_role), cores=2)
    assert idle.outcome == claims.FAILED and "should put a second core to work" in idle.message
    slower = scaleout.claim_two_replicas_beat_one(RAY_ONE, point("Ray, 2", 58, {"replica": 40}), cores=2)
    assert slower.outcome == claims.FAILED and "should add throughput" in slower.message
    # measured on a 2-core EPYC: 1.06× the requests, but the second core at work (1.26× the cores)
    ceiling = scaleout.claim_two_replicas_beat_one(point("1", 37.8, {"replica": 40.7}), point("2", 40.1, {"replica": 48.5}),
                                                   cores=2)
    assert ceiling.held and ceiling.measured == "1.26×"
    assert scaleout.claim_two_replicas_beat_one(RAY_ONE, RAY_TWO, cores=1).skip_kind == "one core"
    busy = scaleout.claim_two_replicas_beat_one(RAY_ONE, point("Ray, 2", 61, {}, contended=True), cores=2)
    assert busy.skip_kind == "contended"


def test_ray_cpu_claim():
    assert scaleout.claim_ray_costs_more_cpu(RAY_TWO, GUNICORN).held
    cheap = scaleout.claim_ray_costs_more_cpu(point("Ray", 75, {"replica": 13}), GUNICORN)
    assert cheap.outcome == claims.FAILED and "should cost Ray more" in cheap.message


def test_batching_cpu_claim_holds_and_breaks_even_when_contended():
    batched = point("Ray, full batches", 150, {"replica": 6, "proxy": 5, "Ray system": 1})
    assert scaleout.claim_batching_lowers_cpu(batched, RAY_TWO).held
    same = scaleout.claim_batching_lowers_cpu(point("Ray, full batches", 80, RAY_TWO.cpu_ms_by_role), RAY_TWO, mean_batch=2.5)
    assert same.outcome == claims.FAILED and "in batches of 2.5 on average; one pass" in same.message
    busy = point("Ray, full batches", 150, batched.cpu_ms_by_role, contended=True)
    assert scaleout.claim_batching_lowers_cpu(busy, RAY_TWO).held  # CPU per request: no skip for contention


def step_timeline(counts: list[tuple[float, dict]]) -> Timeline:
    return Timeline([Phase(0, 5, 3), Phase(3, 30, 10), Phase(13, 5, 9)], np.empty(0), np.empty(0), 0, counts)


def test_autoscaler_claim_and_times():
    high = Phase(3, 30, 10)
    good = step_timeline([(0, {"RUNNING": 1}), (6, {"RUNNING": 1, "STARTING": 1}), (8, {"RUNNING": 2}),
                          (15, {"RUNNING": 1, "STOPPING": 1}), (17, {"RUNNING": 1})])
    claim = scaleout.claim_autoscaler_scaled_up(good, high, decide_s=6)
    assert claim.held and claim.measured == "decided 3.0 s after the step, running after 5.0 s"
    assert (scaleout.scaled_up_at(good, high), scaleout.scaled_down_at(good, high)) == (8, 17)
    assert scaleout.scale_up_decided_at(good, high) == 6
    never_up = step_timeline([(0, {"RUNNING": 1}), (20, {"RUNNING": 1})])
    assert "should have added a replica" in scaleout.claim_autoscaler_scaled_up(never_up, high, decide_s=6).message
    assert scaleout.scaled_down_at(never_up, high) is None
    late_up = step_timeline([(0, {"RUNNING": 1}), (14, {"RUNNING": 1}), (18, {"RUNNING": 2}), (21, {"RUNNING": 2})])
    assert scaleout.claim_autoscaler_scaled_up(late_up, high, decide_s=6).outcome == claims.FAILED
    assert scaleout.scaled_down_at(late_up, high) is None  # the scale-down must follow the scale-up
    # a slow machine may take long to start the replica: the decision is what is timed, but it must run
    slow_start = step_timeline([(0, {"RUNNING": 1}), (6, {"RUNNING": 1, "STARTING": 1}), (19, {"RUNNING": 2}),
                                (21, {"RUNNING": 1})])
    assert scaleout.claim_autoscaler_scaled_up(slow_start, high, decide_s=6).held
    stuck = step_timeline([(0, {"RUNNING": 1}), (6, {"RUNNING": 1, "STARTING": 1}), (19, {"RUNNING": 1, "STARTING": 1})])
    assert scaleout.claim_autoscaler_scaled_up(stuck, high, decide_s=6).outcome == claims.FAILED


def test_replica_count_ignores_other_keys():
    assert scaleout.replica_count({"RUNNING": 2, "STOPPING": 1, "pids": (1, 2)}) == 3


def test_autoscaler_scaled_down_claim():
    high = Phase(3, 30, 10)
    good = step_timeline([(0, {"RUNNING": 1}), (8, {"RUNNING": 2}), (15, {"RUNNING": 1, "STOPPING": 1}),
                          (17, {"RUNNING": 1}), (22, {"RUNNING": 1})])
    claim = scaleout.claim_autoscaler_scaled_down(good, high)
    assert claim.held and claim.measured == "4.0 s after the step"
    stays = step_timeline([(0, {"RUNNING": 1}), (8, {"RUNNING": 2}), (15, {"RUNNING": 1, "STOPPING": 1}),
                           (22, {"RUNNING": 2})])  # a replica still stopping is not one fewer
    failed = scaleout.claim_autoscaler_scaled_down(stays, high)
    assert failed.outcome == claims.FAILED and "should have removed the extra replica" in failed.message


def test_recovery_claim():
    assert scaleout.claim_recovers_after_kill(FaultOutcome("Ray", "kill", 100, 3, 4, 3.5, 5)).held
    too_many = scaleout.claim_recovers_after_kill(FaultOutcome("Ray", "kill", 100, 9, 4, 3.5, 5))
    assert too_many.outcome == claims.FAILED and "only requests on the killed replica" in too_many.message
    never = scaleout.claim_recovers_after_kill(FaultOutcome("Ray", "kill", 100, 2, 4, None, 5))
    assert never.outcome == claims.FAILED
    late = scaleout.claim_recovers_after_kill(FaultOutcome("Ray", "kill", 100, 53, 13, 14.5, 5), cores=1)
    assert late.skip_kind == "one core" and "53 requests failed with 13 in flight" in late.message
    assert scaleout.claim_recovers_after_kill(FaultOutcome("Ray", "kill", 100, 53, 13, None, 5), cores=1).outcome == claims.FAILED


def test_kill_sentence_follows_the_numbers():
    assert "those the dead replica held" in scaleout.describe_kill(FaultOutcome("Ray", "kill", 100, 3, 4, 3.5, 5))
    assert "about 40 requests sent after" in scaleout.describe_kill(FaultOutcome("Ray", "kill", 100, 53, 13, 14.5, 5))


def test_no_process_left_claim():
    assert scaleout.claim_no_process_left([]).held
    assert "still run" in scaleout.claim_no_process_left([123]).message


def test_run_timeline_samples_until_settled(monkeypatch):
    """``until`` extends sampling past the phases only as long as it takes (and ``until_s`` at most)."""
    monkeypatch.setattr(scaleout, "_phase_thread", lambda *a: __import__("threading").Thread(target=lambda: None))
    monkeypatch.setattr(scaleout.load, "poisson_schedule", lambda *a: np.empty(0))
    polls = iter(range(1000))
    settled = scaleout.run_timeline("http://127.0.0.1:1", [Phase(0, 1, 0.2)], poll=lambda: {"n": next(polls)},
                                    poll_s=0.05, until=lambda s: s["n"] >= 8, until_s=5.0)
    assert settled.samples[-1][1]["n"] == 8
    capped = scaleout.run_timeline("http://127.0.0.1:1", [Phase(0, 1, 0.2)], poll=lambda: {"n": 0},
                                   poll_s=0.05, until=lambda s: False, until_s=0.3)
    assert 0.45 <= capped.samples[-1][0] <= 0.8


def test_run_timeline_extends_a_phase_until_its_condition(monkeypatch):
    """A phase with ``extend_until`` runs a second at a time longer, and the next phase moves with it."""
    launched = []

    def fake_thread(url, phase, t0, seed, grace_s, out):
        launched.append(phase)
        out.append((phase.start_s, phase, seed, SimpleResult()))
        return __import__("threading").Thread(target=lambda: None)

    class SimpleResult:
        latencies, errors, unfinished = np.empty(0), 0, 0

    monkeypatch.setattr(scaleout, "_phase_thread", fake_thread)
    monkeypatch.setattr(scaleout.load, "poisson_schedule", lambda *a: np.empty(0))
    clock = iter(range(10_000))
    phases = [Phase(0, 1, 0.2), Phase(0.2, 5, 0.3, extend_until=lambda s: s["n"] >= 30, extend_max_s=10),
              Phase(0.5, 1, 0.2)]
    timeline = scaleout.run_timeline("http://127.0.0.1:1", phases, poll=lambda: {"n": next(clock)}, poll_s=0.02)
    high = timeline.phases[1]
    assert 1.2 <= high.seconds <= 2.3  # 0.3 s, then whole seconds until n reached 30 (about 0.6 s of samples)
    assert timeline.phases[2].start_s >= high.start_s + high.seconds - 0.05
    assert [p.rate for p in launched] == [1] + [5] * (1 + round(high.seconds - 0.3)) + [1]
    capped = scaleout.run_timeline("http://127.0.0.1:1", [Phase(0, 5, 0.1, extend_until=lambda s: False, extend_max_s=2)],
                                   poll=lambda: {}, poll_s=0.02)
    assert capped.phases[0].seconds == 2.1


def test_server_batch_sizes_reads_each_answer():
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server API
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"server_batch": 3}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sizes = scaleout.server_batch_sizes(f"http://127.0.0.1:{server.server_port}", concurrency=4, requests=10)
    finally:
        server.shutdown()
    assert sizes == [3] * 10


def test_batching_sweeps_sentence_follows_the_numbers():
    met, missed = rate_point(40, 1.2), RatePoint(50, 100, 100, 0, 0, 100, 0, 50, 0.1, 0.3, 0.001, 0.1, 1.8, 0.0, False, 1)
    text = scaleout.describe_batching_sweeps({"unbatched": 38, "batched": 0, "chapter4": 86}, met, missed, 0.1)
    assert "kept p99 within 100 ms up to about 38 requests/s; with `@serve.batch` at none of the rates tried." in text
    assert "36.0 ms of CPU per request at 50 requests/s, the lowest rate tried, which missed it" in text
    assert "30.0 ms of CPU per request at 40 requests/s, the highest rate that met it" in text
    both = scaleout.describe_batching_sweeps({"unbatched": 40, "batched": 80, "chapter4": 50}, met, met, 0.1)
    assert "(2.0×)" in both and "fell behind the batching replica" in both
    assert "went further" in text and "about matched" in scaleout.describe_batching_sweeps(
        {"unbatched": 40, "batched": 80, "chapter4": 90}, met, met, 0.1)
