"""Unit tests for servelab.microbench (small sizes: these check logic, not speed)."""

import pytest
import torch

from servelab import microbench

FAST = {"sample_seconds": 0.002, "max_seconds": 0.1}


def test_matmul_flops_counts_multiply_and_add():
    assert microbench.matmul_flops(2) == 16
    assert microbench.matmul_flops(1024) == 2 * 1024**3


def test_gflops_converts_seconds_to_throughput():
    assert microbench.gflops(1000, 2.0) == pytest.approx(1.0)


def test_time_matmul_takes_at_least_ten_samples_and_restores_threads():
    before = torch.get_num_threads()
    timing = microbench.time_matmul(64, threads=1, **FAST)
    assert len(timing.samples) >= 10
    assert 0 < timing.best <= timing.median
    assert torch.get_num_threads() == before


def test_measure_matmul_gflops_is_positive():
    assert microbench.measure_matmul_gflops(64, threads=1, **FAST) > 0


@pytest.mark.parametrize("n, threads", [(0, 1), (64, 0)])
def test_time_matmul_rejects_nonsense(n, threads):
    with pytest.raises(ValueError):
        microbench.time_matmul(n, threads)


def test_thread_scaling_has_one_point_per_thread_count():
    points = microbench.matmul_thread_scaling(n=64, max_threads=2, **FAST)
    assert [p.threads for p in points] == [1, 2]
    assert all(p.peak_gflops >= p.gflops > 0 and p.outside_cores >= 0 for p in points)
