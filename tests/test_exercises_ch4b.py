"""Chapter 4b's exercise checks: right answers pass, the usual mistakes get their specific hint."""

from __future__ import annotations

from servelab.exercises import ch4b


def test_parse_cores(capsys):
    assert ch4b.check_parse_cores(400 * 1.5 / 1e3, rate=400, parse_ms=1.5)
    assert not ch4b.check_parse_cores(400 * 1.5, rate=400, parse_ms=1.5)
    assert "milliseconds" in capsys.readouterr().out
    assert not ch4b.check_parse_cores(1e3 / 1.5, rate=400, parse_ms=1.5)
    assert "one core could parse" in capsys.readouterr().out
    assert not ch4b.check_parse_cores(None, rate=400, parse_ms=1.5)
    assert "not answered" in capsys.readouterr().out


def test_queue_bound(capsys):
    assert ch4b.expected_queue_bound(8, 25, 100) == 16
    assert ch4b.check_queue_bound(16, max_batch=8, batch_ms=25, slo_ms=100)
    assert not ch4b.check_queue_bound(32, max_batch=8, batch_ms=25, slo_ms=100)
    assert "batch in flight" in capsys.readouterr().out
    assert not ch4b.check_queue_bound(2, max_batch=8, batch_ms=25, slo_ms=100)
    assert "number of batches" in capsys.readouterr().out
    assert ch4b.expected_queue_bound(8, 60, 100) == 0.0  # a batch time over half the objective leaves no room


def test_budget_retries(capsys):
    assert ch4b.check_budget_retries(110, requests=1000, ratio=0.1, burst=10)
    assert not ch4b.check_budget_retries(100, requests=1000, ratio=0.1, burst=10)
    assert "starts with" in capsys.readouterr().out
    assert not ch4b.check_budget_retries(3000, requests=1000, ratio=0.1, burst=10)
    assert "no budget" in capsys.readouterr().out
