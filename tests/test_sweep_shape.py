"""A closed-loop sweep re-measures points that break its required shape, and flags those that stay broken."""

from servelab import plots, tail
from servelab.load import ClosedLoopPoint


def point(c: int, throughput: float, contended: bool = False) -> ClosedLoopPoint:
    return ClosedLoopPoint(c, throughput, 0.01, 0.01, 0.02, 0.03, completed=100, errors=0, server_cores=1.0,
                           client_cores=0.01, contended=contended)


def test_a_throughput_dip_is_a_shape_break_and_a_plateau_is_not():
    zigzag = [point(4, 336), point(6, 141), point(8, 384)]  # the build that published a zig-zag
    assert tail.shape_breaks(zigzag) == [1]
    plateau = [point(1, 200), point(2, 380), point(4, 390), point(8, 372)]
    assert tail.shape_breaks(plateau) == []


def test_the_caption_names_disturbed_points():
    assert plots.contended_note([point(1, 1), point(2, 2)]) == ""
    assert "1 of 2 points" in plots.contended_note([point(1, 1), point(2, 2, contended=True)])
