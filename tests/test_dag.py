"""Tests for servelab.dag (graph depth, latency sweep bookkeeping, the latency model) and servelab.models."""

from __future__ import annotations

import math
import operator

import numpy as np
import pytest
import torch
from torch import fx

from servelab import dag, models
from servelab.exercises import ch3


def chain_and_diamond() -> fx.Graph:
    """x → a → (b, c) → d: 4 ops, depth 3 (a, b or c, d); plus one tuple getitem that must not count."""
    g = fx.Graph()
    x = g.placeholder("x")
    a = g.call_function(torch.relu, (x,))
    b = g.call_function(torch.neg, (a,))
    c = g.call_function(torch.exp, (a,))
    d = g.call_function(torch.add, (b, c))
    pair = g.call_function(torch.max, (d, 0))
    first = g.call_function(operator.getitem, (pair, 0))
    g.output(first)
    return g


def test_graph_stats_counts_ops_and_longest_path():
    stats = dag.graph_stats(chain_and_diamond())
    assert stats.ops == 5  # relu, neg, exp, add, max; not the getitem
    assert stats.depth == 4  # relu → neg/exp → add → max


def test_critical_path_is_a_longest_chain():
    path = dag.critical_path(chain_and_diamond())
    assert [n.target for n in path][0] is torch.relu
    assert [n.target for n in path][-2:] == [torch.add, torch.max]
    assert len(path) == dag.graph_stats(chain_and_diamond()).depth


def test_unrolled_rnn_depth_is_T_plus_3_at_module_level():
    model = models.build("unrolled", width=16)
    assert [dag.graph_stats(dag.module_graph(model, T)).depth for T in (1, 4, 9)] == [4, 7, 12]


def test_stacked_rnn_depth_grows_by_one_per_layer_not_by_T():
    assert ch3.stacked_rnn_depth(10, 1) == 13
    assert ch3.stacked_rnn_depth(10, 3) == 15


def test_export_agrees_with_symbolic_trace_for_the_loop():
    model = models.build("unrolled", width=16)
    assert dag.graph_stats(dag.export_graph(model, 5)).depth == dag.graph_stats(dag.module_graph(model, 5)).depth


def test_fused_lstm_hides_the_recurrence_until_decomposed():
    model = models.build("fused", width=16)
    shallow = [dag.graph_stats(dag.export_graph(model, T)).depth for T in (2, 6)]
    deep = [dag.graph_stats(dag.export_graph(model, T, decompose=True)).depth for T in (2, 6)]
    assert shallow[0] == shallow[1]
    assert deep[1] - deep[0] >= 4 * 4  # at least a few ops per extra step


def test_bert_depth_does_not_depend_on_T():
    model = models.build("bert", width=64, layers=1)
    depths = {dag.graph_stats(dag.export_graph(model, T)).depth for T in (3, 17)}
    assert len(depths) == 1


def test_fit_line_is_exact_on_a_line():
    fit = dag.fit_line([8, 32, 128], [11, 35, 131])
    assert fit.slope == pytest.approx(1.0)
    assert fit.intercept == pytest.approx(3.0)
    assert fit.max_residual < 1e-9
    assert fit(10) == pytest.approx(13.0)


def test_fit_line_of_a_constant_has_zero_slope():
    fit = dag.fit_line([8, 32, 512], [78, 78, 78])
    assert fit.slope == pytest.approx(0.0, abs=1e-12)
    assert fit.intercept == pytest.approx(78.0)


def test_crossover_interpolates_in_log_space():
    lengths = [10, 100, 1000]
    rnn = [1.0, 10.0, 100.0]
    bert = [5.0, 5.0, 5.0]
    t = dag.crossover(lengths, rnn, bert)
    assert 10 < t < 100
    assert t == pytest.approx(10 ** (1 + math.log10(5)), rel=1e-6)  # where 10^(log T - 1) = 5


def test_crossover_none_and_everywhere():
    assert dag.crossover([1, 2, 3], [1, 1, 1], [2, 2, 2]) is None
    assert dag.crossover([1, 2, 3], [2, 2, 2], [1, 1, 1]) == 1


def test_flop_formulas():
    assert dag.bert_flops(10, 2, 4) == 2 * (24 * 10 * 16 + 4 * 100 * 4)
    assert dag.lstm_flops(10, 3, 5) == 8 * 10 * 5 * 8


