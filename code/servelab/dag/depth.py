"""Graph depth: trace a model for a length T and take the longest path through its graph.

Part of :mod:`servelab.dag`. Taught in: chapters/03_dag.ipynb.
"""

from __future__ import annotations

import operator
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported anywhere
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import fx, nn

from servelab.models import UnrolledLSTM, tokens
from servelab.progress import progress


_CALLS = ("call_function", "call_module", "call_method")


def is_op(node: fx.Node) -> bool:
    """Whether a graph node does work: a call, but not unpacking a tuple (``getitem``)."""
    return node.op in _CALLS and node.target is not operator.getitem


@dataclass(frozen=True)
class GraphStats:
    """Size and depth of a traced graph, counted in ops."""

    ops: int  # all ops: the work a single thread must issue one after another
    depth: int  # ops on the longest path: what no amount of parallel hardware can overlap


def op_levels(graph: fx.Graph) -> dict[fx.Node, int]:
    """For every node, the number of ops on the longest path that ends at it (itself included)."""
    # fx graphs list nodes in topological order, so one pass finds every longest path.
    level: dict[fx.Node, int] = {}
    for node in graph.nodes:
        before = max((level[n] for n in node.all_input_nodes), default=0)
        level[node] = before + is_op(node)
    return level


def graph_stats(graph: fx.Graph) -> GraphStats:
    """Op count and longest path (in ops) of an fx graph."""
    level = op_levels(graph)
    return GraphStats(ops=sum(is_op(n) for n in graph.nodes), depth=max(level.values(), default=0))


def critical_path(graph: fx.Graph) -> list[fx.Node]:
    """The ops on one longest path, from the inputs to the output."""
    level = op_levels(graph)
    node = max(graph.nodes, key=lambda n: level[n])
    path = []
    while True:
        if is_op(node):
            path.append(node)
        inputs = node.all_input_nodes
        if not inputs:
            break
        node = max(inputs, key=lambda n: level[n])
    return path[::-1]


def export_graph(model: nn.Module, length: int, *, decompose: bool = False) -> fx.Graph:
    """The ATen graph ``torch.export`` records for a ``(1, length)`` input.

    ``decompose=True`` lowers it to the smaller core-ATen ops (``run_decompositions``),
    which turns fused ops such as ``aten.lstm`` back into their per-step pieces.
    """
    with torch.no_grad(), warnings.catch_warnings():
        # nn.LSTM re-assigns its flat weights during export, and pytree warns about
        # a deprecation inside torch itself: neither changes the graph.
        warnings.filterwarnings("ignore", message=".*were assigned during export.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        program = torch.export.export(model, (tokens(length),), strict=False)
        if decompose:
            program = program.run_decompositions()
    return program.graph


def module_graph(model: UnrolledLSTM, length: int) -> fx.Graph:
    """The unrolled RNN at module granularity (one node per LSTMCell call), via ``fx.symbolic_trace``.

    Symbolic tracing cannot read a tensor's length, so the loop count is passed in as a Python int.
    """
    return fx.symbolic_trace(model, concrete_args={"steps": length}).graph


@dataclass(frozen=True)
class DepthPoint:
    """One traced graph: which model, at what granularity, for what input length."""

    model: str
    T: int
    ops: int
    depth: int


def depth_sweep(tracers: dict[str, Callable[[int], fx.Graph]], lengths: dict[str, Sequence[int]]) -> list[DepthPoint]:
    """Trace every model at each of its lengths and count ops and depth."""
    runs = [(name, trace, length) for name, trace in tracers.items() for length in lengths[name]]
    points = []
    for name, trace, length in progress(runs, desc="tracing", unit="graph"):
        g = graph_stats(trace(length))
        points.append(DepthPoint(name, length, g.ops, g.depth))
    return points


@dataclass(frozen=True)
class LineFit:
    """``y ≈ slope · x + intercept``, and how far the worst point is from the line."""

    slope: float
    intercept: float
    max_residual: float

    def __call__(self, x: float | np.ndarray) -> float | np.ndarray:
        return self.slope * np.asarray(x) + self.intercept


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> LineFit:
    """Least-squares straight line through the points (exact lines have max_residual ≈ 0)."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if len(x) < 2 or np.ptp(x) == 0:
        return LineFit(0.0, float(y.mean()), float(np.ptp(y)))
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(np.abs(y - (slope * x + intercept)).max())
    slope = 0.0 if abs(slope) < 1e-9 else float(slope)  # polyfit leaves -1e-16 on a flat line
    return LineFit(slope, float(intercept), residual)
