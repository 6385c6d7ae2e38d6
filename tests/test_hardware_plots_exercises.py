"""Hardware description, house plot style and exercise feedback."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from servelab import exercises, hardware, plots  # noqa: E402


def test_describe_has_the_facts_every_caption_needs() -> None:
    d = hardware.describe()
    for key in ("CPU", "usable cores", "memory", "torch", "torch intra-op threads", "BLAS", "wrk", "nginx"):
        assert d[key], key
    assert int(d["usable cores"]) == hardware.usable_cores() >= 1
    assert "usable cores" in hardware.short_description()
    assert hardware.describe_markdown().count("\n") == len(d) + 1


def test_caption_names_the_hardware() -> None:
    fig, ax = plots.figure()
    plots.label(ax, "concurrency", "latency (ms)", "A title")
    plots.caption(fig, "What this shows.")
    texts = " ".join(t.get_text() for t in fig.texts)
    assert hardware.short_description() in texts and "What this shows." in texts
    assert ax.get_ylabel() == "latency (ms)"


def test_colors_are_distinct_for_the_core_contrast() -> None:
    assert plots.COLORS["threads"] != plots.COLORS["processes"]


def test_check_feedback(capsys) -> None:
    assert exercises.check(10.2, 10.0, name="p99")
    assert "✓" in capsys.readouterr().out
    assert not exercises.check(20, 10.0, name="p99", hint="That looks like the max.")
    out = capsys.readouterr().out
    assert "✗" in out and "the max" in out
    assert not exercises.check(None, 10.0)
    assert "not answered" in capsys.readouterr().out
    assert exercises.check("gil", "gil") and not exercises.check("x", "gil")
