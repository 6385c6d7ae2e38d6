"""roofline: the model's arithmetic, and small real measurements that only check logic."""

from __future__ import annotations

import pytest
import torch

from servelab import roofline
from servelab.apps.mlp import mlp_flops, mlp_weight_bytes


def test_ridge_and_forward_time():
    roof = roofline.Roofline(peak_gflops=80.0, bandwidth_gbs=20.0)
    assert roof.ridge_intensity == 4.0
    assert roof.ridge_batch() == 8.0, "float32: intensity = batch / 2 FLOP per byte"
    memory_s = mlp_weight_bytes() / 20e9
    assert roof.forward_seconds(1) == pytest.approx(memory_s)
    assert roof.forward_seconds(64) == pytest.approx(mlp_flops(64) / 80e9)
    assert roof.attainable_gflops(1.0) == 20.0 and roof.attainable_gflops(100.0) == 80.0


def test_forward_cost_properties():
    cost = roofline.ForwardCost(batch=8, threads=1, seconds=0.04, flops=mlp_flops(8), weight_bytes=mlp_weight_bytes(),
                                outside_cores=0.0, contended=False)  # fmt: skip
    assert cost.per_sample_s == pytest.approx(0.005)
    assert cost.samples_per_s == pytest.approx(200)
    assert cost.arithmetic_intensity == pytest.approx(8 / 2, rel=1e-3)


def test_measure_forward_costs_small_model_restores_threads():
    before = torch.get_num_threads()
    costs = roofline.measure_forward_costs([1, 4], threads=(1,), width=64, depth=2, repeats=2, max_seconds=0.1)
    assert [(c.batch, c.threads) for c in costs] == [(1, 1), (4, 1)]
    assert all(c.seconds > 0 and c.gflops > 0 for c in costs)
    assert torch.get_num_threads() == before


def test_bandwidth_is_positive():
    assert roofline.memory_bandwidth_gbs(nbytes=8 * 2**20) > 0
