"""Chapter 4's exercise checks: right answers pass, the usual mistakes get their specific hint."""

from __future__ import annotations

import pytest

from servelab.apps.mlp import mlp_flops, mlp_weight_bytes
from servelab.exercises import ch4
from servelab.roofline import ForwardCost


def cost(batch: int, seconds: float) -> ForwardCost:
    return ForwardCost(batch, 1, seconds, mlp_flops(batch), mlp_weight_bytes(), 0.0, False)


COSTS = [cost(1, 0.015), cost(32, 0.070)]


def test_max_batched_rate(capsys):
    assert ch4.check_max_batched_rate(32 / 0.070, COSTS, 32)
    assert not ch4.check_max_batched_rate(1 / 0.070, COSTS, 32)
    assert "batches per second" in capsys.readouterr().out
    assert not ch4.check_max_batched_rate(1 / 0.015, COSTS, 32)
    assert "unbatched rate" in capsys.readouterr().out
    assert not ch4.check_max_batched_rate(32 / 0.015, COSTS, 32)
    assert "as much as batch 1" in capsys.readouterr().out
    assert not ch4.check_max_batched_rate(None, COSTS, 32)
    assert "not answered" in capsys.readouterr().out
    with pytest.raises(ValueError):
        ch4.check_max_batched_rate(1.0, COSTS, 64)


@pytest.mark.parametrize(("answer", "ok", "words"), [
    (25, True, "works"), (20, True, "works"), (50, False, "2 ×"), (35, False, "Close"), (5, False, "Safe"),
    (0, False, "positive"),
])  # fmt: skip
def test_aimd_target(capsys, answer, ok, words):
    assert ch4.check_aimd_target(answer, slo_ms=50) is ok
    assert words in capsys.readouterr().out


def test_closed_loop_latency(capsys):
    assert ch4.check_closed_loop_latency(8 / 100, concurrency=8, throughput=100)
    assert not ch4.check_closed_loop_latency(8 * 100, concurrency=8, throughput=100)
    assert "multiplied" in capsys.readouterr().out
    assert not ch4.check_closed_loop_latency(1 / 100, concurrency=8, throughput=100)
    assert "more in flight" in capsys.readouterr().out
    assert not ch4.check_closed_loop_latency(80, concurrency=8, throughput=100)
    assert "unit" in capsys.readouterr().out


def test_low_load_p50(capsys):
    assert ch4.check_low_load_p50(30, p50_no_wait_ms=20, max_wait_ms=10)
    assert not ch4.check_low_load_p50(20, p50_no_wait_ms=20, max_wait_ms=10)
    assert "full max_wait" in capsys.readouterr().out
    assert not ch4.check_low_load_p50(25, p50_no_wait_ms=20, max_wait_ms=10)
    assert "not half" in capsys.readouterr().out
