"""Unit tests for servelab.microbench (small sizes: these check logic, not speed)."""

import pytest
import torch

from servelab import microbench


def test_matmul_flops_counts_multiply_and_add():
    assert microbench.matmul_flops(2) == 16
    assert microbench.matmul_flops(1024) == 2 * 1024**3


def test_gflops_converts_seconds_to_throughput():
    assert microbench.gflops(1000, 2.0) == pytest.approx(1.0)


def test_measure_matmul_gflops_is_positive_and_restores_threads():
    before = torch.get_num_threads()
    assert microbench.measure_matmul_gflops(64, threads=1, samples=3, sample_seconds=0.002) > 0
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("n, threads", [(0, 1), (64, 0)])
def test_measure_matmul_gflops_rejects_nonsense(n, threads):
    with pytest.raises(ValueError):
        microbench.measure_matmul_gflops(n, threads)


def test_thread_scaling_has_one_point_per_thread_count_and_restores_threads():
    before = torch.get_num_threads()
    points = microbench.matmul_thread_scaling(n=64, max_threads=2, rounds=3, sample_seconds=0.002)
    assert [p.threads for p in points] == [1, 2]
    assert all(p.peak_gflops >= p.gflops > 0 and p.outside_cores >= 0 for p in points)
    assert len({(p.outside_cores, p.contended) for p in points}) == 1  # one load figure for the whole sweep
    assert torch.get_num_threads() == before


def test_thread_scaling_rejects_zero_rounds():
    with pytest.raises(ValueError):
        microbench.matmul_thread_scaling(n=64, max_threads=1, rounds=0)
