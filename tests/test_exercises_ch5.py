"""Chapter 5's exercise checks: right answers pass, the usual mistakes get their specific hint."""

from __future__ import annotations

import pytest

from servelab.exercises import ch5


def test_cpu_bound_throughput(capsys):
    assert ch5.check_cpu_bound_throughput(2 * 1000 / 25, cpu_ms_per_request=25, cores=2)
    assert not ch5.check_cpu_bound_throughput(1000 / 25, cpu_ms_per_request=25, cores=2)
    assert "one core" in capsys.readouterr().out
    assert not ch5.check_cpu_bound_throughput(2 / 25, cpu_ms_per_request=25, cores=2)
    assert "milliseconds" in capsys.readouterr().out
    assert not ch5.check_cpu_bound_throughput(50, cpu_ms_per_request=25, cores=2)
    assert "a time, not a rate" in capsys.readouterr().out
    assert not ch5.check_cpu_bound_throughput(None, cpu_ms_per_request=25, cores=2)
    assert "not answered" in capsys.readouterr().out


@pytest.mark.parametrize(("answer", "ok", "words"), [
    (5, True, "is right"), (32, False, "never gives a replica more"), (1, False, "How many may it hold"),
])  # fmt: skip
def test_effective_batch(capsys, answer, ok, words):
    assert ch5.check_effective_batch(answer, max_batch_size=32, max_ongoing_requests=5) is ok
    assert words in capsys.readouterr().out


def test_effective_batch_takes_the_smaller_limit(capsys):
    assert ch5.check_effective_batch(8, max_batch_size=8, max_ongoing_requests=16)
    assert not ch5.check_effective_batch(16, max_batch_size=8, max_ongoing_requests=16)
    assert "smaller one wins" in capsys.readouterr().out


def test_target_ongoing_range():
    assert ch5.target_ongoing_range(100, 15) == (3, 6)
    assert ch5.target_ongoing_range(10, 40) == (1, 1)  # never below one request


@pytest.mark.parametrize(("answer", "ok", "words"), [
    (4, True, "works"), (3, True, "works"), (6, True, "works"), (10, False, "past the objective"),
    (1, False, "Safe"), (0, False, "positive"),
])  # fmt: skip
def test_target_ongoing(capsys, answer, ok, words):
    assert ch5.check_target_ongoing(answer, slo_ms=100, service_ms=15) is ok
    assert words in capsys.readouterr().out


@pytest.mark.parametrize(("answer", "ok", "words"), [
    (5, True, "is right"), (0, False, "does not retry"), (1, False, "gunicorn sync worker"), (10, False, "Only the dead"),
])  # fmt: skip
def test_max_failed(capsys, answer, ok, words):
    assert ch5.check_max_failed(answer, max_ongoing_requests=5) is ok
    assert words in capsys.readouterr().out


@pytest.mark.parametrize(("answer", "ok", "words"), [
    (0.3, True, "right"), (300, False, "Mind the unit"), (10 / 0.030, False, "Multiply"), (5, False, "Little"),
])  # fmt: skip
def test_ongoing_at_rate(capsys, answer, ok, words):
    assert ch5.check_ongoing_at_rate(answer, rate=10, service_ms=30) is ok
    assert words in capsys.readouterr().out


@pytest.mark.parametrize(("answer", "ok", "words"), [
    (0.8, True, "right"), (0.4, False, "each replica's share"), (80, False, "fraction"), (1.25, False, "Upside down"),
    (0.1, False, "Utilisation ="),
])  # fmt: skip
def test_survivor_utilisation(capsys, answer, ok, words):
    assert ch5.check_survivor_utilisation(answer, rate=24, capacity=30) is ok
    assert words in capsys.readouterr().out


BY_ROLE = {"replica": 18.0, "proxy": 5.0, "controller": 0.5, "Ray system": 0.5}  # 24 ms: 6 outside the model


@pytest.mark.parametrize(("answer", "ok", "words"), [
    (0.25, True, "right"), (0.75, False, "the model's share"), (25, False, "fraction"),
    (5 / 24, False, "controller"), (0.5, False, "Everything but"),
])  # fmt: skip
def test_overhead_share(capsys, answer, ok, words):
    assert ch5.check_overhead_share(answer, BY_ROLE) is ok
    assert words in capsys.readouterr().out


@pytest.mark.parametrize(("answer", "ok", "words"), [
    (100, True, "right"), (500, False, "every arrival"), (10, False, "excess per second"), (300, False, "for how long"),
])  # fmt: skip
def test_excess_requests(capsys, answer, ok, words):
    assert ch5.check_excess_requests(answer, rate=50, capacity=40, seconds=10) is ok
    assert words in capsys.readouterr().out


def test_replicas_for_one_failure_rounds_only_real_fractions():
    assert ch5.replicas_for_one_failure(rate=3 * 0.8 * 30, capacity=30, max_utilisation=0.8) == 4
    assert ch5.replicas_for_one_failure(rate=73, capacity=30, max_utilisation=0.8) == 5  # 3.04 → 4, plus one


@pytest.mark.parametrize(("answer", "ok", "words"), [
    (4, True, "right"), (3, False, "Add the one"), (2, False, "Size for the moment"),
])  # fmt: skip
def test_replicas_for_failure(capsys, answer, ok, words):
    assert ch5.check_replicas_for_failure(answer, rate=72, capacity=30, max_utilisation=0.8) is ok
    assert words in capsys.readouterr().out


def test_replicas_for_failure_names_the_full_survivors(capsys):
    assert not ch5.check_replicas_for_failure(6, rate=150, capacity=30, max_utilisation=0.8)  # 6.25 → 7, plus one: 8
    assert "100%" in capsys.readouterr().out
