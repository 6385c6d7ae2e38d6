"""Checks for the exercises of chapter 6 (serving generative models).

Each check computes the right answer itself and prints a tick or a hint aimed at the usual mistake.
Taught in: chapters/06_generative.ipynb.
"""

from __future__ import annotations

import math

from servelab import generation
from servelab.dag import LineFit
from servelab.exercises import check


def _near(a: object, b: float, rel: float = 0.02) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=rel)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def check_kv_bytes(answer: object, *, layers: int, kv_heads: int, head_dim: int, bytes_per_value: int = 2,
                   heads: int | None = None) -> bool:
    """Exercise 1: KV-cache bytes per token of a config."""
    expected = generation.kv_bytes_per_token(layers, kv_heads, head_dim, bytes_per_value)
    hint = "A key and a value, in every layer, for every KV head, of head_dim numbers of bytes_per_value bytes each."
    if _near(answer, expected / 2):
        hint = "Half of it: a token stores a key *and* a value."
    elif heads and _near(answer, expected * heads / kv_heads):
        hint = "That counts every query head; with grouped-query attention only the KV heads are stored."
    elif _near(answer, expected / bytes_per_value):
        hint = "That is a count of numbers; multiply by the bytes per number."
    return check(answer, expected, rel_tol=0.0, abs_tol=0.5, name="KV bytes per token", hint=hint)


def check_max_sequences(answer: object, *, memory_bytes: float, weight_bytes: float, tokens: int,
                        kv_per_token: int) -> bool:
    """Exercise 2: how many sequences of ``tokens`` fit next to the weights."""
    expected = generation.max_sequences(memory_bytes, weight_bytes, tokens, kv_per_token)
    hint = "(memory − weights) ÷ (tokens per sequence × KV bytes per token), rounded down."
    if _near(answer, memory_bytes // (tokens * kv_per_token), rel=0.01):
        hint = "The weights live in the same memory: subtract them first."
    elif _near(answer, (memory_bytes - weight_bytes) / (tokens * kv_per_token), rel=0.01):
        hint = "Nearly: a sequence cannot be partly stored; round down to a whole number."
    return check(answer, expected, rel_tol=0.0, abs_tol=0.0, name="concurrent sequences", hint=hint)


def check_ttft_prediction(answer_ms: object, fit: LineFit, tokens: int) -> bool:
    """Exercise 3: TTFT at ``tokens`` from the measured line (ms)."""
    expected = float(fit(tokens)) * 1e3
    hint = "Extend the line: slope (s per token) × tokens + intercept, in milliseconds."
    if _near(answer_ms, expected / 1e3, rel=0.02):
        hint = "Right number in seconds; the check wants milliseconds."
    elif _near(answer_ms, fit.slope * tokens * 1e3, rel=0.01):
        hint = "Do not forget the intercept: the fixed cost of a request before its prompt."
    return check(answer_ms, expected, rel_tol=0.02, name=f"predicted TTFT at {tokens} tokens (ms)", hint=hint)


#: Exercise 4's choices.
STATIC_TTFT_REASONS = {
    "a": "each static batch is bigger, so its prefill takes longer",
    "b": "a new request waits for the batch in flight to finish, and that batch runs until its longest member is done",
    "c": "static batching runs the model at more threads, which contend",
    "d": "static batching recomputes the prompt at every step",
}


def check_static_ttft_reason(answer: object) -> bool:
    """Exercise 4: why static batching's p99 TTFT is the first metric to break."""
    hints = {
        "a": "Prefill of a few 32-token prompts is milliseconds; the waiting is seconds. What is the new request waiting for?",
        "c": "Both engines run torch at one thread.",
        "d": "generate uses the KV cache too: after the prompt it feeds one token per step.",
    }
    key = str(answer).strip().lower()[:1] if answer not in (None, Ellipsis) else answer
    return check(key, "b", name="why static TTFT explodes first", hint=hints.get(str(key), "Pick 'a', 'b', 'c' or 'd'."))
