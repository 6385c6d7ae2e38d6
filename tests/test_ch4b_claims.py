"""Chapter 4b's claims hold on numbers that fit the theory and break, with their message, on numbers that do not."""

from __future__ import annotations

import math

from servelab import claims, overload, payload, rate_sweep
from servelab.overload import GoodputPoint
from servelab.payload import CpuPerRequest
from servelab.rate_sweep import RatePoint


def cpu(payload_name: str, parse_ms: float, *, server_ms: float = 5.0, forward_ms: float = 3.0) -> CpuPerRequest:
    return CpuPerRequest(payload_name, 200.0, 300, 8.0, server_ms, forward_ms, 0.1, parse_ms, 0.05, 0.0, False)


def rate_point(rate: float, contended: bool = False) -> RatePoint:
    return RatePoint(rate, 100, 100, 0, 0, 100, 0, rate, 0.02, 0.05, 0.001, 0.05, 1.0, 0.9 if contended else 0.0,
                     contended, 1)


def goodput_point(rate: float, goodput: float, *, attempts: float | None = None, sent: int = 300,
                  contended: bool = False) -> GoodputPoint:
    return GoodputPoint("x", rate, attempts or rate, goodput, 0.08, 0.3, 0, sent, rate, 0.9 if contended else 0.0,
                        contended)


def test_cpu_split_and_its_parts_add_up():
    point = cpu("JSON", 1.5, server_ms=6.0, forward_ms=3.0)
    assert math.isclose(sum(point.parts_ms().values()), 6.0)
    assert math.isclose(point.event_loop_ms, 6.0 - 3.0 - 0.1 - 1.5) and math.isclose(point.off_forward_ms, 3.0)
    assert cpu("binary", 0.1, server_ms=1.0, forward_ms=3.0).event_loop_ms == 0.0  # never below zero


def test_json_parse_claim_breaks_when_json_is_not_dearer():
    assert payload.claim_json_parse_costs_more(cpu("JSON", 1.5), cpu("binary", 0.06)).held
    claim = payload.claim_json_parse_costs_more(cpu("JSON", 0.2), cpu("binary", 0.1))
    assert claim.outcome == claims.FAILED and "far more" in claim.message


def test_batched_vs_gthread_breaks_below_bound_and_skips_only_on_the_side_that_could_fake_it():
    quiet = [rate_point(100)]
    assert payload.claim_batched_beats_gthread(300, 60, quiet, quiet, slo_ms=100).held
    broken = payload.claim_batched_beats_gthread(80, 60, quiet, quiet, slo_ms=100)
    assert broken.outcome == claims.FAILED and "within p99" in broken.message and "1.33×" in broken.message
    busy = [rate_point(100, contended=True)]
    slow_batching = payload.claim_batched_beats_gthread(80, 60, busy, quiet, slo_ms=100)
    assert slow_batching.skip_kind == "contended" and slow_batching.measured == "1.33×"
    assert payload.claim_batched_beats_gthread(300, 60, busy, quiet, slo_ms=100).held  # load only slows batching
    assert payload.claim_batched_beats_gthread(300, 60, quiet, busy, slo_ms=100).skip_kind == "contended"


def gap_at(achieved: float, *, forward_ms: float = 2.7, rate: float = 300.0, served: float = 0.0) -> payload.CeilingGap:
    best = CpuPerRequest("binary", rate, 300, 16.0, 3.5, forward_ms, 0.1, 0.06, 0.05, 0.0, False)
    return payload.CeilingGap(400.0, achieved, best, 0.2, served)


def test_ceiling_gap_splits_each_thread_s_time_per_request():
    gap = gap_at(300.0, forward_ms=2.7, rate=250.0)
    assert math.isclose(gap.fraction, 0.75) and math.isclose(gap.thread_limit, 1e3 / 2.8)
    thread = gap.thread_parts_ms()
    assert math.isclose(sum(thread.values()), gap.window_ms) and math.isclose(gap.window_ms, 4.0)
    assert math.isclose(thread["forward pass, as full batches in process"], 2.5)
    assert math.isclose(thread["forward pass beyond full batches"], 0.2)
    assert math.isclose(sum(gap.loop_parts_ms().values()), 4.0)
    assert math.isclose(gap_at(300.0, served=200.0).window_ms, 5.0)  # the answers' pace, when known
    busy = gap_at(300.0, forward_ms=5.0, rate=250.0)  # busier than the window: no idle time, never negative
    assert busy.thread_parts_ms()["idle (headroom for the objective)"] == 0.0
    assert "more than full batches" in payload.describe_gap(gap)


