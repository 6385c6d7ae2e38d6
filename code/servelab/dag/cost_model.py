"""The latency model: fixed cost + T × step time + matmul FLOPs ÷ (cores × peak), from micro-benchmarks,
with predictions for machines we do not have.

Part of :mod:`servelab.dag`. Taught in: chapters/03_dag.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
from torch import nn

from servelab import contention, stats
from servelab.stats import fastest_seconds  # noqa: F401 - servelab.dag re-exports it
from servelab.models import Shape, tokens
from servelab.dag.latency import LatencyPoint, block_medians, crossover, thread_counts, torch_threads


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
    overhead_per_token_s: float  # one token's step beyond its weight stream (measured at T <= 9, 1 thread)
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


def measure_step_seconds(model: nn.Module, *, tries: int = 10) -> float:
    """Seconds each token past the first adds to ``model`` itself, on one thread (from T = 1 and T = 9).

    For a loop this is everything one step does: its ops, its weight stream, and
    what neither micro-benchmark sees (gate arithmetic on full-width tensors,
    allocation, weights pushed out of cache by the activations). Only the first
    nine tokens are timed, so the latency sweep (T = 16 and up) still tests the model.
    """
    with torch_threads(1), torch.inference_mode():
        short = fastest_seconds(lambda: model(tokens(1)), tries=tries)
        long = fastest_seconds(lambda: model(tokens(9)), tries=tries)
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
    if contention.persistent_load():  # see block_medians: more rounds only add time
        rounds = 1
    per_op_steps = name != "fused" and two > one  # a Python loop: one set of eager ops per token
    step = math.inf
    for _ in range(rounds):
        overhead = min(overhead, measure_overhead_per_token(name, model.shape.layers))
        if per_op_steps:
            step = min(step, measure_step_seconds(model))
        for n in threads:
            once[n] = min(once[n], weight_pass_seconds(weights["matmul"], n, rows=2) +
                          weight_pass_seconds(weights["vector"], n))
            per_token[n] = min(per_token[n], recurrent_step_seconds(model.shape.width, n) if name == "fused"
                               else weight_pass_seconds(weights["per_token"], n))
        m = contention.measure_uncontended(lambda: block_medians(model, x, threads, rounds=1, repeats=10), retries=2)
        at_two = {n: min(at_two[n], m.value[n]) for n in threads}
        contended = contended or m.contended
    if per_op_steps:  # what a step costs beyond its weight stream, and at least the width-16 twin's ops
        overhead = max(overhead, step - per_token[1])
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
