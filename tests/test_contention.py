"""Outside load: other programs' CPU, separated from our own."""

from __future__ import annotations

import subprocess
import sys
import time

from servelab import contention

BURN = "import time\nend = time.time() + {s}\nwhile time.time() < end: pass"


def spin(seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        pass


def test_own_work_is_not_outside_load() -> None:
    with contention.OutsideLoad() as load:
        spin(0.6)
    # A spinning loop gets a whole core of its own unless other programs take it: then what it
    # lost shows up as outside load, never as ours.
    assert load.own_cores > 0.7 or load.own_cores + load.cores > 0.9, (load.own_cores, load.cores)
    assert load.own_cores > 0.2


def test_a_stranger_burning_a_core_is_seen() -> None:
    # start_new_session and not our child: a separate process we don't own.
    stranger = subprocess.Popen(["setsid", sys.executable, "-c", BURN.format(s=1.5)])
    try:
        time.sleep(0.2)
        # Measure with a root that excludes the stranger: our own pid only, no children.
        import psutil

        class Lonely(psutil.Process):
            def children(self, recursive: bool = False):  # noqa: ANN201
                return []

        with contention.OutsideLoad(root=Lonely()) as load:
            time.sleep(0.8)
        assert load.cores > 0.6, f"a process burning a core showed as {load.cores:.2f} cores"
    finally:
        stranger.wait()


def test_measure_uncontended_retries_until_quiet() -> None:
    loads = iter([5.0, 0.0])
    attempts = []

    def fake_outside_load(*a, **k):  # noqa: ANN202
        class Fake:
            def __enter__(self):  # noqa: ANN204
                return self

            def __exit__(self, *exc):  # noqa: ANN204
                self.cores = next(loads)

        return Fake()

    original = contention.OutsideLoad
    contention.OutsideLoad = fake_outside_load  # type: ignore[assignment]
    try:
        m = contention.measure_uncontended(lambda: attempts.append(1) or len(attempts), threshold=0.5, pause=0)
    finally:
        contention.OutsideLoad = original  # type: ignore[assignment]
    assert m.attempts == 2 and m.value == 2 and not m.contended


def test_gives_up_after_retries_and_flags_it() -> None:
    m = contention.measure_uncontended(lambda: spin(0.05), threshold=-1.0, retries=2, pause=0)
    assert m.contended and m.attempts == 3


def test_machine_busy_seconds_grows() -> None:
    before = contention.machine_busy_seconds()
    spin(0.3)
    assert contention.machine_busy_seconds() > before


def test_persistent_outside_load_stops_the_retries(monkeypatch):
    from servelab import contention

    monkeypatch.setattr(contention, "_contended_streak", 0)
    calls = []

    class Busy:  # an OutsideLoad that always sees a whole core taken by someone else
        def __init__(self, *a):
            self.cores = 1.0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(contention, "OutsideLoad", Busy)
    for _ in range(contention.PERSISTENT_AFTER):
        contention.measure_uncontended(lambda: calls.append(1), retries=2, pause=0)
    assert len(calls) == 3 * contention.PERSISTENT_AFTER and contention.persistent_load()
    m = contention.measure_uncontended(lambda: calls.append(1), retries=2, pause=0)
    assert m.attempts == 1 and m.contended  # no retries while the neighbour stays


def test_no_pause_after_the_last_attempt(monkeypatch) -> None:
    # Every attempt is contended (threshold below zero): 2 attempts, so 1 pause between them, none after.
    pauses: list[float] = []
    monkeypatch.setattr(contention.time, "sleep", pauses.append)
    m = contention.measure_uncontended(lambda: None, threshold=-1.0, retries=1, pause=0.5)
    assert m.attempts == 2 and pauses == [0.5]
