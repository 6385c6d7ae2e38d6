"""Tree memory: PSS sums to the truth, summed RSS over-counts shared pages."""

from __future__ import annotations

import os

import pytest

from servelab import memory, servers

MODEL_64MIB = {"SERVELAB_MODEL_WIDTH": "2048", "SERVELAB_MODEL_DEPTH": "4"}


def test_own_process_memory_is_consistent() -> None:
    tree = memory.descendants_memory(os.getpid())
    assert tree.rss >= tree.pss >= tree.uss > 0
    assert set(tree.mib()) == {"RSS", "PSS", "USS"}


def test_vanished_pids_are_skipped() -> None:
    assert memory.tree_memory([2**22 + 12345]).processes == []


@pytest.fixture(scope="module")
def preloaded():
    with servers.gunicorn(workers=2, preload=True, env=MODEL_64MIB) as srv:
        yield srv


def test_preload_shares_weights_and_summed_rss_lies(preloaded) -> None:
    workers = memory.tree_memory(preloaded.worker_pids)
    # Each worker maps the 64 MiB of weights, but they are shared: PSS splits them.
    assert workers.rss >= 1.5 * workers.pss
    assert all(p.shared > 48 * memory.MiB for p in workers.processes)


def test_profiler_agrees_with_psutil(preloaded) -> None:
    master = preloaded.pids[0]
    tree = memory.descendants_memory(master)
    for backend, ours in [("psutil_pss", tree.pss), ("psutil_uss", tree.uss), ("psutil", tree.rss)]:
        theirs = memory.profiler_memory(master, backend=backend) * memory.MiB
        # Sampled a moment apart, so allow 10% or a few MiB of drift.
        assert theirs == pytest.approx(ours, rel=0.1, abs=8 * memory.MiB), backend


def test_separate_workers_hold_separate_copies() -> None:
    with servers.gunicorn(workers=1, env=MODEL_64MIB) as one:
        pss_one = one.memory().pss
    with servers.gunicorn(workers=2, env=MODEL_64MIB) as two:
        pss_two = two.memory().pss
    # master + 2 workers, each worker with its own 64 MiB copy
    assert pss_two - pss_one > 48 * memory.MiB
