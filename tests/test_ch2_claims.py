"""Chapter 2's claims: each holds on made-up numbers shaped like the chapter's (2 cores, N = 2), breaks
on numbers that do not fit with its plain-words message, and skips only with a measured reason."""

import pytest

from servelab import claims, gil
from servelab.load import ClosedLoopPoint

LEVELS = [1, 2, 8]
WEIGHTS_MIB = 256.0


def lp(path="/predict", c=2, rps=100.0, cores=1.9, *, outside=0.05, busy=False, errors=0,
       completed=200) -> ClosedLoopPoint:
    return ClosedLoopPoint(c, rps, 0.01, 0.01, 0.015, 0.02, completed, errors, server_cores=cores, client_cores=0.3,
                           outside_cores=outside, contended=busy, tool="wrk", label="set-up", path=path)


def predict(best_rps: float, busy=()) -> list[ClosedLoopPoint]:
    """/predict at LEVELS: concurrency 1 at 55% of the best, the best from concurrency 2 on."""
    return [lp(c=c, rps=best_rps * (0.55 if c == 1 else 1.0), outside=0.9 if c in busy else 0.05, busy=c in busy)
            for c in LEVELS]


def test_clean_runs_and_runs_with_errors():
    assert gil.claim_load_runs_clean([lp(), lp()]).held
    claim = gil.claim_load_runs_clean([lp(), lp(errors=2)])
    assert claim.outcome == claims.FAILED and "got errors from the server" in claim.message
    assert not gil.claim_load_runs_clean([lp(completed=0)]).held


def test_the_gil_caps_threads_and_processes_escape_it():
    assert gil.claim_threads_cap_pyloop(lp("/pyloop", cores=1.02)).held
    over = gil.claim_threads_cap_pyloop(lp("/pyloop", cores=1.6))
    assert over.outcome == claims.FAILED and "the GIL should cap them near 1" in over.message
    assert gil.claim_processes_parallel_pyloop(lp("/pyloop", cores=1.9), 2, 2).held
    short = gil.claim_processes_parallel_pyloop(lp("/pyloop", cores=1.1), 2, 2)
    assert short.outcome == claims.FAILED and "2 processes used only 1.10 cores" in short.message


def test_a_contended_pyloop_run_is_judged_only_where_contention_cannot_explain_it():
    # Other programs only take cores away: a busy run that still reached 1.6 cores holds.
    assert gil.claim_processes_parallel_pyloop(lp("/pyloop", cores=1.7, outside=0.6, busy=True), 2, 2).held
    busy = gil.claim_processes_parallel_pyloop(lp("/pyloop", cores=1.2, outside=0.6, busy=True), 2, 2)
    assert busy.outcome == claims.SKIPPED and busy.skip_kind == "contended" and "0.60 cores" in busy.message


def test_on_the_asyncio_client_processes_must_beat_the_threads_cap():
    slow_client = lambda cores: ClosedLoopPoint(2, 150.0, 0.01, 0.01, 0.015, 0.02, 200, 0, server_cores=cores,
                                                client_cores=0.16, tool="asyncio", path="/pyloop")
    assert gil.claim_processes_parallel_pyloop(slow_client(1.3), 2, 2).held
    assert gil.claim_processes_parallel_pyloop(slow_client(1.1), 2, 2).outcome == claims.FAILED
    assert gil.claim_processes_parallel_pyloop(lp("/pyloop", cores=1.3), 2, 2).outcome == claims.FAILED  # wrk: 1.6


def test_one_core_replaces_the_parallel_claim_by_its_own():
    assert gil.claim_processes_parallel_pyloop(lp("/pyloop", cores=0.98), 2, 1).skip_kind == "one core"
    assert gil.claim_processes_capped_on_one_core(lp("/pyloop", cores=0.98)).held
    assert "on a 1-core machine" in gil.claim_processes_capped_on_one_core(lp("/pyloop", cores=1.5)).message


def test_threads_that_do_not_come_close_to_processes_fail():
    assert gil.claim_threads_match_processes(predict(170), predict(180)).held
    slow = gil.claim_threads_match_processes(predict(100), predict(180))
    assert slow.outcome == claims.FAILED and "only 0.56× the processes' /predict throughput" in slow.message
    assert gil.claim_threads_match_processes(predict(144), predict(180)).held  # exactly 0.8×


