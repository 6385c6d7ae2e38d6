"""Chapter 4's claims hold on numbers that fit the theory and break, with their message, on numbers that do not."""

from servelab import claims, rate_sweep, roofline
from servelab.load import ClosedLoopPoint
from servelab.rate_sweep import RatePoint


def rate_point(rate: float, p99_s: float, *, sent: int = 100, answered: int = 100, errors: int = 0,
               contended: bool = False) -> RatePoint:
    return RatePoint(rate, sent, answered, sent - answered, errors, sent, sent - answered, rate, p99_s / 2, p99_s,
                     0.001, 0.05, 1.0, 0.9 if contended else 0.0, contended, 1)


def closed(p99_s: float = 0.05, contended: bool = False) -> ClosedLoopPoint:
    return ClosedLoopPoint(2, 80.0, p99_s / 2, p99_s / 2, p99_s / 2, p99_s, completed=200, errors=0, server_cores=1.0,
                           client_cores=0.1, contended=contended, tool="asyncio")


def test_accounting_breaks_on_a_lost_request_or_an_error():
    assert rate_sweep.claim_every_request_accounted([rate_point(50, 0.05)]).held
    lost = RatePoint(50, 100, 98, 1, 0, 100, 1, 50, 0.02, 0.05, 0.001, 0.05, 1.0, 0.0, False, 1)
    assert "lost or failed" in rate_sweep.claim_every_request_accounted([lost]).message
    assert "2 requests failed" in rate_sweep.claim_every_request_accounted([rate_point(50, 0.05, errors=2)]).message


def test_closed_loop_hides_queue_with_either_client():
    # The failure that was seen without wrk: 78 ms at exactly the capacity against 44 ms closed ...
    at_capacity = rate_point(80, 0.078)
    claim = rate_sweep.claim_closed_loop_hides_queue(closed(0.044), [at_capacity], 80)
    assert claim.outcome == claims.FAILED and "should queue far longer" in claim.message
    # ... and 20% over the capacity the queue shows.
    over = rate_point(96, 0.9, answered=90)
    assert rate_sweep.claim_closed_loop_hides_queue(closed(0.044), [at_capacity, over], 80).held
    assert "20% over" in rate_sweep.describe_open_vs_closed(closed(0.044), [at_capacity, over], 80)
    busy = rate_sweep.claim_closed_loop_hides_queue(closed(0.044, contended=True), [over], 80)
    assert busy.skip_kind == "contended"


def test_batching_gain_breaks_below_its_bound_and_skips_when_contended():
    quiet = [rate_point(50, 0.05)]
    assert rate_sweep.claim_batching_gain(120, 60, quiet, slo_ms=100).held
    assert "at least 1.5×" in rate_sweep.claim_batching_gain(70, 60, quiet, slo_ms=100).message
    assert rate_sweep.claim_batching_gain(70, 60, [rate_point(50, 0.05, contended=True)], slo_ms=100).skip_kind == "contended"


def test_batch_cost_claim_breaks_when_a_batch_is_not_cheaper():
    one = roofline.ForwardCost(1, 1, 0.010, 1, 1, 0.0, False)
    cheap = roofline.ForwardCost(64, 1, 0.064, 64, 1, 0.0, False)
    dear = roofline.ForwardCost(64, 1, 0.5, 64, 1, 0.0, False)
    assert roofline.claim_batch_halves_cost(one, cheap).held
    assert "should at least halve it" in roofline.claim_batch_halves_cost(one, dear).message
