"""Draw the compute DAGs of an RNN and of BERT from their traced graphs (chapter 3).

Every dot is one op of the graph ``torch.export`` records; its x position is
where it sits on the longest path (as late as it can run without delaying the
result), and the red line is the critical path found by ``servelab.dag``.
Run from the repository root:  python images/make_dag_diagram.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from servelab import dag, models, plots  # noqa: E402

OUT = Path(__file__).with_name("dag_rnn_vs_bert.png")
SHORT, LONG = 8, 40  # two input lengths: the RNN's chain grows, BERT's stack does not
BERT_LAYERS = 2
LABELLED = {"lstm_cell": "cell", "scaled_dot_product_attention": "attn", "gelu": "FFN", "embedding": "emb"}


def layout(graph) -> tuple[dict, list]:
    """(x, y) for every op: x = latest level it can run at, y = lane (critical path in lane 0)."""
    level = dag.op_levels(graph)
    ops = [n for n in graph.nodes if dag.is_op(n)]
    latest: dict = {}
    for node in reversed(list(graph.nodes)):  # as late as possible, so inputs sit next to their users
        users = [u for u in node.users]
        latest[node] = min((latest[u] - dag.is_op(u) for u in users), default=level[node])
    path = dag.critical_path(graph)
    lanes: dict[int, int] = {}
    pos = {n: (latest[n], 0) for n in path}
    for n in ops:
        if n not in pos:
            lanes[latest[n]] = lanes.get(latest[n], 0) + 1
            pos[n] = (latest[n], lanes[latest[n]])
    return pos, path


def op_inputs(node) -> list:
    """The ops a node reads, looking through tuple unpacking."""
    found = []
    for n in node.all_input_nodes:
        found += [n] if dag.is_op(n) else op_inputs(n)
    return found


def draw(ax, graph, color: str, title: str) -> None:
    pos, path = layout(graph)
    for node, (x, y) in pos.items():
        for src in op_inputs(node):
            if src in pos:
                sx, sy = pos[src]
                ax.plot([sx, x], [-sy, -y], color="#bbbbbb", lw=0.6, zorder=1)
    xs, ys = zip(*pos.values())
    ax.scatter(xs, [-y for y in ys], s=14, color=color, zorder=2)
    px = [pos[n][0] for n in path]
    ax.plot(px, [0] * len(px), color=plots.COLORS["p99"], lw=2.2, zorder=3, label="critical path")
    names = [str(n.target).split(".")[1] if "." in str(n.target) else "" for n in path]
    cells = [i for i, name in enumerate(names) if name == "lstm_cell"]
    for i, (node, name) in enumerate(zip(path, names)):  # name the ops that do the real work
        label = LABELLED.get(name)
        if cells and name == "embedding":
            label = None  # the RNN's first cell sits right next to it
        if name == "lstm_cell":
            label = "cell, token 1" if i == cells[0] else ("cell, token T" if i == cells[-1] else None)
        if label:
            ax.annotate(label, (pos[node][0], 0), xytext=(0, 6), textcoords="offset points",
                        ha="center", fontsize=7, color="#333333")
    ax.set_title(f"{title}: critical path {len(path)} ops, {len(pos)} ops in all", loc="left", fontsize=10)
    ax.set_yticks([])
    ax.grid(False)


def main() -> None:
    plots.use_style()
    rnn = models.build("unrolled", 64)
    bert = models.build("bert", 64, BERT_LAYERS)
    graphs = [
        (dag.export_graph(rnn, SHORT), plots.COLORS["rnn"], f"RNN (LSTMCell loop), T = {SHORT} tokens"),
        (dag.export_graph(rnn, LONG), plots.COLORS["rnn"], f"RNN (LSTMCell loop), T = {LONG} tokens"),
        (dag.export_graph(bert, SHORT), plots.COLORS["bert"], f"BERT, {BERT_LAYERS} layers, T = {SHORT} tokens"),
        (dag.export_graph(bert, LONG), plots.COLORS["bert"], f"BERT, {BERT_LAYERS} layers, T = {LONG} tokens"),
    ]
    fig, axes = plt.subplots(len(graphs), 1, figsize=(9, 7.2), sharex=True,
                             gridspec_kw={"height_ratios": [1, 1, 1.6, 1.6]})
    for ax, (graph, color, title) in zip(axes, graphs):
        draw(ax, graph, color, title)
    axes[0].legend(loc="lower right", fontsize=8.5)
    for ax in axes:
        ax.set_ylim(ax.get_ylim()[0], 0.9)
    axes[-1].set_xlabel("position on the longest path (ops from the input)")
    fig.suptitle("Predicting the next token: the RNN's chain grows with T, BERT's stack does not",
                 fontsize=11, x=0.01, ha="left")
    fig.text(0.01, 0.005, "Dots: ops of the torch.export graph (ATen level); grey: data edges. "
             "Drawn by images/make_dag_diagram.py.", fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(OUT, dpi=130, bbox_inches="tight")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
