"""Unit tests for servelab.microbench (small sizes: these check logic, not speed)."""

import pytest
import torch

from servelab import microbench


def test_matmul_flops_counts_multiply_and_add():
    assert microbench.matmul_flops(2) == 16
    assert microbench.matmul_flops(1024) == 2 * 1024**3


def test_measure_matmul_gflops_is_positive_and_restores_threads():
    before = torch.get_num_threads()
    gflops = microbench.measure_matmul_gflops(64, threads=1, max_seconds=0.2)
    assert gflops > 0
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("n, threads", [(0, 1), (64, 0)])
def test_measure_matmul_gflops_rejects_nonsense(n, threads):
    with pytest.raises(ValueError):
        microbench.measure_matmul_gflops(n, threads)


def test_thread_scaling_has_one_point_per_thread_count():
    points = microbench.matmul_thread_scaling(n=64, max_threads=2, max_seconds=0.1)
    assert [p.threads for p in points] == [1, 2]
    assert all(p.gflops > 0 and p.outside_cores >= 0 for p in points)
