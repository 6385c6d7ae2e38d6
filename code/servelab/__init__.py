"""servelab: the measurement toolkit behind *Serving Models in Practice*.

Every module and subpackage is listed once, grouped into the core and each chapter's topic
modules, with the chapter that teaches it, in ``code/servelab/README.md`` (kept complete by
``tests/test_package_map.py``). Start with :mod:`servelab.servers` (servers that cannot outlive
their notebook), :mod:`servelab.load` (load generators and the one closed-loop measurement) and
:mod:`servelab.stats` (percentiles and timing).
"""

__version__ = "0.1.0"
