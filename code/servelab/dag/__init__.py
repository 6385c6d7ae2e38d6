"""How deep is a model's compute graph, and does depth decide latency?

An RNN must finish token ``t`` before it starts token ``t + 1``: its graph is
a chain as long as the input. BERT runs a fixed stack of layers over all
tokens at once: its graph's depth does not depend on the input length. This
package measures both halves of that claim:

- *depth*: trace a model for a given length ``T`` (``torch.export`` or
  ``torch.fx.symbolic_trace``) and take the longest path through the graph;
- *latency*: time the forward pass at 1 and at all usable threads, retrying
  points that other programs disturbed;

and builds a small latency model (fixed cost + T × step time + matmul FLOPs ÷
peak) from micro-benchmarks, which explains the curves and predicts where they
cross on bigger machines. ``python -m servelab.dag --base-table`` re-measures the stored
base-size table in ``servelab/data``.

Its parts: :mod:`~servelab.dag.depth` (tracing, longest path, line fits), :mod:`~servelab.dag.latency`
(latency sweeps, speedups, crossovers, generation), :mod:`~servelab.dag.cost_model` (micro-benchmarks and
the latency model's predictions), :mod:`~servelab.dag.checks` (the chapter's claims),
:mod:`~servelab.dag.figures` (its figures and number-built sentences) and :mod:`~servelab.dag.base_table`
(the stored base-size table). Everything is re-exported here, so ``from servelab import dag`` is enough.
Taught in: chapters/03_dag.ipynb.
"""

from servelab.dag.depth import (  # noqa: F401
    is_op,
    GraphStats,
    op_levels,
    graph_stats,
    critical_path,
    export_graph,
    module_graph,
    DepthPoint,
    depth_sweep,
    LineFit,
    fit_line,
)
from servelab.dag.latency import (  # noqa: F401
    torch_threads,
    thread_counts,
    LatencyPoint,
    median_forward_seconds,
    block_medians,
    latency_sweep,
    lookup,
    speedup,
    crossover,
    generation_seconds,
)
from servelab.dag.cost_model import (  # noqa: F401
    bert_flops,
    lstm_flops,
    count_launched_ops,
    fastest_seconds,
    measure_op_seconds,
    weight_pass_seconds,
    recurrent_step_seconds,
    ModelCosts,
    measure_overhead_per_token,
    measure_step_seconds,
    model_costs,
    Machine,
    layer_flops_per_second,
    measure_machine,
    encoder_weights,
    predict_seconds,
    imagined,
    stream_rate,
    predicted_crossover,
    model_error,
)
from servelab.dag.checks import (  # noqa: F401
    claim_loop_depth_linear,
    claim_bert_depth_constant,
    step_costs,
    claim_loop_latency_linear,
    claim_bert_gains_from_cores,
    claim_bert_gain_grows,
    claim_loop_gain_flat,
    claim_fused_beats_bert,
    claim_model_explains,
)
from servelab.dag.figures import (  # noqa: F401
    gains_by_length,
    describe_gains,
    plot_latency,
    plot_gains,
    depth_family_color,
    plot_depths,
    plot_model,
    plot_predictions,
    plot_real_bert,
)
from servelab.dag.base_table import (  # noqa: F401
    BASE_TABLE,
    base_table_models,
    measure_base_table,
    write_base_table,
    load_base_table,
    main,
)
