"""What machine is being measured.

Every figure in the book names the hardware it was measured on, because a
number without its machine means little. Taught in: chapters/00_setup.ipynb.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
import subprocess
from typing import Iterator, Mapping, Sequence

from servelab import claims  # claims imports this module only inside a function: no cycle at import


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    import torch  # here: most of servelab never needs torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where available."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def total_memory_gib() -> float:
    """Physical memory in GiB."""
    import psutil

    return psutil.virtual_memory().total / 2**30


def _tool_version(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "present"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "present"


def blas_info() -> str:
    """Which BLAS torch was built with (MKL, OpenBLAS, ...)."""
    import torch

    config = torch.__config__.show()
    for key in ("BLAS_INFO", "LAPACK_INFO"):
        for part in config.replace(",", "\n").splitlines():
            if key in part:
                return part.split("=", 1)[-1].strip()
    return "unknown"


@functools.lru_cache(maxsize=1)
def describe() -> dict[str, str]:
    """A table of the facts that decide serving performance on this machine."""
    import torch

    return {
        "CPU": cpu_model(),
        "usable cores": str(usable_cores()),
        "logical CPUs": str(os.cpu_count()),
        "memory": f"{total_memory_gib():.1f} GiB",
        "Python": platform.python_version(),
        "torch": torch.__version__,
        "torch intra-op threads": str(torch.get_num_threads()),
        "BLAS": blas_info(),
        "wrk": _tool_version(["wrk", "--version"]) or "not installed",
        "nginx": _tool_version(["nginx", "-v"]) or "not installed",
    }


def short_description() -> str:
    """One line for plot captions: CPU, cores, memory."""
    d = describe()
    cpu = d["CPU"].replace("(R)", "").replace("(TM)", "").replace(" CPU", "")
    return f"{cpu} · {d['usable cores']} usable cores · {d['memory']} · torch {d['torch']}"


def describe_markdown() -> str:
    """The hardware table as Markdown, for display in a notebook."""
    rows = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in describe().items()]
    return "\n".join(rows)


# ---------------------------------------------------------------- claims (chapter 0's check cell)

#: The rows chapter 0's hardware table must have: the facts later chapters name in their captions.
TABLE_ROWS = ("CPU", "usable cores", "memory", "torch", "torch intra-op threads", "BLAS", "wrk", "nginx")


def claim_table_rows(table: Mapping[str, str], rows: Sequence[str] = TABLE_ROWS) -> claims.Claim:
    """The hardware table has every row the book's captions rely on."""
    missing = [key for key in rows if key not in table]
    return claims.condition(
        "ch0.hardware_table_rows", "The hardware table names the CPU, cores, memory, torch, BLAS, wrk and nginx.",
        not missing, measured=f"{len(rows) - len(missing)} of {len(rows)} rows", bound=f"all {len(rows)}",
        fail=f"the hardware table lost its {', '.join(repr(k) for k in missing)} row(s)")


def claim_usable_cores(cores: int) -> claims.Claim:
    """The process may run on at least one core (0 would mean the affinity reading is broken)."""
    return claims.at_least("ch0.usable_cores", "This process may run on at least one core.", cores, 1,
                           fail=f"the process may run on {cores} cores: no core at all?", unit=" cores", digits=0)
