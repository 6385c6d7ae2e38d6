"""What machine is being measured.

Every figure in the book names the hardware it was measured on, because a
number without its machine means little. Taught in: chapters/00_setup.ipynb.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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
