"""How deep is a model's compute graph, and does depth decide latency?

An RNN must finish token ``t`` before it starts token ``t + 1``: its graph is
a chain as long as the input. BERT runs a fixed stack of layers over all
tokens at once: its graph's depth does not depend on the input length. This
module measures both halves of that claim:

- *depth*: trace a model for a given length ``T`` (``torch.export`` or
  ``torch.fx.symbolic_trace``) and take the longest path through the graph;
- *latency*: time the forward pass at 1 and at all usable threads, retrying
  points that other programs disturbed;

and builds a small latency model (fixed cost + T × step time + matmul FLOPs ÷
peak) from micro-benchmarks, which explains the curves and predicts where they
cross on bigger machines. ``python -m servelab.dag --base-table`` re-measures the stored
base-size table in ``servelab/data``. Taught in: chapters/03_dag.ipynb.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported anywhere

import contextlib  # noqa: E402
import math  # noqa: E402
import operator  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import asdict, dataclass, replace  # noqa: E402
from typing import Callable, Iterator, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import fx, nn  # noqa: E402

from servelab import claims, contention, hardware, microbench, plots, stats  # noqa: E402
from servelab.models import Shape, UnrolledLSTM, tokens  # noqa: E402

# ---------------------------------------------------------------- graph depth

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
    points = []
    for name, trace in tracers.items():
        for length in lengths[name]:
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


# ---------------------------------------------------------------- latency


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def thread_counts() -> list[int]:
    """1 thread and all usable cores (just [1] on a single core)."""
    return sorted({1, hardware.usable_cores()})


@dataclass(frozen=True)
class LatencyPoint:
    """Median latency of one forward pass, with the outside load seen while measuring it."""

    model: str
    T: int
    threads: int
    seconds: float
    outside_cores: float
    contended: bool


def median_forward_seconds(model: nn.Module, x: torch.Tensor, *, repeats: int = 5, min_seconds: float = 0.15,
                           max_seconds: float = 2.0) -> float:
    """Median seconds of ``model(x)`` (no warm-up here: the caller warms up).

    At least ``repeats`` calls, and more until ``min_seconds`` have passed, so a
    short burst of outside work cannot move the median of a fast call; at
    most ``max_seconds`` (one call always runs).
    """
    samples: list[float] = []
    start = time.perf_counter()
    with torch.inference_mode():
        while True:
            t0 = time.perf_counter()
            model(x)
            samples.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            if (len(samples) >= repeats and elapsed >= min_seconds) or elapsed >= max_seconds or len(samples) >= 200:
                return float(np.median(samples))


def block_medians(model: nn.Module, x: torch.Tensor, threads: Sequence[int], *, rounds: int = 3, repeats: int = 5,
                  max_seconds: float = 2.0) -> dict[int, float]:
    """Median seconds of ``model(x)`` at each thread count, in blocks 1, n, 1, n, ... (``rounds`` of them).

    Each block is a warm-up call and then at least ``repeats`` calls at one
    thread count (a warm thread pool, as a server has). Other work on a shared
    machine only ever slows a block down, and cannot always be seen from inside
    a virtual machine; so each count keeps the faster of its block medians.
    """
    best: dict[int, float] = {}
    for _ in range(rounds):
        for n in threads:
            with torch_threads(n):
                with torch.inference_mode():
                    model(x)  # thread pools start lazily
                median = median_forward_seconds(model, x, repeats=repeats, min_seconds=0.1, max_seconds=max_seconds)
            best[n] = min(best.get(n, math.inf), median)
    return best


def latency_sweep(
    models: dict[str, nn.Module],
    lengths: Sequence[int],
    threads: Sequence[int] | None = None,
    *,
    repeats: int = 5,
    max_seconds: float = 2.0,
) -> list[LatencyPoint]:
    """Latency of every model at every length and thread count.

    For each model and length: one warm-up call (oneDNN builds its kernels for
    a new shape on the first call), then the thread counts measured side by
    side in alternating blocks (:func:`block_medians`), re-measured while other
    programs load the machine.
    """
    threads = list(threads or thread_counts())
    points = []
    for T in lengths:
        x = tokens(T)
        for name, model in models.items():
            with torch.inference_mode():
                model(x)
            m = contention.measure_uncontended(  # two retries: enough for a burst, bounded if the load stays
                lambda: block_medians(model, x, threads, repeats=repeats, max_seconds=max_seconds), retries=2)
            points += [LatencyPoint(name, T, n, m.value[n], m.outside_cores, m.contended) for n in threads]
    return points


def lookup(points: Sequence[LatencyPoint], model: str, T: int, threads: int) -> LatencyPoint:
    """The point measured for ``model`` at length ``T`` and ``threads``."""
    for p in points:
        if (p.model, p.T, p.threads) == (model, T, threads):
            return p
    raise KeyError((model, T, threads))


def speedup(points: Sequence[LatencyPoint], model: str, T: int, threads: int) -> float:
    """How many times faster ``threads`` threads ran ``model`` than one thread did."""
    return lookup(points, model, T, 1).seconds / lookup(points, model, T, threads).seconds


def crossover(lengths: Sequence[float], a_seconds: Sequence[float], b_seconds: Sequence[float]) -> float | None:
    """The first length where curve ``b`` becomes faster than curve ``a`` (log-log interpolation).

    ``None`` if ``b`` is never faster; the first length if it is faster everywhere.
    """
    logs = np.log(np.asarray(lengths, float))
    gap = np.log(np.asarray(b_seconds, float)) - np.log(np.asarray(a_seconds, float))
    if gap[0] < 0:
        return float(lengths[0])
    for i in range(1, len(gap)):
        if gap[i] < 0 <= gap[i - 1]:
            frac = gap[i - 1] / (gap[i - 1] - gap[i])
            return float(np.exp(logs[i - 1] + frac * (logs[i] - logs[i - 1])))
    return None


# ---------------------------------------------------------------- latency model


def bert_flops(T: int | np.ndarray, layers: int, width: int) -> float | np.ndarray:
    """FLOPs of a BERT encoder on T tokens: L·(24·T·d² + 4·T²·d) (dense layers + attention)."""
    T = np.asarray(T, float)
    return layers * (24 * T * width**2 + 4 * T**2 * width)


def lstm_flops(T: int | np.ndarray, input_width: int, hidden: int) -> float | np.ndarray:
    """FLOPs of one LSTM layer over T tokens: 8·T·H·(E+H) (four gates, two matrices each)."""
    return 8 * np.asarray(T, float) * hidden * (input_width + hidden)


def count_launched_ops(model: nn.Module, x: torch.Tensor) -> int:
    """How many ATen ops eager PyTorch runs for ``model(x)``: the ops one thread issues one by one."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            Counter.count += 1
            return func(*args, **(kwargs or {}))

    # no_grad, not inference_mode: under inference_mode a composite op such as
    # lstm_cell reaches the counter whole, though it still runs its pieces one by one.
    with torch.no_grad(), Counter():
        model(x)
    return Counter.count


