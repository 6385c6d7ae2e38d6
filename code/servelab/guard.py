"""A tiny supervisor that makes a server tree die with the process that started it.

``python -m servelab.guard --stop-signal TERM --grace 5 -- CMD ...``

It is started in a new session (its own process group) by
:mod:`servelab.servers`, asks the kernel for SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``), also polls its parent PID as a fallback, and runs
CMD in its process group. When told to stop, or orphaned, it sends CMD its
graceful stop signal, waits ``grace`` seconds, then SIGKILLs the whole
group. So nginx's and gunicorn's workers go too, even if the notebook's
kernel was SIGKILLed. Taught in: chapters/02_gil.ipynb.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from servelab.prctl import set_parent_death_signal

_stop_requested = False


def _request_stop(signum: int, frame: object) -> None:
    global _stop_requested
    _stop_requested = True


def _shutdown(child: subprocess.Popen, stop_signal: int, grace: float) -> int:
    if child.poll() is None:
        try:
            child.send_signal(stop_signal)
            child.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    code = child.poll()
    # Whatever is left in our group (workers, grandchildren) goes now; that includes us.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    os.killpg(os.getpgid(0), signal.SIGKILL)
    return code if code is not None else 1  # pragma: no cover (killpg took us)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stop-signal", default="TERM", help="graceful stop signal for CMD (TERM, QUIT, INT)")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds before SIGKILL")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given")

    parent = os.getppid()
    set_parent_death_signal(signal.SIGTERM)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _request_stop)
    if os.getppid() != parent:  # the parent died before prctl took effect
        return 1

    stop_signal = getattr(signal, f"SIG{args.stop_signal.upper().removeprefix('SIG')}")
    child = subprocess.Popen(cmd)
    while not _stop_requested and child.poll() is None and os.getppid() == parent:
        time.sleep(0.05)
    return _shutdown(child, stop_signal, args.grace)


if __name__ == "__main__":
    sys.exit(main())
