"""The predict app plus a large state of small Python objects, for ``gc.freeze()``.

A tokenizer's tables, a feature store's records, a config tree: real apps
keep many small Python objects next to their model. Every such container
carries a header that the cyclic garbage collector *writes to* when a
collection examines it. In a worker forked after ``--preload``, that write
copies the page holding the header: the collector slowly un-shares memory
that nobody changed (Instagram's 2017 finding). ``gc.freeze()`` in the
master before the fork moves the objects to a generation the collector
never examines, so their pages stay shared.

- ``SERVELAB_PY_OBJECTS``: number of small records (lists) in the state (default 1,000,000).
- ``SERVELAB_GC_COLLECT_AFTER_FORK=1``: each worker runs one full
  ``gc.collect()`` right after the fork: the full collection a long-running
  worker eventually runs, made to happen now so it can be measured.
Taught in: chapters/02_gil.ipynb.
"""

from __future__ import annotations

import gc
import os

from servelab.apps.common import env_int
from servelab.apps.predict import app  # noqa: F401 - the same routes, served with the state below


def build_records(n: int) -> list[list[object]]:
    """``n`` small records, each a list (a container the collector tracks) of an id and a name."""
    return [[i, f"token-{i}"] for i in range(n)]


RECORDS = build_records(env_int("SERVELAB_PY_OBJECTS", 1_000_000))


def _collect_in_child() -> None:
    if os.environ.get("SERVELAB_GC_COLLECT_AFTER_FORK") == "1":
        gc.collect()


os.register_at_fork(after_in_child=_collect_in_child)