def fastest_seconds(fn: Callable[[], object], *, tries: int = 10) -> float:
    """The fastest of ``tries`` timed calls of ``fn``, after two warm-up calls.

    A rate is what the machine can do, and outside work only ever slows a call
    down, so we keep the fastest.
    """
    fn()
    fn()
    best = math.inf
    for _ in range(tries):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_op_seconds(repeats: int = 7) -> float:
    """Median time of one bare eager op (``a + a`` on one number), for comparison with a model's per-op cost."""
    a = torch.ones(1)
    batch = 200

    def ops() -> None:
        for _ in range(batch):
            a + a  # noqa: B018  (the op itself is what we time)

    with torch.inference_mode():
        return stats.time_call(ops, warmup=2, repeats=repeats).median / batch


def weight_pass_seconds(weights: Sequence[torch.Tensor], threads: int = 1, *, rows: int = 1, tries: int = 10) -> float:
    """Seconds to push ``rows`` input rows through each weight matrix once: the time to stream the weights.

    With one row (a matrix-vector product) each weight does 2 FLOPs per 4 bytes, so
    this runs at the speed weights arrive from cache or memory, far below the matmul
    peak. With two rows BLAS switches to its matrix-multiply path, which also copies
    (packs) the weights: that is what a many-row layer pays for its weights.
    """
    if not weights:
        return 0.0
    inputs = {w.shape[1]: torch.randn(1, rows, w.shape[1]) for w in weights}
    fn = nn.functional.linear

    def one_pass() -> None:
        for w in weights:
            fn(inputs[w.shape[1]], w)

    with torch.inference_mode(), torch_threads(threads):
        return fastest_seconds(one_pass, tries=tries)


def recurrent_step_seconds(hidden: int, threads: int = 1, *, steps: int = 64, tries: int = 10) -> float:
    """Seconds per step of oneDNN's fused LSTM recurrence alone (``nn.LSTM`` with a 1-wide input).

    With one input feature the input side costs nothing, so what is timed is
    each step's matrix-vector product with the hidden weights, and its gates.
    """
    lstm = nn.LSTM(1, hidden, batch_first=True).eval()
    x = torch.zeros(1, steps, 1)
    with torch.inference_mode(), torch_threads(threads):
        return fastest_seconds(lambda: lstm(x), tries=tries) / steps