def test_near_ceiling_claim_breaks_far_below_it_and_skips_on_a_contended_ceiling():
    assert payload.claim_near_ceiling(gap_at(300.0), [rate_point(300)], None).held
    low = payload.claim_near_ceiling(gap_at(100.0), [rate_point(100)], None)
    assert low.outcome == claims.FAILED and "in-process ceiling of 400/s (25%)" in low.message
    assert payload.claim_near_ceiling(gap_at(100.0), [rate_point(100, contended=True)], None).skip_kind == "contended"
    assert payload.claim_near_ceiling(gap_at(300.0), [rate_point(300, contended=True)], None).held
    assert payload.claim_near_ceiling(gap_at(300.0), [rate_point(300)], 1.2).skip_kind == "contended"
    one_core = payload.claim_near_ceiling(gap_at(100.0), [rate_point(100)], None, cores=1)
    assert one_core.skip_kind == "one core" and "load generator and the event loop took" in one_core.message
    assert payload.claim_near_ceiling(gap_at(300.0), [rate_point(300)], None, cores=1).held


def test_best_point_is_the_fastest_within_the_objective():
    slow = RatePoint(500, 100, 100, 0, 0, 100, 0, 500, 0.2, 0.3, 0.001, 0.05, 1.0, 0.0, False, 1)
    points = [rate_point(100), rate_point(300), slow]
    assert rate_sweep.best_point(points, 0.1).rate == 300 and rate_sweep.best_point([slow], 0.1).rate == 500


def test_shedding_claim_breaks_when_goodput_falls_past_saturation():
    sat = 100.0
    plateau = [goodput_point(50, 48), goodput_point(100, 90), goodput_point(200, 88), goodput_point(300, 80)]
    assert overload.claim_shedding_keeps_goodput(plateau, sat).held
    collapse = [goodput_point(50, 48), goodput_point(100, 90), goodput_point(200, 20), goodput_point(300, 5)]
    assert "bounded queue" in overload.claim_shedding_keeps_goodput(collapse, sat).message
    assert overload.claim_collapse_without_shedding(collapse, sat).held
    assert "unbounded queue" in overload.claim_collapse_without_shedding(plateau, sat).message
    busy = plateau[:2] + [goodput_point(200, 20, contended=True)]
    assert overload.claim_shedding_keeps_goodput(busy, sat).skip_kind == "contended"


def test_retry_claims_break_on_a_client_that_does_not_retry_or_ignores_its_budget():
    assert overload.claim_naive_retries_multiply_load(goodput_point(200, 80, attempts=500)).held
    assert "multiply" in overload.claim_naive_retries_multiply_load(goodput_point(200, 80, attempts=210)).message
    policy = overload.BACKOFF_WITH_BUDGET
    assert overload.claim_budget_caps_retries(goodput_point(200, 80, attempts=215, sent=300), policy).held
    broken = overload.claim_budget_caps_retries(goodput_point(200, 80, attempts=400, sent=300), policy)
    assert broken.outcome == claims.FAILED and "allows" in broken.message


def test_nearest_and_peak():
    points = [goodput_point(50, 48), goodput_point(100, 90), goodput_point(200, 88)]
    assert overload.nearest(points, 190).rate == 200 and overload.peak_goodput(points) == 90


def test_both_payloads_carry_the_same_row():
    from servelab.apps import oip

    bodies = payload.request_bodies(width=16)
    rows = [oip.parse_infer_request(body, headers.get(oip.HEADER_LENGTH), 16).inputs for body, headers in bodies.values()]
    assert (rows[0] == rows[1]).all() and len(bodies["JSON"][0]) > 3 * len(bodies["binary"][0]) - 600


def test_overload_claims_skip_when_the_saturation_rate_was_measured_contended():
    plateau = [goodput_point(50, 48), goodput_point(100, 90), goodput_point(200, 88)]
    assert overload.claim_collapse_without_shedding(plateau, 100.0, saturation_busy=1.1).skip_kind == "contended"
    barely = goodput_point(200, 80, attempts=210)
    assert overload.claim_naive_retries_multiply_load(barely, saturation_busy=1.1).skip_kind == "contended"
    assert overload.claim_naive_retries_multiply_load(goodput_point(200, 80, attempts=500), saturation_busy=1.1).held


def test_the_onednn_kernel_computes_the_same_model():
    import torch

    from servelab.apps.mlp import build_mlp, forward_function

    model = build_mlp(64, 3)
    x = torch.randn(5, 64)
    with torch.inference_mode():
        assert torch.allclose(forward_function(model, "onednn")(x), model(x), atol=1e-4)
        assert forward_function(model, "dense") is model
    try:
        forward_function(model, "fast")
    except ValueError as exc:
        assert "dense, onednn" in str(exc)
    else:
        raise AssertionError("an unknown kernel must be refused")
