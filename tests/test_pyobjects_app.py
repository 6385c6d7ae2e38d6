"""The Python-objects app: a full collection after the fork un-shares pages, gc.freeze() keeps them shared."""

import pytest

from servelab import gil
from servelab.apps import pyobjects

SMALL = {"SERVELAB_MODEL_WIDTH": "64", "SERVELAB_MODEL_DEPTH": "2", "SERVELAB_PY_OBJECTS": "300000",
         "SERVELAB_GC_COLLECT_AFTER_FORK": "1"}


def test_records_are_tracked_containers():
    import gc

    records = pyobjects.build_records(3)
    assert records == [[0, "token-0"], [1, "token-1"], [2, "token-2"]]
    assert all(gc.is_tracked(r) for r in records)


@pytest.mark.parametrize("freeze", [False, True])
def test_collection_after_fork_unshares_unless_frozen(freeze):
    setup = gil.Setup("objects", "preload", workers=2, preload=True, gc_freeze=freeze,
                      app="servelab.apps.pyobjects:app", env=SMALL)
    snap = gil.memory_of(setup, requests=0)  # no request: serving one adds a few MiB to a worker
    private = [p.uss / gil.MiB for p in snap.workers]
    # 300,000 records take about 50 MiB; a full collection in a worker copies the pages holding them.
    if freeze:
        assert max(private) < 25, f"frozen objects were copied anyway: workers' USS {private} MiB"
    else:
        assert min(private) > 35, f"the collection did not copy the objects' pages: workers' USS {private} MiB"