def _weights(name: str, model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """A model's weight matrices by how they are used: in a many-row matmul, in one-row products
    once per call (the head reads only the last position), or once per token (an RNN's step)."""
    head = [model.head.weight.detach()]
    if name == "unrolled":
        cells = [w.detach() for c in model.cells for w in (c.weight_ih, c.weight_hh)]
        return {"matmul": [], "vector": head, "per_token": cells}
    if name == "fused":
        lstm, layers = model.lstm, range(model.lstm.num_layers)
        return {"matmul": [getattr(lstm, f"weight_ih_l{i}").detach() for i in layers], "vector": head,
                "per_token": [getattr(lstm, f"weight_hh_l{i}").detach() for i in layers]}
    encoder = [m.weight.detach() for m in model.bert.modules() if isinstance(m, nn.Linear)]
    return {"matmul": encoder, "vector": head, "per_token": []}


def _nbytes(weights: Sequence[torch.Tensor]) -> int:
    return int(sum(w.numel() * w.element_size() for w in weights))


@dataclass(frozen=True)
class ModelCosts:
    """What the latency model knows about one model: counted from it, or measured on this machine.

    Costs that grow with T come from micro-benchmarks; the fixed cost of one
    call is measured on the model itself at T = 2 (by thread count).
    """

    name: str
    shape: Shape
    ops_fixed: float  # eager ops per call ...
    ops_per_token: float  # ... and per input token
    overhead_per_token_s: float  # running one token's ops with tiny tensors (a width-16 twin, 1 thread)
    bytes_once: int  # weights read once per call
    bytes_per_token: int  # weights read again for every token (an RNN's step)
    stream_once_s: dict[int, float]  # measured time to stream bytes_once, by thread count
    stream_per_token_s: dict[int, float]  # ... and bytes_per_token
    fixed_s: dict[int, float]  # one call's cost that does not grow with T, measured at T = 2
    steps_split_over_cores: bool  # oneDNN's fused LSTM splits each step's product (used on imagined machines)
    contended: bool = False  # other programs were busy while fixed_s was measured, even after retries

    def ops(self, T: int | np.ndarray) -> np.ndarray:
        """Eager ops one call runs."""
        return self.ops_fixed + self.ops_per_token * np.asarray(T, float)

    def overhead_fixed_s(self, threads: int = 1) -> float:
        """The fixed cost that is not weight streaming: running the ops (Python, dispatch, small tensors)."""
        return max(0.0, _at_most(self.fixed_s, threads) - _at_most(self.stream_once_s, threads))

    @property
    def seconds_per_op(self) -> float:
        """Fixed overhead per op, at 1 thread."""
        return self.overhead_fixed_s(1) / self.ops_fixed if self.ops_fixed else 0.0

    def matmul_flops(self, T: int | np.ndarray) -> np.ndarray:
        """FLOPs done in many-row matrix multiplies (the part that can use every core at peak)."""
        s = self.shape
        if s.kind == "bert":
            return bert_flops(T, s.layers, s.width)
        if self.name == "fused":  # the input side of all tokens is one matmul
            return lstm_flops(T, s.width, s.width) / 2 * s.layers
        return 0.0 * np.asarray(T, float)  # the unrolled loop only does matrix-vector products


def measure_overhead_per_token(name: str, layers: int, *, tries: int = 10) -> float:
    """Seconds per token that a width-16 twin of the model spends beyond its first token, on one thread.

    With 16-wide tensors the arithmetic and the weights are negligible: what is
    left is the cost of running each token's ops (Python, dispatch, allocation).
    Zero for models that run the same ops at every length.
    """
    from servelab import models

    twin = models.build(name, width=16, layers=layers)
    if count_launched_ops(twin, tokens(1)) == count_launched_ops(twin, tokens(2)):
        return 0.0
    with torch_threads(1), torch.inference_mode():
        short = fastest_seconds(lambda: twin(tokens(1)), tries=tries)
        long = fastest_seconds(lambda: twin(tokens(9)), tries=tries)
    return max(0.0, (long - short) / 8)


def _step_seconds(costs: ModelCosts, stream_s: float, *, split_over: int = 1, launch_s: float | None = None) -> float:
    """Seconds each extra token adds, besides matmul FLOPs."""
    overhead = costs.overhead_per_token_s
    if launch_s is not None:
        overhead = max(overhead, costs.ops_per_token * launch_s)
    if costs.steps_split_over_cores:  # oneDNN splits each step's matrix-vector product over the cores
        stream_s /= split_over
        if launch_s is not None:  # step t+1 waits for step t: no step beats one launch
            stream_s = max(stream_s, launch_s)
    return overhead + stream_s


def model_costs(name: str, model: nn.Module, machine: "Machine", threads: Sequence[int] | None = None,
                rounds: int = 3) -> ModelCosts:
    """Count a model's ops and weight bytes; time its overhead, weight streaming and fixed cost per thread count.

    Every timing is taken in ``rounds`` rounds, a fraction of a second apart, and
    the fastest kept: a slow spell of a shared machine, which a virtual machine
    cannot always see, then has to last the whole measurement to spoil it.
    """
    threads = list(threads or thread_counts())
    one, two = count_launched_ops(model, tokens(1)), count_launched_ops(model, tokens(2))
    weights = _weights(name, model)
    x = tokens(2)
    inf = {n: math.inf for n in threads}
    once, per_token, at_two, overhead, contended = dict(inf), dict(inf), dict(inf), math.inf, False
    for _ in range(rounds):
        overhead = min(overhead, measure_overhead_per_token(name, model.shape.layers))
        for n in threads:
            once[n] = min(once[n], weight_pass_seconds(weights["matmul"], n, rows=2) +
                          weight_pass_seconds(weights["vector"], n))
            per_token[n] = min(per_token[n], recurrent_step_seconds(model.shape.width, n) if name == "fused"
                               else weight_pass_seconds(weights["per_token"], n))
        m = contention.measure_uncontended(lambda: block_medians(model, x, threads, rounds=1, repeats=10), retries=2)
        at_two = {n: min(at_two[n], m.value[n]) for n in threads}
        contended = contended or m.contended
    partial = ModelCosts(
        name=name, shape=model.shape, ops_fixed=2 * one - two, ops_per_token=two - one,
        overhead_per_token_s=overhead, bytes_once=_nbytes(weights["matmul"] + weights["vector"]),
        bytes_per_token=_nbytes(weights["per_token"]), stream_once_s=once, stream_per_token_s=per_token,
        fixed_s={}, steps_split_over_cores=name == "fused", contended=contended,
    )
    growing = {n: 2 * _step_seconds(partial, per_token[n]) + float(partial.matmul_flops(2)) / machine.peak(n)
               for n in threads}
    return replace(partial, fixed_s={n: max(0.0, at_two[n] - growing[n]) for n in threads})


@dataclass(frozen=True)
class Machine:
    """The machine-wide rates of the latency model.

    ``peak_flops`` maps a thread count to the matmul FLOP/s measured with it;
    counts not measured get ``threads × peak_flops[1]``. ``bandwidth`` (bytes/s)
    replaces the measured weight-streaming times, and ``launch_seconds`` puts a
    floor under every op (a GPU kernel launch): that is how we imagine a machine
    we do not have.
    """

    name: str
    cores: int
    peak_flops: dict[int, float]
    bandwidth: float | None = None
    launch_seconds: float | None = None
    measured: bool = True
    contended: bool = False  # other programs were busy while the peak was measured, even after retries

    def peak(self, threads: int) -> float:
        """Matmul FLOP/s with ``threads`` threads."""
        return self.peak_flops.get(threads, threads * self.peak_flops[1])


def layer_flops_per_second(weights: Sequence[torch.Tensor], threads: int = 1, *, rows: int = 256) -> float:
    """Matmul FLOP/s when ``rows`` tokens go through these weight matrices at once.

    This is the peak that matters for a model: thin layers (a width of 256)
    reach less of the machine than the big square matrices of the setup chapter.
    """
    seconds = weight_pass_seconds(weights, threads, rows=rows, tries=5)
    return 2 * rows * sum(w.numel() for w in weights) / seconds


def measure_machine(layer_weights: Sequence[torch.Tensor], threads: Sequence[int] | None = None) -> Machine:
    """This machine's matmul peak for layers like ``layer_weights``, at 1 and all usable threads."""
    threads = list(threads or thread_counts())
    peak, contended = {n: 0.0 for n in threads}, False
    for _ in range(3):  # rounds a fraction of a second apart: keep the fastest, as for every rate
        for n in threads:
            m = contention.measure_uncontended(lambda: layer_flops_per_second(layer_weights, n))
            peak[n], contended = max(peak[n], m.value), contended or m.contended
    return Machine("this machine", max(threads), peak, contended=contended)


def encoder_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight matrices of a model's transformer layers (what ``measure_machine`` times)."""
    return _weights("bert", model)["matmul"]


def _at_most(by_threads: dict[int, float], threads: int) -> float:
    # An imagined machine streams weights no faster than the most threads we measured.
    return by_threads[max(n for n in by_threads if n <= threads)]


def predict_seconds(costs: ModelCosts, T: int | np.ndarray, machine: Machine, threads: int | None = None) -> np.ndarray:
    """latency ≈ fixed cost + T × (per-token ops + per-token weight stream) + matmul FLOPs ÷ (cores × peak).

    The fixed cost is op overhead plus streaming the weights read once. On a CPU
    one thread runs the ops, waits for weights and multiplies, so the costs add.
    ``threads`` defaults to the machine's cores.
    """
    T = np.asarray(T, float)
    cores = threads or machine.cores
    if machine.measured:
        fixed = _at_most(costs.fixed_s, cores)
        step = _step_seconds(costs, costs.stream_per_token_s[cores])
    else:  # measured overhead, imagined streaming and launches
        overhead = costs.overhead_fixed_s(min(cores, max(costs.fixed_s)))
        if machine.launch_seconds is not None:
            overhead = max(overhead, costs.ops_fixed * machine.launch_seconds)
        if machine.bandwidth is None:  # weights stream no faster than with the most threads we measured
            fixed = overhead + _at_most(costs.stream_once_s, cores)
            step = _step_seconds(costs, _at_most(costs.stream_per_token_s, cores))
        else:
            fixed = overhead + costs.bytes_once / machine.bandwidth
            step = _step_seconds(costs, costs.bytes_per_token / machine.bandwidth, split_over=cores,
                                 launch_s=machine.launch_seconds)
    return fixed + T * step + costs.matmul_flops(T) / machine.peak(cores)


def imagined(machine: Machine, name: str, cores: int, *, peak_flops_per_core: float | None = None,
             bandwidth: float | None = None, launch_seconds: float | None = None) -> Machine:
    """A machine like this one with ``cores`` cores, each as fast as one of ours unless told otherwise."""
    per_core = peak_flops_per_core or machine.peak_flops[1]
    return Machine(name, cores, {1: per_core}, bandwidth, launch_seconds, measured=False)


def stream_rate(costs: ModelCosts, threads: int = 1) -> float:
    """The rate (bytes/s) at which ``costs``' once-per-call weights streamed."""
    return costs.bytes_once / costs.stream_once_s[threads]


def predicted_crossover(a: ModelCosts, b: ModelCosts, machine: Machine, max_T: int = 1_000_000) -> float | None:
    """The length where model ``b`` becomes faster than ``a`` on ``machine`` (None below ``max_T``)."""
    lengths = np.unique(np.geomspace(1, max_T, 400).round())
    return crossover(lengths, predict_seconds(a, lengths, machine), predict_seconds(b, lengths, machine))


def model_error(points: Sequence[LatencyPoint], costs: dict[str, ModelCosts], machine: Machine) -> list[float]:
    """measured ÷ predicted for every latency point (1.0 = perfect)."""
    return [p.seconds / float(predict_seconds(costs[p.model], p.T, machine, p.threads)) for p in points]


# ---------------------------------------------------------------- generation


def generation_seconds(model: nn.Module, prompt: torch.Tensor, new_tokens: int, *, use_cache: bool) -> float:
    """Seconds to greedily generate ``new_tokens`` tokens after ``prompt``, with or without the KV cache.

    Either way it is ``new_tokens`` forward passes one after another: each
    needs the token the previous one chose.
    """
    with torch.inference_mode():
        start = time.perf_counter()
        seq = prompt
        out = model(seq, use_cache=use_cache)
        for _ in range(new_tokens - 1):
            nxt = out.logits[:, -1:].argmax(-1)
            if use_cache:
                out = model(nxt, cache=out.cache, use_cache=True)  # only the new token; keys/values of the rest are cached
            else:
                seq = torch.cat([seq, nxt], dim=1)
                out = model(seq, use_cache=False)
        return time.perf_counter() - start


# ---------------------------------------------------------------- claims (chapter 3's check cell)
# What the depth argument predicts on *any* machine, checked against this machine's numbers. How much
# one LSTMCell step gains from a second core is a fact about the CPU and its BLAS (0.93-0.98x on one
# 2-core Xeon, 1.6-2.2x on another), so no claim depends on it; what depth does predict is that the
# loop's latency is a chain of T equal steps, and that its gain from more cores cannot grow with T.


def claim_loop_depth_linear(points: Sequence[DepthPoint], model: str = "RNN loop (modules)") -> claims.Claim:
    """The unrolled loop's traced depth is exactly a·T + b with a ≥ 1."""
    pts = [p for p in points if p.model == model]
    fit = fit_line([p.T for p in pts], [p.depth for p in pts])
    a, b = round(fit.slope), round(fit.intercept)
    exact = a >= 1 and all(p.depth == a * p.T + b for p in pts)
    return claims.condition(
        "ch3.loop_depth_linear", "The RNN loop's graph depth is exactly linear in T (one step per token).", exact,
        measured=f"{a}·T + {b}", bound="exact, slope ≥ 1",
        fail=f"the unrolled RNN's depth should be exactly linear in T with slope >= 1; got {[(p.T, p.depth) for p in pts]}")


def claim_bert_depth_constant(points: Sequence[DepthPoint], model: str = "BERT-4L") -> claims.Claim:
    """BERT's traced depth is the same at every T."""
    depths = sorted({p.depth for p in points if p.model == model})
    return claims.condition(
        "ch3.bert_depth_constant", "BERT's graph depth is the same at every input length.", len(depths) == 1,
        measured=", ".join(map(str, depths)), bound="one value",
        fail=f"BERT's depth should be the same at every T, got {depths}")


def linearity_error(points: Sequence[LatencyPoint], model: str, threads: int) -> tuple[LineFit, float]:
    """Fit latency = a + b·T to one model at one thread count; the worst relative miss of the fit."""
    pts = sorted((p for p in points if p.model == model and p.threads == threads), key=lambda p: p.T)
    fit = fit_line([p.T for p in pts], [p.seconds for p in pts])
    return fit, max(abs(float(fit(p.T)) / p.seconds - 1) for p in pts)


def claim_loop_latency_linear(points: Sequence[LatencyPoint], threads: int, *, model: str = "unrolled",
                              tolerance: float = 0.2) -> claims.Claim:
    """The loop's latency is a + b·T (a chain of T steps of constant time) at ``threads`` threads."""
    claim_id = f"ch3.loop_latency_linear_{threads}t"
    sentence = f"With {threads} thread(s) the LSTMCell loop's latency grows linearly in T: a chain of T equal steps."
    pts = [p for p in points if p.model == model and p.threads == threads]
    if threads > 1 and any(p.contended for p in pts):
        return claims.skipped(claim_id, sentence, kind="contended",
                              reason=f"other programs took up to {max(p.outside_cores for p in pts):.2f} cores "
                                     f"while the {threads}-thread loop was timed")
    fit, miss = linearity_error(points, model, threads)
    ok = fit.slope > 0 and miss <= tolerance
    return claims.condition(
        claim_id, sentence, ok, measured=f"{fit.slope * 1e6:.0f} µs/token, worst miss {miss:.0%}",
        bound=f"slope > 0, miss ≤ {tolerance:.0%}",
        fail=f"with {threads} thread(s) a straight line a + b·T misses the loop's latency by {miss:.0%} "
             f"(slope {fit.slope * 1e6:.1f} µs per token); a chain of T equal steps should be linear in T")


def _multicore_skip(claim_id: str, sentence: str, pts: Sequence[LatencyPoint], cores: int) -> claims.Claim | None:
    if cores < 2:
        return claims.skipped(claim_id, sentence, kind="one core", reason="only 1 usable core: nothing to compare")
    busy = [p for p in pts if p.contended]
    if busy:
        return claims.skipped(claim_id, sentence, kind="contended",
                              reason=f"other programs took up to {max(p.outside_cores for p in busy):.2f} cores "
                                     f"during {len(busy)} of the {len(pts)} points it needs, after retries")
    return None


def _pts(points: Sequence[LatencyPoint], models: Sequence[str], lengths: Sequence[int], cores: int) -> list[LatencyPoint]:
    return [lookup(points, m, T, n) for m in models for T in lengths for n in sorted({1, cores})]


def claim_bert_gains_from_cores(points: Sequence[LatencyPoint], T: int, cores: int, *,
                                bound: float = 1.25) -> claims.Claim:
    """All cores make BERT at least ``bound`` times faster at length ``T``: its matmuls split over them."""
    claim_id, sentence = "ch3.bert_gains_from_cores", f"At T = {T}, all cores make BERT faster: its matrix multiplies split."
    skip = _multicore_skip(claim_id, sentence, _pts(points, ["bert"], [T], cores), cores)
    if skip:
        return skip
    gain = speedup(points, "bert", T, cores)
    return claims.at_least(claim_id, sentence, gain, bound,
                           fail=f"all {cores} cores made BERT only {gain:.2f}× faster at T={T}; its matrix "
                                f"multiplies should split over the cores (expected >= {bound}×)")


def claim_bert_gain_grows(points: Sequence[LatencyPoint], lengths: Sequence[int], cores: int, *,
                          bound: float = 1.15) -> claims.Claim:
    """BERT's gain from more cores grows with T: a longer input gives every op more rows to share."""
    short, long = lengths[0], lengths[-1]
    claim_id = "ch3.bert_gain_grows"
    sentence = f"BERT's gain from more cores grows with the input (T = {short} → {long}): its width grows with T."
    skip = _multicore_skip(claim_id, sentence, _pts(points, ["bert"], [short, long], cores), cores)
    if skip:
        return skip
    growth = speedup(points, "bert", long, cores) / speedup(points, "bert", short, cores)
    return claims.at_least(claim_id, sentence, growth, bound,
                           fail=f"BERT's speedup from {cores} cores was {speedup(points, 'bert', short, cores):.2f}× "
                                f"at T={short} and {speedup(points, 'bert', long, cores):.2f}× at T={long} "
                                f"({growth:.2f}× growth); more tokens should give its matrix multiplies more to share")


def claim_loop_gain_flat(points: Sequence[LatencyPoint], lengths: Sequence[int], cores: int, *,
                         band: float = 1.2) -> claims.Claim:
    """The loop's gain from more cores does not grow with T: each step may split, the chain cannot.

    ``lengths`` are compared from the second one on: at the shortest input the embedding and the
    head, not the chain, are a large part of the time.
    """
    middle, long = lengths[1], lengths[-1]
    claim_id = "ch3.loop_gain_flat"
    sentence = (f"The LSTMCell loop's gain from more cores is the same at T = {middle} and {long}: "
                "extra cores can shorten each step, never the chain of T steps.")
    skip = _multicore_skip(claim_id, sentence, _pts(points, ["unrolled"], [middle, long], cores), cores)
    if skip:
        return skip
    first, last = speedup(points, "unrolled", middle, cores), speedup(points, "unrolled", long, cores)
    growth = last / first
    return claims.condition(
        claim_id, sentence, 1 / band <= growth <= band, measured=f"{first:.2f}× → {last:.2f}× ({growth:.2f}×)",
        bound=f"growth within {1 / band:.2f}–{band:.2f}×",
        fail=f"the loop's speedup from {cores} cores went from {first:.2f}× at T={middle} to {last:.2f}× at "
             f"T={long}; a chain of equal steps should gain the same at every length")


def claim_fused_beats_bert(points: Sequence[LatencyPoint]) -> claims.Claim:
    """The fused nn.LSTM is faster than BERT-4L at every measured length and thread count."""
    worst = max(p.seconds / lookup(points, "bert", p.T, p.threads).seconds for p in points if p.model == "fused")
    return claims.at_most("ch3.fused_beats_bert", "The fused nn.LSTM beats BERT-4L at every length we tried.",
                          worst, 1.0, fail=f"the fused LSTM took up to {worst:.2f}× BERT's time; the text says it always wins")


def claim_model_explains(points: Sequence[LatencyPoint], ratios: Sequence[float], *, calibration_contended: bool,
                         factor: float = 2.0) -> claims.Claim:
    """The latency model predicts every quiet point within ``factor``."""
    claim_id, sentence = "ch3.model_explains", f"The latency model predicts every point within {factor:.0f}×."
    if calibration_contended:
        return claims.skipped(claim_id, sentence, kind="contended",
                              reason="other programs took CPU while the model was calibrated")
    quiet = [(p, r) for p, r in zip(points, ratios) if not p.contended]
    if not quiet:
        return claims.skipped(claim_id, sentence, kind="contended", reason="every latency point stayed contended")
    worst = max(max(r, 1 / r) for _, r in quiet)
    bad = [(p.model, p.T, p.threads, round(r, 2)) for p, r in quiet if not 1 / factor <= r <= factor]
    return claims.at_most(claim_id, sentence, worst, factor,
                          fail=f"the latency model missed these points by more than {factor:.0f}× (measured/predicted): {bad}")


# ---------------------------------------------------------------- what the chapter shows


def gains_by_length(points: Sequence[LatencyPoint], models: Sequence[str], lengths: Sequence[int],
                    cores: int) -> dict[str, list[float]]:
    """Each model's speedup from 1 thread to ``cores`` threads, at each length."""
    return {m: [speedup(points, m, T, cores) for T in lengths] for m in models}


def describe_gains(gains: dict[str, list[float]], lengths: Sequence[int], cores: int) -> str:
    """The paragraph that reads the speedups, built from the numbers so it never contradicts them."""
    if cores < 2:
        return ("With one usable core there is no second thread to compare, so this run cannot show how "
                "the models use more cores. Run the chapter on all cores to see it.")
    loop, bert = gains["unrolled"], gains["bert"]
    if loop[-1] >= 1.25:
        how = (f"On this CPU the loop gained too, {loop[-1]:.2f}×: each step's matrix-vector product (one row "
               "through the cell's weights) is big enough that PyTorch splits it over the cores. On other CPUs, "
               "with other caches and BLAS builds, the same step stays on one core and the loop gains nothing.")
    elif loop[-1] <= 1.1:
        how = (f"On this CPU the loop gained almost nothing, {loop[-1]:.2f}×: PyTorch runs each step's one-row "
               "product on one core, and nothing else in the step can run beside it. On other CPUs, with other "
               "caches and BLAS builds, the same step does split over the cores.")
    else:
        how = (f"On this CPU the loop gained {loop[-1]:.2f}×: each step's one-row product splits over the cores "
               "only in part. How much it splits depends on the CPU's caches and BLAS, not on the model.")
    shape = (f"What depth predicts is the *shape*. The loop's gain was {loop[1]:.2f}× at T = {lengths[1]} and "
             f"{loop[-1]:.2f}× at T = {lengths[-1]}: more cores can make each step shorter, never the chain of T "
             f"steps, so the gain cannot grow with the input. BERT's gain went from {bert[0]:.2f}× at "
             f"T = {lengths[0]} to {bert[-1]:.2f}× at T = {lengths[-1]}: a longer input gives each of its ops more "
             "rows to share, so its graph grows wider with T, not deeper.")
    return how + " " + shape


def plot_latency(points: Sequence[LatencyPoint], lengths: Sequence[int], labels: dict[str, str],
                 colors: dict[str, str], crossovers: dict[int, float | None]) -> "plots.Figure":
    """Latency against input length for every model, at 1 thread (dashed) and all cores (solid)."""
    fig, ax = plots.figure()
    for name in labels:
        for n in sorted({p.threads for p in points}):
            pts = [lookup(points, name, T, n) for T in lengths]
            plots.line_with_contended(ax, lengths, [p.seconds * 1e3 for p in pts], [p.contended for p in pts],
                                      color=colors[name], marker="o" if n > 1 else "s", ls="-" if n > 1 else "--",
                                      alpha=1 if n > 1 else 0.6, label=f"{labels[name]}, {n} thread(s)")
    for n, T in crossovers.items():
        if T and lengths[0] < T:
            ax.axvline(T, color=plots.COLORS["predicted"], lw=0.8, ls=":")
            ax.annotate(f" loop = BERT,\n {n} thread(s)", (T, ax.get_ylim()[1]), fontsize=8, va="top")
    ax.set(xscale="log", yscale="log")
    ax.set_xticks(lengths, [str(T) for T in lengths], minor=False)
    ax.legend(fontsize=7.5, loc="lower right")
    plots.label(ax, "input length T (tokens)", "latency (ms, median)", "Next-token latency against input length")
    plots.caption(fig, "Dashed: 1 thread; solid: all usable cores. Dotted line: where BERT overtakes the loop. "
                  + plots.contended_note(points))
    return fig


def plot_gains(gains: dict[str, list[float]], lengths: Sequence[int], labels: dict[str, str],
               colors: dict[str, str], cores: int) -> "plots.Figure":
    """Each model's speedup from 1 thread to all cores, against input length."""
    fig, ax = plots.figure()
    for name, values in gains.items():
        ax.plot(lengths, values, "o-", color=colors[name], label=labels[name])
    ax.axhline(1, color=plots.COLORS["predicted"], lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xticks(lengths, [str(T) for T in lengths], minor=False)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    plots.label(ax, "input length T (tokens)", f"speedup, 1 → {cores} threads (×)",
                "What more cores buy, against input length")
    plots.caption(fig, "Speedup = latency on 1 thread ÷ latency on all usable cores. Dotted: no gain.")
    return fig


# ---------------------------------------------------------------- stored base-size table

BASE_TABLE = "dag_base_table"


def base_table_models() -> dict[str, tuple[str, nn.Module]]:
    """The base-size models: BERT-base, equal-width LSTMs, and a FLOP-matched LSTM.

    The FLOP-matched LSTM has BERT-4L-256's non-embedding parameters (8H² = 4·12·256²),
    so it does the same FLOPs per token.
    """
    from servelab import models

    matched = round(math.sqrt(4 * 12 * 256**2 / 8))
    return {
        "BERT-base (12L-768)": ("bert", models.build("bert", 768, 12)),
        "LSTM-768 loop": ("unrolled", models.build("unrolled", 768)),
        "LSTM-768 fused": ("fused", models.build("fused", 768)),
        "BERT-4L-256": ("bert", models.build("bert", 256, 4)),
        f"LSTM-{matched} loop (FLOP-matched)": ("unrolled", models.build("unrolled", matched)),
        f"LSTM-{matched} fused (FLOP-matched)": ("fused", models.build("fused", matched)),
    }


def measure_base_table(lengths: Sequence[int] = (16, 64, 256, 1024), repeats: int = 3) -> list[dict]:
    """Latency of the base-size models at 1 and all threads, with achieved GFLOP/s."""
    rows = []
    for label, (kind, model) in base_table_models().items():
        points = latency_sweep({label: model}, lengths, repeats=repeats, max_seconds=30.0)
        s = model.shape
        for p in points:
            flops = bert_flops(p.T, s.layers, s.width) if kind == "bert" else lstm_flops(p.T, s.width, s.width)
            rows.append({**asdict(p), "kind": kind, "width": s.width, "layers": s.layers,
                         "ms": p.seconds * 1e3, "gflops": float(flops) / p.seconds / 1e9})
        print(f"measured {label}", flush=True)
    return rows


def write_base_table(directory: str | os.PathLike | None = None) -> str:
    """Measure the base table and write ``<directory>/dag_base_table.csv`` and ``.json`` (with the hardware)."""
    import csv
    import datetime
    import json
    from pathlib import Path

    directory = Path(directory or Path(__file__).parent / "data")
    directory.mkdir(parents=True, exist_ok=True)
    peak = microbench.measure_matmul_gflops(1024, 1)
    rows = measure_base_table()
    with open(directory / f"{BASE_TABLE}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {"hardware": hardware.describe(), "short": hardware.short_description(),
            "matmul_peak_gflops_1_thread": peak, "measured": datetime.date.today().isoformat(),
            "command": "python -m servelab.dag --base-table", "rows": rows}
    (directory / f"{BASE_TABLE}.json").write_text(json.dumps(meta, indent=1))
    return str(directory / f"{BASE_TABLE}.json")


def load_base_table() -> dict:
    """The stored base-size table: ``{"hardware": ..., "short": ..., "rows": [...]}``."""
    import json
    from importlib import resources

    return json.loads(resources.files("servelab").joinpath(f"data/{BASE_TABLE}.json").read_text())


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m servelab.dag --base-table [DIR]``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-table", nargs="?", const="", metavar="DIR",
                        help="measure the base-size table and write it (default: servelab/data)")
    args = parser.parse_args(argv)
    if args.base_table is None:
        parser.print_help()
        return
    print("wrote", write_base_table(args.base_table or None))


if __name__ == "__main__":
    main()
