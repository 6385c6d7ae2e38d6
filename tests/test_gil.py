"""servelab.gil: set-ups, load points, memory snapshots and the arithmetic behind chapter 2 (small models)."""

from __future__ import annotations

import json

import pytest

from servelab import gil, load, memory, servers
from servelab.memory import MiB, ProcessMemory, TreeMemory

SMALL = {"SERVELAB_MODEL_WIDTH": "256", "SERVELAB_MODEL_DEPTH": "2"}


def test_predict_body_adds_python_work_only_when_asked():
    assert json.loads(load.predict_body()) == {"batch": 1} and load.PREDICT_BODY == b'{"batch": 1}'
    assert json.loads(load.predict_body(2, python_work=500)) == {"batch": 2, "python_work": 500}


def test_standard_setups_scale_with_cores():
    setups = gil.standard_setups(3, SMALL)
    assert {s.kind for s in setups.values()} == {"single", "threads", "processes", "preload"}
    assert (setups["threads"].workers, setups["threads"].threads) == (1, 3)
    assert (setups["processes"].workers, setups["processes"].threads) == (3, 1)
    assert setups["preload"].preload and not setups["processes"].preload
    assert all(s.env == SMALL for s in setups.values())


def test_with_changes_settings_and_adds_env():
    base = gil.Setup("base", "preload", workers=2, preload=True, env={"A": "1"})
    changed = base.with_("changed", gc_freeze=True, env={"B": "2"})
    assert changed.label == "changed" and changed.gc_freeze and changed.workers == 2
    assert changed.env == {"A": "1", "B": "2"}
    assert base.env == {"A": "1"} and not base.gc_freeze  # the original is untouched


def test_predicted_pss_counts_shared_pages_once():
    assert gil.predicted_pss_mib(256, 100, 4, master_mib=20) == 20 + 256 + 400


def _proc(pid, rss, pss, uss):
    return ProcessMemory(pid=pid, name="python", rss=rss * MiB, pss=pss * MiB, uss=uss * MiB)


def test_memory_snapshot_separates_workers_from_master():
    tree = TreeMemory([_proc(1, 100, 60, 40), _proc(2, 300, 160, 20), _proc(3, 300, 160, 20)])
    snap = memory.MemorySnapshot("x", tree, worker_pids=[2, 3])
    assert [p.pid for p in snap.workers] == [2, 3]
    assert snap.total_mib("pss") == 380 and snap.workers_mib("pss") == 320
    assert snap.workers_mib("rss") == 600
    row = snap.row()
    assert row["workers"] == 2 and row["PSS MiB"] == 380 and row["workers' RSS MiB"] == 600


def test_load_point_cpu_per_request():
    point = load.ClosedLoopPoint(2, throughput=100.0, mean_s=0.01, p50_s=0.01, p95_s=0.015, p99_s=0.02,
                                 completed=100, errors=0, server_cores=1.5, client_cores=0.1, tool="wrk", label="s")
    assert point.cpu_ms_per_request == pytest.approx(15.0)
    assert point.row()["p99 ms"] == 20.0


def test_calibration_rejects_shares_outside_0_1():
    with pytest.raises(ValueError):
        gil.calibrate_mixed_work(None, [0.0])  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def measured():
    setup = gil.Setup("2 processes, small", "processes", workers=2, env=SMALL)
    return gil.measure_setup(setup, concurrencies=[1, 2], duration_s=0.3, warmup_s=0.1, pyloop_concurrency=2,
                             mixed_shares=[0.5], mixed_concurrency=2, batch_points=[(4, 1)], profiler=[setup.label], retries=0)


def test_measure_setup_measures_every_point_and_stops(measured):
    paths = [(p.path, p.concurrency, p.python_work > 0, p.batch) for p in measured.points]
    assert paths == [("/pyloop", 2, False, 1), ("/predict", 1, False, 1), ("/predict", 2, False, 1),
                     ("/predict", 1, False, 4), ("/predict", 2, True, 1)]
    for p in measured.points:
        assert p.errors == 0 and p.completed > 0 and p.throughput > 0
        assert p.p99_s >= p.p50_s > 0
        assert 0 < p.server_cores < 8
    assert measured.point("/predict", 1).concurrency == 1
    assert measured.point("/predict", 1, batch=4).batch == 4
    assert measured.point("/predict").concurrency == 2  # highest by default
    with pytest.raises(KeyError):
        measured.point("/nowhere")


def test_measure_setup_memory_and_profiler(measured):
    snap = measured.memory
    assert len(snap.tree.processes) == 3 and len(snap.workers) == 2
    assert snap.total_mib("rss") >= snap.total_mib("pss") >= snap.total_mib("uss") > 0
    prof = measured.profiler_mib
    assert set(prof) == {"psutil", "psutil_pss", "psutil_uss"}
    assert prof["psutil"] >= prof["psutil_pss"] >= prof["psutil_uss"] > 0


