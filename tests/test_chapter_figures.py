"""The chapters' figure functions draw labelled axes (units included) from made-up results."""

import matplotlib

matplotlib.use("Agg")

from servelab import dag, rate_sweep, roofline  # noqa: E402
from servelab.notebook import markdown_table  # noqa: E402
from test_ch4_claims import closed, rate_point  # noqa: E402
from test_dag_claims import LENGTHS, sweep  # noqa: E402


def labels(fig) -> list[str]:
    return [ax.get_xlabel() + " / " + ax.get_ylabel() for ax in fig.axes]


def test_chapter_3_figures_have_units_and_hollow_contended_points():
    points = sweep(1.0, contended={("bert", 64, 2)})
    names = {"fused": "fused", "unrolled": "loop", "bert": "BERT"}
    colors = {k: "#000000" for k in names}
    fig = dag.plot_latency(points, LENGTHS, names, colors, {1: 100.0, 2: None})
    assert "latency (ms, median)" in labels(fig)[0]
    assert any("Hollow markers: 1 of" in t.get_text() for t in fig.texts)
    gains = dag.gains_by_length(points, list(names), LENGTHS, 2)
    assert "speedup" in labels(dag.plot_gains(gains, LENGTHS, names, colors, 2))[0]
    depths = [dag.DepthPoint("BERT-4L", T, 0, 78) for T in (8, 32)]
    assert "depth (ops" in labels(dag.plot_depths(depths, {"BERT-4L": dag.fit_line([8, 32], [78, 78])}))[0]


def test_chapter_4_figures_have_units():
    costs = [roofline.ForwardCost(b, n, 0.01 * b ** 0.3, 2 * b * 2**26, 2**28, 0.0, False) for n in (1, 2) for b in (1, 8, 64)]
    roofs = {1: roofline.Roofline(100, 10), 2: roofline.Roofline(200, 12)}
    assert "forward time per input (ms)" in labels(roofline.plot_batch_costs(costs, roofs))[0]
    fig = rate_sweep.plot_closed_vs_open({2: closed(0.04), 8: closed(0.1)}, rate_point(80, float("inf")), 2, 2.0)
    assert "latency (ms)" in labels(fig)[0]
    sweeps = {"no batching": ([rate_point(10, 0.05), rate_point(20, 0.2)], 15.0, "#111111")}
    assert "p99 latency (ms, open loop)" in labels(rate_sweep.plot_sweeps(sweeps, 100, 2.0))[0]
    assert "p50 latency (ms" in labels(rate_sweep.plot_low_load({"a": rate_point(5, 0.02)}, ["#000"], 5, 1.2))[0]


def test_markdown_table_formats_floats_and_escapes_pipes():
    text = markdown_table([{"a": 1.2345, "b": "x|y"}])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | x\\|y |"]
    assert markdown_table([]) == ""


def test_markdown_table_takes_the_columns_of_every_row():
    text = markdown_table([{"a": 1, "ray": 2.0}, {"a": 3, "gunicorn": 4.0}])
    assert text.splitlines() == ["| a | ray | gunicorn |", "|---|---|---|", "| 1 | 2.00 |  |", "| 3 |  | 4.00 |"]
