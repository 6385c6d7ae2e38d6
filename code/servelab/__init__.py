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
"""

__version__ = "0.1.0"