def test_mixed_work_calibration_is_sane(measured):
    mixed = measured.mixed
    assert mixed is not None and mixed.iterations[0.5] > 0
    assert 0 < mixed.seconds_per_iteration < 1e-5  # a loop iteration takes well under 10 µs
    # At share 0.5 the Python work takes as long as the torch work, to within one whole iteration
    # (on a slow CPU one iteration, 0.95 µs, is about this small set-up's whole torch work).
    assert mixed.python_seconds(0.5) == pytest.approx(mixed.torch_seconds, rel=0.01, abs=mixed.seconds_per_iteration)


def test_memory_of_and_interleaved_runs_leave_no_server():
    setup = gil.Setup("threads", "threads", threads=2, env=SMALL)
    before = set(servers._LIVE)
    snap = gil.memory_of(setup, requests=1)
    assert len(snap.workers) == 1
    with setup.start() as a, setup.start() as b:
        out = gil.measure_interleaved({"a": a, "b": b}, gil.LoadSpec("/health", 1), duration_s=0.4, warmup_s=0.05,
                                      rounds=2, retries=0)
    assert set(out) == {"a", "b"}
    for label, point in out.items():
        assert point.label == label and point.completed > 0 and point.errors == 0 and point.p50_s > 0
    assert set(servers._LIVE) == before
    assert a.alive_pids() == [] and b.alive_pids() == []


def test_measure_setups_alternates_and_stops_all_on_error(monkeypatch):
    setups = [gil.Setup("one", "single", env=SMALL), gil.Setup("two", "threads", threads=2, env=SMALL)]
    results = gil.measure_setups(setups, concurrencies=[1], duration_s=0.2, warmup_s=0.05, rounds=2, retries=0)
    assert [r.setup.label for r in results] == ["one", "two"]
    assert all(len(r.points) == 1 and r.points[0].completed > 0 for r in results)
    assert all(len(r.memory.workers) == 1 and r.memory.total_mib("pss") > 0 for r in results)
    with pytest.raises(ValueError):
        gil.measure_setups(setups * 2)
    before = set(servers._LIVE)

    def broken(*args, **kwargs):
        raise RuntimeError("load generator broke")

    monkeypatch.setattr(load, "closed_loop", broken)
    with pytest.raises(RuntimeError, match="broke"):
        gil.measure_setups(setups, concurrencies=[1], duration_s=0.2, retries=0)
    assert set(servers._LIVE) == before  # both servers were stopped


def test_load_point_pools_runs():
    from servelab import load
    import numpy as np

    def result(n, duration):
        return load.LoadResult(latencies=np.full(n, 0.01), completed=n, errors=0, succeeded=n, duration_s=duration,
                               client_cpu_cores=0.1, tool="wrk", concurrency=1)

    runs = [load.ServerRun(result(100, 1.0), server_cpu_s=1.0, wall_s=1.0, outside_cores=0.0, contended=False),
            load.ServerRun(result(50, 1.0), server_cpu_s=0.5, wall_s=1.0, outside_cores=0.3, contended=True)]
    point = load.pooled_point(runs, label="x")
    assert point.throughput == 75.0 and point.completed == 150
    assert point.server_cores == 0.75 and point.outside_cores == 0.3 and point.contended
    starved = load.pooled_point([load.ServerRun(result(0, 1.0), 0.1, 1.0, 2.0, True)])
    assert starved.p99_s == starved.mean_s == float("inf") and starved.throughput == 0.0


def test_measure_setups_without_memory_starts_both_at_once():
    setups = [gil.Setup("one", "single", env=SMALL), gil.Setup("two", "threads", threads=2, env=SMALL)]
    before = set(servers._LIVE)
    results = gil.measure_setups(setups, concurrencies=[1], duration_s=0.2, warmup_s=0.05, retries=0,
                                 read_memory=False)
    assert [r.setup.label for r in results] == ["one", "two"]
    assert all(r.memory is None and r.points[0].completed > 0 for r in results)
    assert set(servers._LIVE) == before


def test_start_together_stops_the_started_when_one_fails(monkeypatch):
    good, bad = gil.Setup("good", "single", env=SMALL), gil.Setup("bad", "single", app="servelab.apps.nowhere:app")
    started = []
    original = gil.Setup.start

    def start(self, wait=True):  # noqa: ANN001, ANN202
        started.append(original(self, wait))
        return started[-1]

    monkeypatch.setattr(gil.Setup, "start", start)
    with pytest.raises(servers.ServerError):
        gil.start_together([good, bad])
    assert started[0].alive_pids() == [] and started[0].guard.poll() is not None


def test_in_parallel_keeps_order_and_raises():
    assert gil.in_parallel([lambda: 1, lambda: 2]) == [1, 2]
    with pytest.raises(ZeroDivisionError):
        gil.in_parallel([lambda: 1, lambda: 1 / 0])
