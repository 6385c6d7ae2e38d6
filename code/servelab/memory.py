"""Memory of a process tree: RSS, PSS and USS.

RSS counts every page a process maps, shared or not, so summing RSS over
gunicorn workers that share a model counts the model once per worker. PSS
splits each shared page between the processes sharing it, so PSS sums to
the real total; USS is what a process alone holds (what killing it frees).
Taught in: chapters/02_gil.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

import psutil

if TYPE_CHECKING:  # servers imports this module
    from servelab.servers import Server

MiB = 2**20


@dataclass(frozen=True)
class ProcessMemory:
    """One process's memory, in bytes."""

    pid: int
    name: str
    rss: int
    pss: int
    uss: int

    @property
    def shared(self) -> int:
        """Bytes resident here that at least one other process also maps (RSS − USS)."""
        return self.rss - self.uss


@dataclass
class TreeMemory:
    """A process tree's memory, in bytes, summed over its processes."""

    processes: list[ProcessMemory] = field(default_factory=list)

    @property
    def rss(self) -> int:
        return sum(p.rss for p in self.processes)

    @property
    def pss(self) -> int:
        return sum(p.pss for p in self.processes)

    @property
    def uss(self) -> int:
        return sum(p.uss for p in self.processes)

    def mib(self) -> dict[str, float]:
        """Summed RSS, PSS and USS in MiB, for tables."""
        return {"RSS": self.rss / MiB, "PSS": self.pss / MiB, "USS": self.uss / MiB}


@dataclass
class MemorySnapshot:
    """A server tree's memory: every process, and which of them are workers."""

    setup: str
    tree: TreeMemory
    worker_pids: list[int]

    @property
    def workers(self) -> list[ProcessMemory]:
        """The workers' entries (gunicorn's master excluded)."""
        return [p for p in self.tree.processes if p.pid in self.worker_pids]

    def total_mib(self, kind: str = "pss") -> float:
        """The whole tree's summed ``rss``, ``pss`` or ``uss``, in MiB."""
        return getattr(self.tree, kind) / MiB

    def workers_mib(self, kind: str = "pss") -> float:
        """The workers' summed ``rss``, ``pss`` or ``uss``, in MiB."""
        return sum(getattr(p, kind) for p in self.workers) / MiB

    def row(self) -> dict[str, object]:
        """Tree totals and worker sums in MiB, as a table row."""
        return {
            "set-up": self.setup, "processes": len(self.tree.processes), "workers": len(self.workers),
            "RSS MiB": round(self.total_mib("rss")), "PSS MiB": round(self.total_mib("pss")),
            "USS MiB": round(self.total_mib("uss")), "workers' RSS MiB": round(self.workers_mib("rss")),
            "workers' PSS MiB": round(self.workers_mib("pss")),
        }  # fmt: skip


def measure_memory(server: "Server", setup: str = "") -> MemorySnapshot:
    """RSS, PSS and USS of every process of a running ``server`` (from /proc/PID/smaps_rollup)."""
    return MemorySnapshot(setup, server.memory(), list(server.worker_pids))


def profiler_memory_mib(server: "Server") -> dict[str, float]:
    """A server tree's memory by ``memory_profiler.memory_usage`` with each backend, in MiB.

    Keys ``psutil`` (RSS, the default), ``psutil_pss`` and ``psutil_uss``; the
    root is gunicorn's master, its children are summed in.
    """
    root = server.pids[0]
    return {backend: profiler_memory(root, backend) for backend in ("psutil", "psutil_pss", "psutil_uss")}


def process_memory(proc: psutil.Process) -> ProcessMemory:
    """RSS, PSS, USS and shared bytes of one process (reads /proc/PID/smaps_rollup)."""
    info = proc.memory_full_info()
    return ProcessMemory(proc.pid, proc.name(), info.rss, info.pss, info.uss)


def tree_memory(processes: Iterable[psutil.Process | int]) -> TreeMemory:
    """Memory of each given process (vanished ones are skipped)."""
    tree = TreeMemory()
    for proc in processes:
        try:
            p = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
            tree.processes.append(process_memory(p))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return tree


def descendants_memory(root_pid: int, include_root: bool = True) -> TreeMemory:
    """Memory of a process and all its descendants."""
    root = psutil.Process(root_pid)
    procs = ([root] if include_root else []) + root.children(recursive=True)
    return tree_memory(procs)


def profiler_memory(root_pid: int, backend: str = "psutil_pss") -> float:
    """The same tree measured by ``memory_profiler.memory_usage``, in MiB.

    ``backend`` is ``psutil`` (RSS: memory_profiler's default, which
    overstates shared memory when summed over children), ``psutil_pss`` or
    ``psutil_uss``. The root and its children are summed.
    """
    from memory_profiler import memory_usage

    samples = memory_usage(
        proc=root_pid, interval=0.05, timeout=0.2, include_children=True, backend=backend, max_usage=True
    )
    return float(samples if not isinstance(samples, list) else max(samples))
