"""Checks for the exercises of chapter 3 (the compute DAG of an RNN and of BERT).

Each check computes the right answer itself (by tracing a model, or from the
latency model the chapter fitted) and prints a tick or a hint.
Taught in: chapters/03_dag.ipynb.
"""

from __future__ import annotations

import math

from servelab import dag, models
from servelab.exercises import check


def stacked_rnn_depth(T: int, layers: int) -> int:
    """The traced depth of the unrolled LSTM with ``layers`` stacked cells (the reference answer)."""
    model = models.build("unrolled", width=32, layers=layers)
    return dag.graph_stats(dag.module_graph(model, T)).depth


def check_stacked_depth(answer: object, *, T: int = 32, layers: int = 2) -> bool:
    """Exercise 1: the depth of an unrolled RNN with ``layers`` layers at length ``T``."""
    expected = stacked_rnn_depth(T, layers)
    if isinstance(answer, (int, float)) and answer >= layers * T:
        hint = ("Layer 2 at token t waits for layer 1 at token t, but layer 1 can already run token t+1 "
                "meanwhile: the layers form a grid, not one chain per layer. Count the longest path through it.")
    else:
        hint = ("One layer alone is T + 3 deep (embedding, first slice, T cells, head). "
                "What does each extra layer add to the longest path?")
    return check(answer, expected, rel_tol=0, abs_tol=0, name=f"depth of a {layers}-layer RNN at T={T}", hint=hint)


def check_bert_gflops(answer: object, *, T: int = 1024, layers: int = 4, width: int = 256) -> bool:
    """Exercise 2: BERT's FLOPs at length ``T``, in GFLOP."""
    expected = float(dag.bert_flops(T, layers, width)) / 1e9
    hint = (f"Use L·(24·T·d² + 4·T²·d) with L={layers}, d={width}, T={T}, then divide by 1e9. "
            "Which of the two terms is bigger at this T?")
    return check(answer, expected, rel_tol=0.02, name=f"GFLOP of BERT-{layers}L-{width} at T={T}", hint=hint)


def check_crossover(answer: object, costs: dict[str, dag.ModelCosts], machine: dag.Machine, cores: int) -> bool:
    """Exercise 3: the length where BERT overtakes the unrolled RNN on ``cores`` cores."""
    imagined = dag.imagined(machine, f"{cores} cores", cores)
    expected = dag.predicted_crossover(costs["unrolled"], costs["bert"], imagined)
    if expected is None:  # BERT never wins below a million tokens
        return check(answer, math.inf, name=f"crossover T on {cores} cores",
                     hint="The model says BERT never overtakes the loop here: answer math.inf.")
    hint = ("Build the machine with dag.imagined(machine, 'name', cores), then call "
            "dag.predicted_crossover(costs['unrolled'], costs['bert'], that_machine).")
    return check(answer, expected, rel_tol=0.10, name=f"crossover T on {cores} cores", hint=hint)


#: Exercise 4's choices.
FUSED_REASONS = {
    "a": "nn.LSTM does fewer FLOPs than the LSTMCell loop",
    "b": "nn.LSTM's graph is shallower, so the recurrence no longer runs token by token",
    "c": "nn.LSTM runs as one op: no per-op cost for every token, the input side of all tokens as one matmul, "
         "and each step's matrix-vector product spread over the cores",
    "d": "nn.LSTM skips the tokens it does not need for the last position",
}


def check_fused_reason(answer: object) -> bool:
    """Exercise 4: why the fused LSTM beats the loop although both recur over every token."""
    hints = {
        "a": "Count them: both do 8·T·H·(E+H) FLOPs; the arithmetic is identical.",
        "b": "Its export graph is 4 ops deep, but decompose it and the chain of T steps is back: "
             "the recurrence still runs token by token, inside one kernel.",
        "d": "Every token changes the hidden state the last position reads; nothing can be skipped.",
    }
    key = str(answer).strip().lower()[:1] if answer not in (None, Ellipsis) else answer
    return check(key, "c", name="why nn.LSTM is fast", hint=hints.get(str(key), "Pick one of 'a', 'b', 'c', 'd'."))
