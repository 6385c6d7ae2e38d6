"""Chapter 0's claims: each holds on numbers that fit, and breaks on numbers that do not, with its
plain-words message; contended and single-core sweeps skip with the measured reason."""

from servelab import claims, hardware, microbench
from servelab.microbench import ThreadPoint


def sweep(gflops=(60.0, 115.0), *, outside=0.05, contended=False) -> list[ThreadPoint]:
    """A matmul sweep like the chapter's: median and (a bit faster) fastest round per thread count."""
    return [ThreadPoint(t + 1, g, 1.05 * g, outside, contended) for t, g in enumerate(gflops)]


def test_the_hardware_table_claims():
    table = {key: "x" for key in hardware.TABLE_ROWS}
    assert hardware.claim_table_rows(table).held
    del table["BLAS"]
    claim = hardware.claim_table_rows(table)
    assert claim.outcome == claims.FAILED and "lost its 'BLAS' row" in claim.message
    assert hardware.claim_table_rows(hardware.describe()).held  # the real table, on this machine
    assert hardware.claim_usable_cores(2).held
    assert "no core at all" in hardware.claim_usable_cores(0).message


def test_a_sweep_that_skips_a_thread_count_fails():
    assert microbench.claim_sweep_covers_cores(sweep(), 2).held
    claim = microbench.claim_sweep_covers_cores(sweep()[:1], 2)
    assert claim.outcome == claims.FAILED and "every thread count from 1 to the 2 usable cores" in claim.message


def test_a_slow_single_thread_is_a_broken_measurement():
    assert microbench.claim_single_thread_gflops(sweep()[0]).held
    claim = microbench.claim_single_thread_gflops(sweep((0.8, 1.5))[0])
    assert claim.outcome == claims.FAILED and "only 0.80 GFLOP/s" in claim.message
    assert not microbench.claim_single_thread_gflops(sweep((1.0, 2.0))[0]).held  # "more than 1", not "at least"


def test_a_matmul_that_does_not_scale_fails_on_a_quiet_machine():
    assert microbench.claim_matmul_scales(sweep((60.0, 115.0))).held
    claim = microbench.claim_matmul_scales(sweep((60.0, 70.0)))
    assert claim.outcome == claims.FAILED and "only 1.17× one thread" in claim.message
    assert not microbench.claim_matmul_scales(sweep((60.0, 78.0))).held  # exactly 1.3× is not "more than"


def test_contended_and_single_core_sweeps_skip_with_the_reason():
    busy = microbench.claim_matmul_scales(sweep((60.0, 70.0), outside=1.35, contended=True))
    assert busy.outcome == claims.SKIPPED and busy.skip_kind == "contended" and "1.35 cores" in busy.message
    alone = microbench.claim_matmul_scales(sweep((60.0,)))
    assert alone.skip_kind == "one core"
