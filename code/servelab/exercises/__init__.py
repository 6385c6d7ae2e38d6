"""Friendly auto-checks for the book's exercises.

Each chapter has a module here (``ch1``, ``ch2``, …) with checks such as
``check_p99(answer, latencies)``. They all go through :func:`check`, which
prints a tick or a specific hint and returns whether the answer was right,
so a teacher's grading script can use the same functions.
Taught in: every chapter's exercises.
"""

from __future__ import annotations

import math


def _close(answer: float, expected: float, rel_tol: float, abs_tol: float) -> bool:
    return math.isclose(float(answer), float(expected), rel_tol=rel_tol, abs_tol=abs_tol)


def check(
    answer: object,
    expected: object,
    *,
    rel_tol: float = 0.05,
    abs_tol: float = 0.0,
    name: str = "answer",
    hint: str = "",
) -> bool:
    """Compare a learner's answer with the expected one and say so kindly.

    Numbers match within ``rel_tol`` (relative) or ``abs_tol`` (absolute);
    anything else must be equal. ``None`` or ``...`` means "not answered yet".
    """
    if answer is None or answer is Ellipsis:
        print(f"… {name}: not answered yet. Replace the placeholder with your answer.")
        return False
    try:
        ok = _close(answer, expected, rel_tol, abs_tol)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ok = answer == expected
    if ok:
        print(f"✓ {name}: {answer!r} is right.")
    else:
        detail = f" {hint}" if hint else ""
        print(f"✗ {name}: {answer!r} is not it.{detail}")
    return ok