def test_launched_ops_grow_linearly_for_the_loop_only():
    loop, fused = models.build("unrolled", width=16), models.build("fused", width=16)
    counts = [dag.count_launched_ops(loop, models.tokens(T)) for T in (1, 2, 3)]
    assert counts[2] - counts[1] == counts[1] - counts[0] > 5  # every LSTMCell step runs many small ops
    assert dag.count_launched_ops(fused, models.tokens(2)) == dag.count_launched_ops(fused, models.tokens(9))


def test_torch_threads_restores_the_count():
    before = torch.get_num_threads()
    with dag.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def synthetic_costs(name: str, kind: str, **kw) -> dag.ModelCosts:
    base = dict(name=name, shape=models.Shape(kind, 64, 2), ops_fixed=10, ops_per_token=0, overhead_per_token_s=0.0,
                bytes_once=1000, bytes_per_token=0, stream_once_s={1: 4e-5, 2: 4e-5}, stream_per_token_s={1: 0.0, 2: 0.0},
                fixed_s={1: 1e-4, 2: 1e-4}, steps_split_over_cores=False)
    return dag.ModelCosts(**{**base, **kw})


MACHINE = dag.Machine("test", cores=2, peak_flops={1: 1e10, 2: 1.5e10})


def test_predict_adds_fixed_cost_and_compute():
    bert = synthetic_costs("bert", "bert")
    T = 100
    assert float(dag.predict_seconds(bert, T, MACHINE)) == pytest.approx(1e-4 + dag.bert_flops(T, 2, 64) / 1.5e10)
    one_core = float(dag.predict_seconds(bert, T, MACHINE, threads=1))
    assert one_core == pytest.approx(1e-4 + dag.bert_flops(T, 2, 64) / 1e10)


def test_fixed_cost_splits_into_overhead_and_streaming():
    bert = synthetic_costs("bert", "bert", ops_fixed=20)
    assert bert.overhead_fixed_s(1) == pytest.approx(6e-5)
    assert bert.seconds_per_op == pytest.approx(3e-6)


def test_machine_peak_scales_unmeasured_thread_counts():
    assert MACHINE.peak(2) == 1.5e10
    assert MACHINE.peak(8) == 8e10
    assert dag.imagined(MACHINE, "64", 64).peak(64) == 64e10


def test_unrolled_prediction_is_linear_in_T_and_ignores_cores():
    loop = synthetic_costs("unrolled", "lstm", ops_per_token=16, overhead_per_token_s=2e-5, bytes_per_token=10,
                           stream_per_token_s={1: 5e-5, 2: 5e-5})
    one = dag.predict_seconds(loop, np.array([10, 20, 30]), MACHINE, threads=1)
    two = dag.predict_seconds(loop, np.array([10, 20, 30]), MACHINE, threads=2)
    assert np.allclose(np.diff(one), 10 * 7e-5)
    assert np.allclose(one, two)


def test_fused_steps_use_the_measured_step_here_and_a_launch_floor_on_a_gpu():
    fused = synthetic_costs("fused", "lstm", stream_per_token_s={1: 4e-5, 2: 2.5e-5}, bytes_per_token=4 * 10**5,
                            steps_split_over_cores=True)
    step = lambda m, n=None: float(dag.predict_seconds(fused, 2, m, n) - dag.predict_seconds(fused, 1, m, n))
    flops = dag.lstm_flops(1, 64, 64) / 2 * 2
    assert step(MACHINE, 1) == pytest.approx(4e-5 + flops / 1e10)
    assert step(MACHINE, 2) == pytest.approx(2.5e-5 + flops / 1.5e10)
    assert step(dag.imagined(MACHINE, "64", 64)) == pytest.approx(2.5e-5 + flops / 64e10)  # no faster than measured
    gpu = dag.imagined(MACHINE, "gpu", 1, peak_flops_per_core=1e15, bandwidth=1e12, launch_seconds=5e-6)
    assert step(gpu) == pytest.approx(5e-6, rel=0.01)


def test_more_cores_move_the_crossover_down():
    loop = synthetic_costs("unrolled", "lstm", ops_fixed=2, ops_per_token=16, overhead_per_token_s=2e-5,
                           stream_per_token_s={1: 5e-5, 2: 5e-5}, fixed_s={1: 1e-5, 2: 1e-5})
    bert = synthetic_costs("bert", "bert", shape=models.Shape("bert", 128, 2))
    few = dag.predicted_crossover(loop, bert, dag.imagined(MACHINE, "2", 2))
    many = dag.predicted_crossover(loop, bert, dag.imagined(MACHINE, "64", 64))
    assert few is not None and many is not None and many < few