@pytest.mark.parametrize("threads_busy,processes_busy,threads_rps,outcome", [
    ((2,), (), 170, claims.HELD),       # busy threads only lower the ratio: the pass stands
    ((), (2,), 170, claims.SKIPPED),    # busy processes could have lowered their side: a pass is no evidence
    ((), (8,), 100, claims.FAILED),     # busy processes only raise the ratio: the failure stands
    ((1,), (), 100, claims.SKIPPED),    # busy threads could explain a low ratio
])
def test_contention_decides_the_throughput_claim_one_way_only(threads_busy, processes_busy, threads_rps, outcome):
    claim = gil.claim_threads_match_processes(predict(threads_rps, threads_busy), predict(180, processes_busy))
    assert claim.outcome == outcome
    if outcome == claims.SKIPPED:
        assert claim.skip_kind == "contended" and "0.90 cores" in claim.message


def test_memory_claims_break_on_unshared_or_shared_memory():
    pss = {"single": 300.0, "processes": 590.0, "preload": 310.0, "threads": 320.0}
    assert all(c.held for c in (gil.claim_processes_pss(pss, 2), gil.claim_preload_pss(pss, 2),
                                gil.claim_threads_pss(pss, 2)))
    shared = {**pss, "processes": 400.0}
    assert "should hold its own model" in gil.claim_processes_pss(shared, 2).message
    assert "copy-on-write should share" in gil.claim_preload_pss({**pss, "preload": 560.0}, 2).message
    assert "save at least a quarter" in gil.claim_threads_pss({**pss, "threads": 580.0}, 2).message
    assert gil.claim_rss_overstates_pss(900.0, 320.0).held
    assert "at least 1.5×" in gil.claim_rss_overstates_pss(400.0, 320.0).message


def test_memory_profiler_must_agree_with_psutil():
    rows = [{"measures": "PSS", "memory_profiler MiB": 452.0, "psutil summed MiB": 450.0},
            {"measures": "USS", "memory_profiler MiB": 48.0, "psutil summed MiB": 35.0}]
    assert gil.claim_profiler_agrees(rows, "PSS").held
    uss = gil.claim_profiler_agrees(rows, "USS")
    assert uss.id == "ch2.memory_profiler_uss" and uss.outcome == claims.FAILED and "disagrees" in uss.message


def test_copy_on_write_claims():
    assert gil.claim_preload_stays_shared(11.0, WEIGHTS_MIB).held
    assert "should stay shared" in gil.claim_preload_stays_shared(200.0, WEIGHTS_MIB).message
    for case in ("write", "lazy"):
        assert gil.claim_worker_holds_copy(case, 266.0, WEIGHTS_MIB).held
        broken = gil.claim_worker_holds_copy(case, 20.0, WEIGHTS_MIB)
        assert broken.outcome == claims.FAILED and "holds only 20 MiB of its own" in broken.message
    assert gil.claim_worker_holds_copy("lazy", 20.0, WEIGHTS_MIB).id == "ch2.lazy_load_copies_weights"
    assert gil.claim_gc_collect_copies(100.0, 12.0, 500_000).held
    assert "copied only 8 MiB more" in gil.claim_gc_collect_copies(20.0, 12.0, 500_000).message


def test_oversubscription_claim():
    one, default = lp(c=2, rps=50, cores=1.0), lp(c=2, rps=40, cores=1.9)  # 20 against 47.5 CPU-ms per request
    assert gil.claim_oversubscription_costs_cpu(one, default, 2, 2).held
    cheap = gil.claim_oversubscription_costs_cpu(one, lp(c=2, rps=50, cores=1.05), 2, 2)
    assert cheap.outcome == claims.FAILED and "cost only 1.05× the CPU per request" in cheap.message
    busy = gil.claim_oversubscription_costs_cpu(one, lp(c=2, rps=40, cores=1.9, outside=1.4, busy=True), 2, 2)
    assert busy.skip_kind == "contended" and "1.40 cores" in busy.message
    assert gil.claim_oversubscription_costs_cpu(one, default, 2, 1).skip_kind == "one core"


def test_nginx_claims():
    via = {"direct": lp("/health"), "through nginx": lp("/health")}
    assert gil.claim_nginx_hop_small(0.08, via).held and gil.claim_nginx_invisible(0.08, 20.0, via).held
    assert "well under 1 ms" in gil.claim_nginx_hop_small(0.7, via).message
    assert "invisible next to inference" in gil.claim_nginx_invisible(0.3, 2.0, via).message
    assert gil.claim_nginx_hop_small(None, None).skip_kind == "tool missing"
    assert gil.claim_nginx_invisible(None, 20.0, None).skip_kind == "tool missing"
    busy = {**via, "direct": lp("/health", outside=1.2, busy=True)}
    assert gil.claim_nginx_hop_small(0.7, busy).skip_kind == "contended"
