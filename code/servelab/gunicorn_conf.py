"""gunicorn hooks used by every server the book starts (``--config python:servelab.gunicorn_conf``).

- ``post_fork``: the worker gets SIGKILL if its master dies, so a killed
  notebook never leaves orphaned workers serving.
- ``post_worker_init``: after the worker has loaded the app (and model), it
  drops a ready file named after its PID; :mod:`servelab.servers` waits for one per worker.
- ``pre_fork``: with ``SERVELAB_GC_FREEZE=1``, ``gc.freeze()`` in the master
  moves every object loaded so far out of the collector's reach, so the
  workers' collections don't write to (and un-share) the preloaded pages.
Taught in: chapters/02_gil.ipynb.
"""

import gc
import os
import signal
from pathlib import Path

from servelab.prctl import set_parent_death_signal


def post_fork(server, worker) -> None:  # noqa: ANN001 - gunicorn's hook signature
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != server.pid:  # master already gone before prctl took effect
        os._exit(1)


def pre_fork(server, worker) -> None:  # noqa: ANN001
    if os.environ.get("SERVELAB_GC_FREEZE") == "1":
        gc.freeze()


def post_worker_init(worker) -> None:  # noqa: ANN001
    from servelab.apps import common

    common.after_fork()
    ready_dir = os.environ.get("SERVELAB_READY_DIR")
    if ready_dir:
        Path(ready_dir, str(os.getpid())).touch()
