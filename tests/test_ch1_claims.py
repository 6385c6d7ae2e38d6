"""Chapter 1's claims: each holds on made-up numbers shaped like the chapter's, and breaks on numbers
that do not fit, with its plain-words message."""

import numpy as np
import pytest

from servelab import claims, conversion, tail
from servelab.conversion import PublishedPoint
from servelab.load import ClosedLoopPoint
from servelab.tail import HedgeComparison, PageRun

K_VALUES = [1, 2, 4, 8]


def point(c: int, p50: float, p99: float, *, errors=0, outside=0.05) -> ClosedLoopPoint:
    return ClosedLoopPoint(c, 300.0, p50, p50, 0.9 * p99, p99, completed=500, errors=errors, server_cores=1.9,
                           client_cores=0.3, outside_cores=outside, contended=outside > 0.5)


def sweep(p99_top=0.040, **kwargs) -> list[ClosedLoopPoint]:
    """A hockey stick on 2 cores: concurrency 1, 2, 4, 6, 8."""
    return [point(1, 0.005, 0.008), point(2, 0.006, 0.010), point(4, 0.011, 0.018), point(6, 0.017, 0.028),
            point(8, 0.022, p99_top, **kwargs)]


def page_run(k: int, page_ms: list[float], outside=0.05) -> PageRun:
    pages = np.asarray(page_ms) / 1e3
    return PageRun(k, pages, np.repeat(pages, k), 2.0, 0.2, outside, outside > 0.5)


def fanout(medians=(1.0, 1.4, 1.9, 2.6), means=(1.5, 2.5, 4.0, 7.0)) -> dict[int, PageRun]:
    """Three pages per k whose median and mean are exactly the given milliseconds (mean >= median)."""
    return {k: page_run(k, [med, med, 3 * mean - 2 * med]) for k, med, mean in zip(K_VALUES, medians, means)}


def test_a_good_sweep_holds_every_claim():
    points = sweep()
    found = [tail.claim_sweep_no_errors(points), tail.claim_sweep_percentiles_ordered(points),
             tail.claim_sweep_reaches_queue(points, 2), tail.claim_p99_grows_under_load(points, 2)]
    assert all(c.held for c in found), [c for c in found if not c.held]


def test_broken_sweeps_fail_with_their_message():
    assert "answered with errors" in tail.claim_sweep_no_errors(sweep(errors=3)).message
    assert "the percentiles are broken" in tail.claim_sweep_percentiles_ordered(sweep(p99_top=0.010)).message
    assert "should reach 4 × the 4 usable cores" in tail.claim_sweep_reaches_queue(sweep(), 4).message
    flat = tail.claim_p99_grows_under_load(sweep(p99_top=0.011, outside=0.9), 2)
    assert flat.outcome == claims.FAILED and "only 1.38× p99" in flat.message and "0.90 cores" in flat.message


def test_page_latency_claims_follow_the_pages():
    runs = fanout()
    assert runs[4].page_percentile(50) == pytest.approx(1.9e-3) and runs[8].page_latencies.mean() == pytest.approx(7e-3)
    assert tail.claim_page_median_grows(runs, K_VALUES).held and tail.claim_page_mean_grows(runs, K_VALUES).held
    stuck = tail.claim_page_median_grows(fanout(medians=(1.0, 1.4, 1.45, 2.6)), K_VALUES)
    assert stuck.outcome == claims.FAILED and "1.45 ms at k = 4 and 1.40 ms at k = 2" in stuck.message
    same = tail.claim_page_mean_grows(fanout(means=(1.5, 2.0, 2.5, 2.9)), K_VALUES)
    assert same.outcome == claims.FAILED and "only 1.93× k = 1" in same.message


def test_fanout_must_multiply_slow_pages():
    assert tail.claim_fanout_multiplies_slow_pages(0.15, 0.02).held
    assert tail.claim_fanout_multiplies_slow_pages(0.0, 0.0).held  # no stalls at all: nothing to multiply
    claim = tail.claim_fanout_multiplies_slow_pages(0.04, 0.02)
    assert claim.outcome == claims.FAILED and "4.0% of 8-call pages were slow against 2.0%" in claim.message


def test_the_formula_band_is_wider_only_for_a_contended_run():
    ratios = {1: {50: 1.0, 99: 1.02}, 8: {50: 0.97, 99: 0.52}}
    claim = tail.claim_fanout_formula(ratios, contended=False, outside_cores=0.1)
    assert claim.outcome == claims.FAILED and "at k = 8 the measured page p99 is 0.52×" in claim.message
    busy = tail.claim_fanout_formula(ratios, contended=True, outside_cores=0.9)
    assert busy.held and "±55%" in busy.bound and "0.90 cores" in busy.bound
    assert not tail.claim_fanout_formula({8: {50: 1.6}}, contended=True, outside_cores=0.9).held


def hedging(plain_tail_ms: float, hedged_tail_ms: float, hedges=10) -> HedgeComparison:
    """200 plain and 200 hedged calls of 2 ms, 4 of each stalled to the given milliseconds."""
    def calls(stall_ms):
        return np.array([2e-3] * 196 + [stall_ms / 1e3] * 4)
    return HedgeComparison(3e-3, calls(plain_tail_ms), calls(hedged_tail_ms), hedges, 0.05)


def test_hedging_claims():
    good = hedging(40, 3)
    assert tail.claim_hedging_cuts_p99(good).held and tail.claim_hedging_extra_load(good).held
    weak = tail.claim_hedging_cuts_p99(hedging(40, 35))
    assert weak.outcome == claims.FAILED and "should cut the stall-dominated tail" in weak.message
    eager = tail.claim_hedging_extra_load(hedging(40, 3, hedges=60))
    assert eager.outcome == claims.FAILED and "30.0% extra requests" in eager.message


def test_the_conversion_model_must_give_back_its_published_points():
    assert conversion.claim_reproduces_published().held
    wrong = PublishedPoint("akamai2017", "smartphone", 100, -0.09)  # not what the fit was made from
    claim = conversion.claim_reproduces_published([*conversion.PUBLISHED, wrong])
    assert claim.outcome == claims.FAILED and "misses the published point" in claim.message and "-0.09" in claim.message