def test_imagined_bandwidth_and_launch_replace_measured_costs():
    bert = synthetic_costs("bert", "bert", bytes_once=10**6)
    fast = dag.imagined(MACHINE, "fast memory", 2, bandwidth=1e12)
    slow = dag.imagined(MACHINE, "slow memory", 2, bandwidth=1e9)
    assert dag.predict_seconds(bert, 1, slow) - dag.predict_seconds(bert, 1, fast) == pytest.approx(1e-3 - 1e-6)
    launch = dag.imagined(MACHINE, "slow launches", 2, bandwidth=1e12, launch_seconds=1e-4)
    assert dag.predict_seconds(bert, 1, launch) - dag.predict_seconds(bert, 1, fast) == pytest.approx(10 * 1e-4 - 6e-5)


def test_model_costs_of_a_small_loop_are_sensible():
    loop = models.build("unrolled", width=32)
    machine = dag.Machine("test", 1, {1: 1e10})
    costs = dag.model_costs("unrolled", loop, machine, threads=[1])
    assert costs.ops_per_token > 5 and costs.bytes_per_token == 2 * 4 * 32 * 32 * 4
    assert costs.overhead_per_token_s > 0 and costs.stream_per_token_s[1] > 0
    assert costs.fixed_s[1] >= 0


def test_recurrent_step_is_positive_and_short():
    assert 0 < dag.recurrent_step_seconds(16, steps=8, tries=2) < 1e-3


def test_latency_sweep_and_speedup_bookkeeping():
    model = models.build("fused", width=16)
    points = dag.latency_sweep({"fused": model}, [4, 8], [1], repeats=2)
    assert [(p.model, p.T, p.threads) for p in points] == [("fused", 4, 1), ("fused", 8, 1)]
    assert all(p.seconds > 0 for p in points)
    assert dag.speedup(points, "fused", 4, 1) == pytest.approx(1.0)
    with pytest.raises(KeyError):
        dag.lookup(points, "fused", 16, 1)


def test_models_predict_the_next_token_from_any_length():
    x = models.tokens(7)
    for name in ("unrolled", "fused", "bert"):
        with torch.no_grad():
            out = models.build(name, width=64, layers=1)(x)
        assert out.shape == (1, models.VOCAB), name


def test_unknown_model_name_is_an_error():
    with pytest.raises(ValueError):
        models.build("gru")


def test_generation_runs_with_and_without_cache():
    gpt = models.tiny_gpt2(width=64, layers=1)
    prompt = models.tokens(5)
    assert dag.generation_seconds(gpt, prompt, 3, use_cache=True) > 0
    assert dag.generation_seconds(gpt, prompt, 3, use_cache=False) > 0


def test_minilm_is_bundled_and_offline():
    assert (models.minilm_path() / "config.json").is_file()
    assert (models.minilm_path() / "model.safetensors").is_file()


def test_stored_base_table_names_its_machine():
    table = dag.load_base_table()
    assert table["hardware"]["CPU"] and table["short"]
    assert table["rows"], "the base table has no measurements"
    kinds = {row["kind"] for row in table["rows"]}
    assert {"bert", "unrolled", "fused"} <= kinds
    assert all(row["seconds"] > 0 for row in table["rows"])


def test_exercise_checks_accept_the_right_answers(capsys):
    assert ch3.check_stacked_depth(34, T=30, layers=2)
    assert not ch3.check_stacked_depth(60, T=30, layers=2)
    assert "grid" in capsys.readouterr().out
    assert ch3.check_bert_gflops(float(dag.bert_flops(1024, 4, 256)) / 1e9)
    assert ch3.check_fused_reason("c")
    assert not ch3.check_fused_reason("b")
    assert not ch3.check_fused_reason(...)


def test_crossover_exercise_wants_inf_where_bert_never_wins(capsys):
    loop = synthetic_costs("unrolled", "lstm", ops_per_token=1, stream_per_token_s={1: 1e-9, 2: 1e-9}, fixed_s={1: 0, 2: 0})
    bert = synthetic_costs("bert", "bert", fixed_s={1: 1.0, 2: 1.0})  # a second of fixed cost: never overtakes
    costs = {"unrolled": loop, "bert": bert}
    assert dag.predicted_crossover(loop, bert, dag.imagined(MACHINE, "16 cores", 16)) is None
    assert ch3.check_crossover(math.inf, costs, MACHINE, cores=16)
    assert not ch3.check_crossover(None, costs, MACHINE, cores=16)
    assert "not answered yet" in capsys.readouterr().out
