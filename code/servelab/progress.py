"""Progress bars for the long measuring loops, shown only where a person is watching.

A reader who runs a chapter in JupyterLab sees each point of a sweep complete
(``tqdm.auto``: a widget bar in a notebook, a text bar in a terminal). The bar
disappears when its loop ends (``leave=False``), and it only appears once the loop
has run for a second, so quick loops stay quiet.

Runs that nobody watches get no bar at all: the website build, nbval, nbgrader
and nbconvert execute notebooks through a client that does not offer keyboard
input (``allow_stdin`` is false in their execute requests), and pytest or a log
file is not a terminal. So the executed notebooks, and the website built from
them, hold no bar residue. ``SERVELAB_PROGRESS=1`` (or ``0``) forces bars on (off).
Taught in: chapters 1 to 4 (their sweeps), through tail, gil, load, dag, roofline and rate_sweep.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, Sized, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

ENV_SWITCH = "SERVELAB_PROGRESS"
#: Seconds a loop must run before its bar appears.
DELAY_S = 1.0
_ON, _OFF = {"1", "on", "yes", "true"}, {"0", "off", "no", "false"}


def kernel_accepts_input() -> bool | None:
    """Whether the request now running in this IPython kernel came from a frontend that offers input.

    JupyterLab, Notebook and VS Code offer it; the batch executors (nbclient, nbval) do not.
    None outside an IPython kernel.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return None
    request = kernel.get_parent("shell") if hasattr(kernel, "get_parent") else {}
    return bool(request.get("content", {}).get("allow_stdin", False))


def watched() -> bool:
    """Whether a person is likely watching this run: the switch, else an interactive frontend or terminal."""
    switch = os.environ.get(ENV_SWITCH, "").strip().lower()
    if switch in _ON | _OFF:
        return switch in _ON
    interactive_kernel = kernel_accepts_input()
    if interactive_kernel is not None:
        return interactive_kernel
    return sys.stderr.isatty()


def progress(items: Iterable[T], *, desc: str, total: int | None = None, unit: str = "point") -> Iterator[T]:
    """Yield ``items``, with a bar that counts them when someone watches (see :func:`watched`).

    An item counts as done when the loop body that received it has finished, so the bar
    shows measured points. ``desc`` names what is measured, e.g. ``"rate sweep"``;
    ``total`` defaults to ``len(items)``. A loop may stop early (``break``): the bar still
    disappears, instead of staying behind as an unfinished, red one.
    """
    if not watched():
        yield from items
        return
    if total is None and isinstance(items, Sized):
        total = len(items)
    bar = tqdm(total=total, desc=desc, unit=unit, leave=False, delay=DELAY_S, dynamic_ncols=True)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.total = bar.n  # a sweep that stopped early is complete, not failed
        bar.close()
