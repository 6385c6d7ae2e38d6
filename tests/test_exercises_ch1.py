"""Chapter 1's exercise checks: right answers pass, the usual mistakes get their specific hint."""

from __future__ import annotations

import numpy as np
import pytest

from servelab import stats, tail
from servelab.exercises import ch1

RNG = np.random.default_rng(7)
LATENCIES = RNG.lognormal(np.log(0.003), 0.4, size=2000) + np.where(RNG.random(2000) < 0.02, 0.03, 0.0)


def test_p99_right_answers(capsys: pytest.CaptureFixture[str]) -> None:
    assert ch1.check_p99(stats.percentile(LATENCIES, 99), LATENCIES)
    ordered = np.sort(LATENCIES)
    assert ch1.check_p99(ordered[int(np.ceil(0.99 * ordered.size)) - 1], LATENCIES)  # nearest rank
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, words",
    [
        (float(np.mean(LATENCIES)), "mean"),
        (float(np.median(LATENCIES)), "median"),
        (stats.percentile(LATENCIES, 95), "p95"),
        (float(LATENCIES.max()), "maximum"),
        (1e3 * stats.percentile(LATENCIES, 99), "milliseconds"),
        (float(LATENCIES[int(0.99 * (LATENCIES.size - 1))]), "Sort"),
    ],
)
def test_p99_hints(wrong: float, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert not ch1.check_p99(wrong, LATENCIES)
    assert words in capsys.readouterr().out


def test_p99_unanswered(capsys: pytest.CaptureFixture[str]) -> None:
    assert not ch1.check_p99(None, LATENCIES)
    assert "not answered" in capsys.readouterr().out


def test_page_p99(capsys: pytest.CaptureFixture[str]) -> None:
    right = stats.percentile(LATENCIES, 100 * 0.99 ** (1 / 5))
    assert right == tail.predicted_page_quantile(LATENCIES, 5, 0.99)
    assert ch1.check_page_p99(right, LATENCIES, 5)
    assert not ch1.check_page_p99(stats.percentile(LATENCIES, 100 * 0.99**5), LATENCIES, 5)
    assert "0.99**5" in capsys.readouterr().out
    assert not ch1.check_page_p99(5 * stats.percentile(LATENCIES, 99), LATENCIES, 5)
    assert "one after another" in capsys.readouterr().out


def test_slo_concurrency(capsys: pytest.CaptureFixture[str]) -> None:
    assert ch1.check_slo_concurrency(40, concurrency=8, p99_s=0.02)  # 8 * 0.1 / 0.02
    assert ch1.check_slo_concurrency(41, concurrency=8, p99_s=0.02)  # rounded up is fine
    assert not ch1.check_slo_concurrency(1.6, concurrency=8, p99_s=0.02)
    assert "Upside down" in capsys.readouterr().out


def test_smartphone_loss(capsys: pytest.CaptureFixture[str]) -> None:
    assert ch1.check_smartphone_loss(1 - 0.929**5)
    assert not ch1.check_smartphone_loss(0.355)
    assert "multiplies" in capsys.readouterr().out
    assert not ch1.check_smartphone_loss(100 * (1 - 0.929**5))
    assert "fraction" in capsys.readouterr().out


def test_p99_check_echoes_the_answer_and_rejects_the_gap_between_samples(capsys):
    outlier = [0.01] * 99 + [1.0]
    assert not ch1.check_p99(0.5, outlier)  # between two samples, but no usual definition gives it
    assert "0.5" in capsys.readouterr().out
    assert ch1.check_p99(0.0199, outlier)  # linear interpolation
    assert "0.0199 is right" in capsys.readouterr().out
    assert ch1.check_p99(0.01, outlier)  # nearest rank
    assert not ch1.check_p99(0.03, outlier)
