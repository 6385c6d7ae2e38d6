"""Checks for chapter 2's exercises: threads, processes, and what they cost in memory and CPU.

Each check compares the learner's number with the one computed from the
chapter's own measurements, and on a wrong answer names the likely mistake.
Taught in: chapters/02_gil.ipynb.
"""

from __future__ import annotations

import math

from servelab.exercises import check


def _near(a: float, b: float, rel_tol: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=rel_tol)


def _answered(answer: object) -> bool:
    return answer is not None and answer is not Ellipsis and isinstance(answer, (int, float))


def check_predicted_pss(answer: float | None, *, shared_mib: float, private_mib_per_worker: float, workers: int,
                        master_mib: float = 0.0, rel_tol: float = 0.05) -> bool:
    """Exercise: PSS (MiB) of ``workers`` preloaded workers from one worker's private (USS) and shared sizes.

    Expected: ``master + shared + workers × private``: shared pages count once
    in total, however many workers map them.
    """
    expected = master_mib + shared_mib + workers * private_mib_per_worker
    hint = "PSS splits each shared page among the processes that map it, so the shared part counts once in total."
    if _answered(answer):
        if _near(answer, master_mib + workers * (shared_mib + private_mib_per_worker), rel_tol):
            hint = "That is what summed RSS says: you counted the shared pages once per worker."
        elif _near(answer, shared_mib + private_mib_per_worker, rel_tol) or _near(
                answer, master_mib + shared_mib + private_mib_per_worker, rel_tol):
            hint = f"That is one worker; there are {workers}, each with its own private pages."
        elif _near(answer, shared_mib + workers * private_mib_per_worker, rel_tol):
            hint = "Almost: the master process holds memory too; add its PSS."
    return check(answer, expected, rel_tol=rel_tol, name="predicted PSS (MiB)", hint=hint)


def check_thread_limit(answer: float | None, *, python_ms: float, torch_ms: float, rel_tol: float = 0.1) -> bool:
    """Exercise: the thread count beyond which threads stop adding throughput (Amdahl with the GIL).

    Only one thread runs Python at a time, so throughput cannot exceed
    ``1 / python_ms`` while each thread alone does ``1 / (python_ms + torch_ms)``:
    more than ``(python_ms + torch_ms) / python_ms`` threads cannot help.
    """
    if python_ms <= 0 or torch_ms < 0:
        raise ValueError("python_ms must be > 0 and torch_ms >= 0")
    expected = (python_ms + torch_ms) / python_ms
    hint = "Throughput is capped at 1/python_ms (one thread in Python at a time); one thread gives 1/(python_ms + torch_ms)."
    if _answered(answer):
        if _near(answer, torch_ms / python_ms, rel_tol):
            hint = "Close, but each request's time includes its Python part too: (python + torch) / python."
        elif _near(answer, python_ms / (python_ms + torch_ms), rel_tol):
            hint = "That is the Python share of a request; the thread limit is its inverse."
        elif _near(answer, (python_ms + torch_ms) / torch_ms, rel_tol):
            hint = "The GIL serialises the Python part, not the torch part: divide by python_ms."
    return check(answer, expected, rel_tol=rel_tol, name="thread limit", hint=hint)


def check_oversubscription_penalty(answer: float | None, *, cpu_ms_default: float, cpu_ms_one: float,
                                   abs_tol: float = 1.0) -> bool:
    """Exercise: extra CPU per request (percent) with torch's default threads instead of 1 per worker.

    Expected: ``100 × (cpu_ms_default / cpu_ms_one − 1)``.
    """
    expected = 100.0 * (cpu_ms_default / cpu_ms_one - 1.0)
    hint = "Compare CPU-milliseconds per request, default threads over 1 thread, as a percentage above 100%."
    if _answered(answer):
        if _near(answer, cpu_ms_default / cpu_ms_one, 0.02) or _near(answer, 1 + expected / 100, 0.02):
            hint = "That is the ratio; give the extra CPU as a percentage (ratio − 1) × 100."
        elif math.isclose(answer, -expected, abs_tol=abs_tol) or math.isclose(
                answer, 100.0 * (cpu_ms_one / cpu_ms_default - 1.0), abs_tol=abs_tol):
            hint = "Wrong way round: how much MORE CPU does the default-threads set-up need per request?"
    return check(answer, expected, rel_tol=0.0, abs_tol=abs_tol, name="oversubscription penalty (%)", hint=hint)


def check_rss_overstatement(answer: float | None, *, workers_rss_mib: float, workers_pss_mib: float,
                            rel_tol: float = 0.05) -> bool:
    """Exercise: by what factor does summed RSS overstate the workers' real memory (their summed PSS)?"""
    expected = workers_rss_mib / workers_pss_mib
    hint = "Divide the workers' summed RSS by their summed PSS."
    if _answered(answer) and answer and _near(answer, workers_pss_mib / workers_rss_mib, rel_tol):
        hint = "Upside down: RSS is the bigger number, so the factor is above 1."
    return check(answer, expected, rel_tol=rel_tol, name="RSS overstatement factor", hint=hint)
