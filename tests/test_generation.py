"""Chapter 6's pure parts: the block allocator against contiguous reservation, the TTFT/TPOT/ITL
definitions, KV-cache arithmetic, the max rate within an objective, the claims (each one fed numbers
that break it) and the exercise checks. No server here: see test_generate_app.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from servelab import claims, generation, load
from servelab.dag import LineFit
from servelab.exercises import ch6
from servelab.generation import ContiguousAllocator, GenPoint, PagedAllocator, PromptPoint, StepPoint

# ---------------------------------------------------------------- allocators


def test_blocks_are_taken_only_when_the_last_one_fills() -> None:
    alloc = PagedAllocator(num_blocks=8, block_size=4)
    assert alloc.admit("a", 5)  # 5 tokens: 2 blocks, the second holding 1
    assert len(alloc.block_table("a")) == 2
    for _ in range(3):  # tokens 6, 7, 8 fill the second block
        assert alloc.grow("a")
    assert len(alloc.block_table("a")) == 2
    assert alloc.grow("a")  # token 9 needs a third
    assert len(alloc.block_table("a")) == 3
    assert (alloc.stored_tokens, alloc.reserved_tokens) == (9, 12)


def test_block_tables_are_disjoint_and_freed_on_completion() -> None:
    alloc = PagedAllocator(num_blocks=6, block_size=2)
    assert alloc.admit("a", 4) and alloc.admit("b", 3)
    a, b = set(alloc.block_table("a")), set(alloc.block_table("b"))
    assert not a & b and len(a | b) == 4
    assert not alloc.admit("c", 5), "5 tokens need 3 blocks; only 2 are free"
    alloc.free("a")
    assert len(alloc.free_blocks) == 4 and alloc.admit("c", 5)
    assert set(alloc.block_table("c")) & a, "freed blocks are reused"
    with pytest.raises(ValueError):
        alloc.admit("b", 1)


def test_a_full_pool_refuses_growth_without_losing_tokens() -> None:
    alloc = PagedAllocator(num_blocks=1, block_size=2)
    assert alloc.admit("a", 2)
    assert not alloc.grow("a")
    assert alloc.stored_tokens == 2


def test_contiguous_reserves_the_maximum_length() -> None:
    alloc = ContiguousAllocator(capacity_tokens=2048, max_len=1024)
    assert alloc.admit("a", 10) and alloc.admit("b", 10)
    assert not alloc.admit("c", 10), "two reservations of 1024 fill 2048"
    assert (alloc.stored_tokens, alloc.reserved_tokens) == (20, 2048)
    alloc.free("a")
    assert alloc.admit("c", 10)


def test_on_a_trace_paging_wastes_under_one_block_per_sequence_and_fits_more() -> None:
    trace = generation.request_trace(120, seed=3, max_len=512)
    block = 16
    paged = generation.simulate_memory(trace, PagedAllocator(4096 // block, block), "paged")
    contiguous = generation.simulate_memory(trace, ContiguousAllocator(4096, 512), "contiguous")  # 8 at a time
    assert paged.finished == contiguous.finished == len(trace)
    for reserved, stored, running in zip(paged.reserved, paged.stored, paged.running):
        assert 0 <= reserved - stored < block * max(running, 1)  # only the last block of each can be partly empty
    assert paged.waste < 0.1 < 0.5 < contiguous.waste
    assert paged.mean_running > contiguous.mean_running
    assert len(paged.reserved) < len(contiguous.reserved)


def test_every_trace_request_fits_the_maximum_length() -> None:
    trace = generation.request_trace(500, seed=1, max_len=1024)
    assert all(r.prompt_tokens + r.output_tokens <= 1024 and r.prompt_tokens >= 8 for r in trace)


# ---------------------------------------------------------------- metric definitions (vLLM's serve.py)


def test_ttft_itl_tpot_follow_vllm() -> None:
    record = load.StreamRecord(scheduled_s=1.0, status=200, token_times=[0.1, 0.15, 0.3, 0.35], output_tokens=4)
    assert record.ok
    assert record.ttft == pytest.approx(0.1)
    assert record.itl == pytest.approx([0.05, 0.15, 0.05])
    assert record.latency == pytest.approx(0.35)
    assert record.tpot == pytest.approx((0.35 - 0.1) / 3)
    assert record.tpot == pytest.approx(record.itl.mean())  # one token per event: TPOT is the mean ITL


def test_tpot_counts_tokens_not_events() -> None:
    # A server may send two tokens in one event: TPOT divides by the tokens, ITL sees the events.
    record = load.StreamRecord(0.0, 200, token_times=[0.1, 0.3], output_tokens=5)
    assert record.tpot == pytest.approx(0.2 / 4)
    assert record.itl.size == 1


def test_unfinished_and_one_token_records() -> None:
    unfinished = load.StreamRecord(0.0, None, token_times=[0.2], output_tokens=1, unfinished=True)
    assert not unfinished.ok and math.isinf(unfinished.latency) and math.isnan(unfinished.tpot)
    assert math.isnan(load.StreamRecord(0.0, 200, [0.1], 1).tpot)
    assert math.isinf(load.StreamRecord(0.0, 500, error="x").ttft)


def test_a_run_counts_every_request_once() -> None:
    records = [load.StreamRecord(0.0, 200, [0.1, 0.2], 2), load.StreamRecord(0.1, 400, error="bad"),
               load.StreamRecord(0.2, None, [0.3], 1, unfinished=True), load.StreamRecord(0.3, None, error="reset")]
    run = load.StreamRun(records, duration_s=1.0, wall_s=1.5, client_cpu_cores=0.1)
    assert (run.sent, run.ok, run.errors, run.unfinished) == (4, 1, 2, 1)
    assert run.tokens_per_s() == pytest.approx(2 / 1.0)
    point = generation.summarize_run("x", 4.0, run)
    assert point.accounted and math.isinf(point.ttft_p99_s) and math.isinf(point.tpot_p99_s)


def test_sse_events_parse_like_openai() -> None:
    assert load.parse_sse_line(b'data: {"choices": [{"text": " w1"}]}\n') == {"choices": [{"text": " w1"}]}
    assert load.parse_sse_line(b"data: [DONE]\n") == "[DONE]"
    assert load.parse_sse_line(b"\n") is None
    assert load.event_text({"choices": [{"delta": {"content": "hi"}}]}) == "hi"  # chat completions


def test_the_streaming_client_only_targets_loopback() -> None:
    with pytest.raises(ValueError):
        load.streams_on_schedule("http://10.0.0.1:8000/v1/completions", [0.0], [b"{}"], deadline_s=1)
    with pytest.raises(ValueError):
        load.streams_on_schedule("http://127.0.0.1:1/v1/completions", [0.0, 1.0], [b"{}"], deadline_s=1)


def test_a_refused_connection_is_an_error_not_a_loss() -> None:
    from servelab import servers

    run = load.streams_on_schedule(f"http://127.0.0.1:{servers.free_port()}/v1/completions", [0.0, 0.01],
                                   [b"{}", b"{}"], deadline_s=3)  # fmt: skip
    assert (run.sent, run.errors, run.ok) == (2, 2, 0)


# ---------------------------------------------------------------- KV-cache arithmetic


def test_kv_bytes_per_token_of_published_configs() -> None:
    assert generation.kv_bytes_per_token(32, 8, 128, 2) == 131_072  # Llama-3-8B: 128 KiB
    assert generation.kv_bytes_per_token(80, 8, 128, 2) == 327_680  # Llama-3-70B: 320 KiB
    from servelab import tinyllm
    from transformers import LlamaConfig

    assert generation.kv_bytes_per_token_of(LlamaConfig(**tinyllm.CONFIG)) == 2 * 4 * 4 * 64 * 4


def test_max_sequences_subtracts_the_weights_and_rounds_down() -> None:
    assert generation.max_sequences(80e9, 16e9, 4096, 131_072) == 119
    assert generation.max_sequences(80e9, 141e9, 4096, 327_680) == 0


def test_generation_cost_sums_interpolated_steps() -> None:
    steps = [StepPoint(1, 0.01, 0.01), StepPoint(100, 0.01, 1.0)]
    cached, uncached = generation.generation_cost(steps, 100)
    assert cached == pytest.approx(1.0)
    assert uncached == pytest.approx(sum(0.01 + (n - 1) * 0.99 / 99 for n in range(1, 101)))


# ---------------------------------------------------------------- max rate within the objective

SLO = generation.SLO(ttft_s=1.0, tpot_s=0.1)


def point(rate: float, ttft: float, tpot: float = 0.02, *, unfinished: int = 0, contended: bool = False) -> GenPoint:
    return GenPoint("continuous", rate, 10, 10 - unfinished, 0, unfinished, ttft / 2, ttft, tpot, tpot, 100 * rate,
                    0.0, contended)  # fmt: skip


def test_max_rate_interpolates_the_crossing() -> None:
    points = [point(1, 0.1), point(2, 0.5), point(4, 2.0)]
    best = generation.max_rate_within(points, SLO)
    assert 2 < best < 4
    assert best == pytest.approx(2 + 2 * (math.log(1) - math.log(0.5)) / (math.log(2.0) - math.log(0.5)))


def test_max_rate_edges() -> None:
    assert generation.max_rate_within([point(1, 2.0)], SLO) == 0.0
    assert generation.max_rate_within([point(1, 0.1), point(2, 0.2)], SLO) == 2  # a lower bound
    assert generation.max_rate_within([point(1, 0.1), point(2, 0.1, unfinished=1)], SLO) == 1
    assert generation.max_rate_within([point(1, 0.1), point(2, 0.1, tpot=0.5)], SLO) < 2  # TPOT counts too


def test_a_noisy_dip_does_not_end_the_curve_early() -> None:
    points = [point(1, 0.3), point(2, 1.1), point(3, 0.6), point(4, 3.0)]
    assert generation.max_rate_within(points, SLO) > 2


def test_workload_is_reproducible_and_bounded() -> None:
    schedule, bodies = generation.workload(8.0, 2.0, seed=5)
    again, bodies2 = generation.workload(8.0, 2.0, seed=5)
    assert np.array_equal(schedule, again) and bodies == bodies2
    assert len(bodies) == schedule.size and (schedule < 2.0).all()
    import json

    outs = [json.loads(b)["max_tokens"] for b in bodies]
    assert all(8 <= m <= 128 for m in outs) and all(json.loads(b)["stream"] for b in bodies)


# ---------------------------------------------------------------- claims: each breaks on numbers that contradict it


def prompts(ttfts: list[float], tpots: list[float]) -> list[PromptPoint]:
    return [PromptPoint(n, a, b, 3, False) for n, a, b in zip([16, 64, 256, 1024], ttfts, tpots)]


def test_prompt_claims_hold_and_break() -> None:
    good = prompts([0.02, 0.03, 0.06, 0.25], [0.010, 0.010, 0.011, 0.012])
    assert generation.claim_ttft_grows(good).held and generation.claim_tpot_flat(good).held
    flat_ttft = prompts([0.02, 0.02, 0.02, 0.03], [0.01] * 4)
    assert generation.claim_ttft_grows(flat_ttft).outcome == claims.FAILED
    growing_tpot = prompts([0.02, 0.03, 0.06, 0.25], [0.010, 0.015, 0.03, 0.04])
    claim = generation.claim_tpot_flat(growing_tpot)
    assert claim.outcome == claims.FAILED and "barely notice" in claim.message
    disturbed = [PromptPoint(p.prompt_tokens, p.ttft_s, p.tpot_s, 3, True) for p in growing_tpot]
    skipped = generation.claim_tpot_flat(disturbed)
    assert skipped.outcome == claims.SKIPPED and skipped.skip_kind == "contended" and "barely notice" in skipped.message
    assert generation.claim_tpot_flat([PromptPoint(p.prompt_tokens, p.ttft_s, p.tpot_s, 3, True) for p in good]).held


def test_cache_claim_needs_a_growing_margin() -> None:
    good = [StepPoint(16, 0.008, 0.011), StepPoint(1024, 0.009, 0.22)]
    assert generation.claim_cache_margin_grows(good).held
    shrinking = [StepPoint(16, 0.008, 0.08), StepPoint(1024, 0.009, 0.03)]
    assert generation.claim_cache_margin_grows(shrinking).outcome == claims.FAILED


def test_memory_claim_breaks_when_paging_wastes_as_much() -> None:
    paged, contiguous = generation.MemoryUse("p", [100], [97]), generation.MemoryUse("c", [100], [25])
    assert generation.claim_paged_wastes_less(paged, contiguous).held
    assert generation.claim_paged_wastes_less(generation.MemoryUse("p", [100], [60]), contiguous).outcome == claims.FAILED


def test_batching_claim_holds_breaks_and_skips() -> None:
    assert generation.claim_continuous_beats_static(1.5, 9.0, contended=False).held
    assert generation.claim_continuous_beats_static(0.0, 3.0, contended=False).held
    assert generation.claim_continuous_beats_static(2.0, 2.2, contended=False).outcome == claims.FAILED
    skipped = generation.claim_continuous_beats_static(2.0, 2.5, contended=True)
    assert skipped.outcome == claims.SKIPPED and skipped.skip_kind == "contended"


def long_run(gaps: list[float], arrival: float = 0.3, budget: int = 1024) -> generation.LongPromptRun:
    times = list(np.cumsum(gaps))
    records = [load.StreamRecord(0.0, 200, times, len(times)), load.StreamRecord(arrival, 200, [0.4, 0.41], 2)]
    return generation.LongPromptRun(budget, arrival, load.StreamRun(records, 1.0, 1.0, 0.0), long_index=1)


def test_chunked_prefill_claim_reads_the_gaps_during_the_prefill() -> None:
    whole = long_run([0.02] * 15 + [0.4] + [0.02] * 10)
    chunked = long_run([0.02] * 15 + [0.06] * 6 + [0.02] * 10, budget=128)
    assert whole.worst_gap_s() == pytest.approx(0.4)
    assert whole.typical_gap_s() == pytest.approx(0.02)
    assert generation.claim_chunked_prefill_smooths(whole, chunked).held
    assert generation.claim_chunked_prefill_smooths(whole, whole).outcome == claims.FAILED


def test_counting_and_bad_request_claims() -> None:
    lost = GenPoint("s", 1, 10, 8, 0, 1, 0, 0, 0, 0, 0, 0, False)  # one request neither answered nor counted
    assert generation.claim_every_request_counted([point(1, 0.1)]).held
    assert generation.claim_every_request_counted([lost]).outcome == claims.FAILED
    assert generation.claim_bad_requests_refused({"a": 400, "b": 422}, True).held
    assert generation.claim_bad_requests_refused({"a": 400, "b": 200}, True).outcome == claims.FAILED
    assert generation.claim_bad_requests_refused({"a": 400}, False).outcome == claims.FAILED


# ---------------------------------------------------------------- exercise checks


def test_kv_bytes_check_and_its_hints(capsys) -> None:
    kwargs = dict(layers=32, kv_heads=8, head_dim=128, bytes_per_value=2, heads=32)
    assert ch6.check_kv_bytes(131_072, **kwargs)
    assert not ch6.check_kv_bytes(65_536, **kwargs)
    assert "key *and* a value" in capsys.readouterr().out
    assert not ch6.check_kv_bytes(524_288, **kwargs)
    assert "KV heads" in capsys.readouterr().out
    assert not ch6.check_kv_bytes(None, **kwargs)


def test_max_sequences_check(capsys) -> None:
    kwargs = dict(memory_bytes=80e9, weight_bytes=14.5e9, tokens=4096, kv_per_token=131_072)
    assert ch6.check_max_sequences(122, **kwargs)
    assert not ch6.check_max_sequences(149, **kwargs)
    assert "weights" in capsys.readouterr().out


def test_ttft_prediction_check(capsys) -> None:
    fit = LineFit(slope=2.3e-4, intercept=0.015, max_residual=0.0)
    assert ch6.check_ttft_prediction((2.3e-4 * 2048 + 0.015) * 1e3, fit, 2048)
    assert not ch6.check_ttft_prediction(2.3e-4 * 2048 + 0.015, fit, 2048)
    assert "milliseconds" in capsys.readouterr().out
    assert not ch6.check_ttft_prediction(2.3e-4 * 2048 * 1e3, fit, 2048)
    assert "intercept" in capsys.readouterr().out


def test_static_reason_check() -> None:
    assert ch6.check_static_ttft_reason("b")
    assert not ch6.check_static_ttft_reason("a")
    assert not ch6.check_static_ttft_reason(None)


# ---------------------------------------------------------------- figures: labelled axes from made-up results


def axis_labels(fig) -> list[str]:
    return [ax.get_xlabel() + " / " + ax.get_ylabel() for ax in fig.axes]


def test_chapter_6_figures_have_units() -> None:
    import matplotlib

    matplotlib.use("Agg")
    pts = prompts([0.02, 0.03, 0.06, 0.25], [0.01] * 4)
    assert "time to first token (ms)" in axis_labels(generation.plot_prompt_sweep(pts, generation.ttft_line(pts)))[0]
    steps = [StepPoint(16, 0.008, 0.011), StepPoint(1024, 0.009, 0.22)]
    assert "(ms, median)" in axis_labels(generation.plot_decode_steps(steps, (1.0, 9.0), 1024))[0]
    use = generation.MemoryUse("paged", [16, 32], [10, 30], [1, 1])
    assert "KV slots (tokens)" in axis_labels(generation.plot_memory([use, use]))[0]
    sweeps = {"static": [point(1, 0.5), point(2, math.inf, unfinished=1, contended=True)], "continuous": [point(1, 0.1)]}
    fig = generation.plot_sweeps(sweeps, SLO, {"static": 1.2, "continuous": 1.0})
    assert "p99 time to first token (ms) / output tokens per second" in axis_labels(fig)[0]
    assert any("Hollow markers: 1 of" in t.get_text() for t in fig.texts)
    run = long_run([0.02] * 15 + [0.4] + [0.02] * 10)
    assert "inter-token gap (ms)" in axis_labels(generation.plot_long_prompt([run, run]))[0]


def test_describe_sweeps_builds_the_sentences_from_the_numbers() -> None:
    sweeps = {"static": [point(1, 0.5), point(2, 3.0, tpot=0.05)], "continuous": [point(1, 0.1), point(8, 0.2)]}
    text = generation.describe_sweeps(sweeps, {"static": 1.5, "continuous": 8.0}, SLO)
    assert text["continuous_rate_text"].startswith("at least 8.0")
    assert text["best_ratio_text"] == "5.3 times as many"
    assert "TTFT broke first" in text["static_last_text"] and "3000 ms (3.0×" in text["static_last_text"]
    none = generation.describe_sweeps(sweeps, {"static": 0.0, "continuous": 4.0}, SLO)
    assert none["best_ratio_text"] == "static batching met the objective at no rate we tried"
