"""Chapter 3's claims: each one holds on made-up numbers that fit the theory, and breaks on numbers
that do not, with its plain-words message. Both CPU types the book was tried on are covered: one
where the LSTMCell loop gains nothing from a second core, one where it gains about 2×."""

import pytest

from servelab import claims, dag
from servelab.dag import DepthPoint, LatencyPoint

LENGTHS = [16, 64, 256, 1024]


def sweep(loop_gain: float, bert_gains=(1.2, 1.4, 1.6, 1.85), *, step_s=1.4e-4, loop_fixed_s=2e-4,
          contended=()) -> list[LatencyPoint]:
    """Latency points shaped like the chapter's: a linear loop, a fused LSTM and BERT."""
    points = []
    for T, bert_gain in zip(LENGTHS, bert_gains):
        one = {"unrolled": loop_fixed_s + step_s * T, "fused": 1e-4 + 1.6e-5 * T, "bert": 3e-3 + 9e-5 * T}
        gain = {"unrolled": loop_gain, "fused": 1.4, "bert": bert_gain}
        for name, s in one.items():
            for n in (1, 2):
                busy = (name, T, n) in contended
                points.append(LatencyPoint(name, T, n, s / (gain[name] if n == 2 else 1), 0.9 if busy else 0.0, busy))
    return points


@pytest.mark.parametrize("loop_gain", [0.95, 1.9])
def test_every_latency_claim_holds_on_both_cpu_types(loop_gain):
    points = sweep(loop_gain)
    found = [dag.claim_loop_latency_linear(points, 1), dag.claim_loop_latency_linear(points, 2),
             dag.claim_bert_gains_from_cores(points, 1024, 2), dag.claim_bert_gain_grows(points, LENGTHS, 2),
             dag.claim_loop_gain_flat(points, LENGTHS, 2), dag.claim_fused_beats_bert(points)]
    assert all(c.held for c in found), [c for c in found if not c.held]


def test_a_loop_whose_gain_grows_with_T_breaks_the_flat_gain_claim():
    points = [p if not (p.model == "unrolled" and p.threads == 2 and p.T == 1024)
              else LatencyPoint(p.model, p.T, 2, p.seconds / 1.6, 0, False) for p in sweep(1.0)]
    claim = dag.claim_loop_gain_flat(points, LENGTHS, 2)
    assert claim.outcome == claims.FAILED and "cannot gain more from more cores" in claim.message


def test_a_curved_loop_breaks_the_linearity_claim():
    points = [LatencyPoint(p.model, p.T, p.threads, p.seconds * (p.T / 64) ** 0.5 if p.model == "unrolled" else p.seconds,
                           0, False) for p in sweep(1.0)]
    claim = dag.claim_loop_latency_linear(points, 1)
    assert claim.outcome == claims.FAILED and "the same per token at every length" in claim.message


def test_bert_that_does_not_gain_breaks_both_bert_claims():
    points = sweep(1.0, bert_gains=(1.1, 1.1, 1.1, 1.1))
    assert "expected >= 1.25" in dag.claim_bert_gains_from_cores(points, 1024, 2).message
    assert "more to share" in dag.claim_bert_gain_grows(points, LENGTHS, 2).message


def test_slow_fused_lstm_breaks_its_claim():
    points = [LatencyPoint(p.model, p.T, p.threads, p.seconds * 100 if p.model == "fused" else p.seconds, 0, False)
              for p in sweep(1.0)]
    assert "always wins" in dag.claim_fused_beats_bert(points).message


def test_contended_and_single_core_runs_skip_with_the_reason():
    points = sweep(1.0, contended={("bert", 1024, 2)})
    assert dag.claim_bert_gains_from_cores(points, 1024, 2).held  # load only lowers a gain: a pass stands
    slow = sweep(1.0, bert_gains=(1.1, 1.1, 1.1, 1.1), contended={("bert", 1024, 2)})
    claim = dag.claim_bert_gains_from_cores(slow, 1024, 2)  # ... and a failure under load is not the model's
    assert claim.outcome == claims.SKIPPED and claim.skip_kind == "contended" and "0.90 cores" in claim.message
    assert "expected >= 1.25" in claim.message
    assert dag.claim_bert_gain_grows(points, LENGTHS, 2).skip_kind == "contended"  # two-sided: no verdict under load
    one_core = [p for p in sweep(1.0) if p.threads == 1]
    assert dag.claim_loop_gain_flat(one_core, LENGTHS, 1).skip_kind == "one core"
    assert dag.claim_loop_latency_linear(one_core, 1).held  # the chain is linear on one core too


def test_model_claim_breaks_on_a_bad_prediction_and_skips_when_calibration_was_busy():
    points = sweep(1.0)
    assert dag.claim_model_explains(points, [1.0] * len(points), calibration_contended=False).held
    bad = dag.claim_model_explains(points, [1.0] * (len(points) - 1) + [3.0], calibration_contended=False)
    assert bad.outcome == claims.FAILED and "more than 2.5×" in bad.message
    assert dag.claim_model_explains(points, [9.0] * len(points), calibration_contended=True).skip_kind == "contended"


def test_depth_claims_break_on_a_wrong_graph():
    loop = [DepthPoint("RNN loop (modules)", T, 0, T + 3) for T in (8, 32, 128)]
    assert dag.claim_loop_depth_linear(loop).held
    loop[1] = DepthPoint("RNN loop (modules)", 32, 0, 40)
    assert "exactly linear" in dag.claim_loop_depth_linear(loop).message
    bert = [DepthPoint("BERT-4L", T, 0, d) for T, d in ((8, 78), (32, 78), (128, 80))]
    assert "same at every T" in dag.claim_bert_depth_constant(bert).message


@pytest.mark.parametrize("loop_gain,words", [(0.95, "gained almost nothing"), (1.9, "gained too"),
                                             (1.18, "only in part")])
def test_the_gain_paragraph_follows_the_numbers(loop_gain, words):
    gains = dag.gains_by_length(sweep(loop_gain), ["unrolled", "bert"], LENGTHS, 2)
    text = dag.describe_gains(gains, LENGTHS, 2)
    assert words in text and f"{gains['unrolled'][-1]:.2f}×" in text
    assert "one usable core" in dag.describe_gains({}, LENGTHS, 1)


def test_linearity_is_judged_per_token_so_a_noisy_short_input_does_not_break_it():
    # The quiet run where a line through all points missed T = 16 by 20%: each segment still cost ~150 µs/token.
    points = [LatencyPoint("unrolled", T, 1, s, 0.0, False) for T, s in ((16, 3.1e-3), (64, 10.1e-3), (256, 38.9e-3),
                                                                          (1024, 152.0e-3))]
    claim = dag.claim_loop_latency_linear(points, 1)
    assert claim.held, claim


def test_flat_gain_claim_skips_when_threads_slow_the_short_loop():
    """0.71x at T=64 and 0.95x at T=1024 (an AMD EPYC): the growth is threading overhead amortised."""
    points = [LatencyPoint(p.model, p.T, 2, p.seconds * {64: 1 / 0.71, 1024: 1 / 0.95}.get(p.T, 1.0), 0, False)
              if p.model == "unrolled" and p.threads == 2 else p for p in sweep(1.0)]
    claim = dag.claim_loop_gain_flat(points, LENGTHS, 2)
    assert claim.outcome == claims.SKIPPED and claim.skip_kind == "hardware", claim
