"""servelab: the measurement toolkit behind *Serving Models in Practice*.

One module per concept, each taught in a chapter and unit-tested in ``tests/``:

- :mod:`servelab.hardware`   what machine was measured (every plot names it)
- :mod:`servelab.stats`      percentiles, summaries, repeat-until-stable timing
- :mod:`servelab.contention` CPU load from other programs, and retrying contended points
- :mod:`servelab.plots`      the house style for figures
- :mod:`servelab.servers`    real server process trees that cannot outlive their notebook
- :mod:`servelab.apps`       the Flask apps the chapters serve
- :mod:`servelab.load`       load generators (wrk, asyncio)
- :mod:`servelab.memory`     RSS / PSS / USS of a process tree
- :mod:`servelab.exercises`  friendly checks for the exercises
- :mod:`servelab.microbench` matmul throughput of this machine (the setup chapter)
- :mod:`servelab.student`    writes the student edition (solutions removed)
- :mod:`servelab.roofline`   forward-pass cost against batch size, and its roofline (chapter 4)
- :mod:`servelab.batching`   a framework-agnostic dynamic batcher with AIMD (chapter 4)
- :mod:`servelab.rate_sweep` open-loop rate sweeps and the highest rate within a p99 objective (chapter 4)
"""

__version__ = "0.1.0"
