"""Real server process trees on 127.0.0.1 that cannot outlive their notebook.

Every server runs under :mod:`servelab.guard`, in its own session and
process group. Three things stop it:

1. the context manager (or :meth:`Server.stop`) when a cell ends or raises;
2. an ``atexit`` hook when the Python process exits normally;
3. ``PR_SET_PDEATHSIG`` when the kernel is killed outright: the guard gets
   SIGTERM and kills its whole group, and each gunicorn worker also gets
   SIGKILL if its master dies (set in :mod:`servelab.gunicorn_conf`).

Readiness means every worker is ready, not just the port: gunicorn accepts
connections before its workers have loaded a model. Each worker drops a file
named after its PID in a ready directory once its app is loaded; we wait for
one live file per expected worker, then for ``/health``.
Taught in: chapters/02_gil.ipynb.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

import psutil

from servelab import memory
from servelab.prctl import set_parent_death_signal

_LIVE: dict[int, "Server"] = {}  # guard pid -> server, for the atexit hook


class ServerError(RuntimeError):
    """A server failed to start or become ready; the message has its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False


def _guarded_preexec() -> None:
    # Runs in the child between fork and exec: the guard dies with us.
    set_parent_death_signal(signal.SIGTERM)


class Server:
    """A running server tree: URL, PIDs, memory, CPU time, and a clean stop.

    Use it as a context manager::

        with servers.gunicorn(workers=2) as srv:
            load.closed_loop(srv.url + "/predict", ...)
    """

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        port: int,
        name: str = "server",
        expected_workers: int = 0,
        health_path: str = "/health",
        stop_signal: str = "TERM",
        grace_s: float = 5.0,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.health_path = health_path
        self.expected_workers = expected_workers
        self.grace_s = grace_s
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"servelab-{name}-"))
        self.ready_dir = self.workdir / "ready"
        self.ready_dir.mkdir(exist_ok=True)
        self.log_path = self.workdir / "server.log"
        self._known: dict[int, float] = {}  # pid -> create_time, to never kill a reused PID
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "SERVELAB_READY_DIR": str(self.ready_dir), **(env or {})}
        full_env = {k: v for k, v in full_env.items() if v != ""}  # "" means: unset it
        guard_cmd = [sys.executable, "-m", "servelab.guard", "--stop-signal", stop_signal, "--grace", str(grace_s), "--", *cmd]
        self._log = open(self.log_path, "wb")
        self.guard = subprocess.Popen(
            guard_cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=self.workdir,
            start_new_session=True,  # own process group: killpg reaches every descendant
            preexec_fn=_guarded_preexec,
        )
        self.pgid = self.guard.pid
        self._remember(psutil.Process(self.guard.pid))
        _LIVE[self.guard.pid] = self

    # ---- inspection -------------------------------------------------------
    def processes(self) -> list[psutil.Process]:
        """The server's processes (the guard excluded), master first."""
        try:
            procs = psutil.Process(self.guard.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            self._remember(p)
        return procs

    @property
    def pids(self) -> list[int]:
        """PIDs of every server process."""
        return [p.pid for p in self.processes()]

    @property
    def worker_pids(self) -> list[int]:
        """PIDs that reported ready (gunicorn workers), or the main process."""
        live = set(self.pids)
        ready = [int(f.name) for f in self.ready_dir.iterdir() if f.name.isdigit() and int(f.name) in live]
        return sorted(ready) or sorted(live)[:1]

    def memory(self) -> memory.TreeMemory:
        """RSS, PSS and USS of the whole server tree."""
        return memory.tree_memory(self.processes())

    def cpu_seconds(self) -> float:
        """CPU-seconds used so far by the tree (including reaped workers)."""
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
        return total

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's combined stdout/stderr."""
        if not self._log.closed:  # still running; after stop() the file is closed but readable
            self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    # ---- life cycle -------------------------------------------------------
    def wait_ready(self, timeout: float = 120.0) -> "Server":
        """Block until every expected worker is ready and the health check answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.guard.poll() is not None:
                raise ServerError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            ready = len(self.worker_pids) if self.expected_workers else 0
            ready_files = [f for f in self.ready_dir.iterdir() if f.name.isdigit()]
            if self.expected_workers and (len(ready_files) < self.expected_workers or ready < self.expected_workers):
                time.sleep(0.05)
                continue
            if _http_ok(self.url + self.health_path, timeout=1.0):
                return self
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"{self.name} not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Graceful stop, then SIGKILL for anything left, by recorded PID."""
        _LIVE.pop(self.guard.pid, None)
        self.processes()  # record the latest PIDs before they go
        if self.guard.poll() is None:
            self.guard.send_signal(signal.SIGTERM)
            try:
                self.guard.wait(timeout=self.grace_s + 5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._kill_leftovers()
        if self.guard.poll() is None:
            self.guard.wait(timeout=5)
        deadline = time.monotonic() + 3.0  # SIGKILLed processes take a moment to vanish
        while self.alive_pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._log.close()

    def alive_pids(self) -> list[int]:
        """Recorded PIDs that still run (should be empty after stop)."""
        alive = []
        for pid, created in self._known.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        return alive

    def _kill_leftovers(self) -> None:
        for pid in self.alive_pids():
            if pid == self.guard.pid:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _remember(self, proc: psutil.Process) -> None:
        try:
            self._known.setdefault(proc.pid, proc.create_time())
        except psutil.NoSuchProcess:
            pass

    def cleanup_files(self) -> None:
        """Remove the server's temporary directory (log included)."""
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Server {self.name} {self.url} pids={self.pids}>"


def start(
    cmd: Sequence[str],
    *,
    port: int,
    name: str = "server",
    expected_workers: int = 0,
    health_path: str = "/health",
    stop_signal: str = "TERM",
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 120.0,
    workdir: Path | None = None,
) -> Server:
    """Start any server command (it must listen on ``port``) and wait until it is ready."""
    server = Server(
        cmd,
        port=port,
        name=name,
        expected_workers=expected_workers,
        health_path=health_path,
        stop_signal=stop_signal,
        env=env,
        workdir=workdir,
    )
    return server.wait_ready(ready_timeout)


def torch_thread_env(torch_threads: int | str = 1) -> dict[str, str]:
    """Environment that sets a worker's torch intra-op threads.

    ``"default"`` leaves torch to pick (one thread per core, per worker:
    the oversubscription trap).
    """
    if str(torch_threads) == "default":
        return {"SERVELAB_TORCH_THREADS": "default", "OMP_NUM_THREADS": "", "MKL_NUM_THREADS": ""}
    n = str(int(torch_threads))
    return {"SERVELAB_TORCH_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def gunicorn(
    app: str = "servelab.apps.predict:app",
    *,
    workers: int = 1,
    threads: int = 1,
    preload: bool = False,
    gc_freeze: bool = False,
    torch_threads: int | str = 1,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 120.0,
    wait: bool = True,
) -> Server:
    """Start gunicorn serving ``app`` with ``workers`` processes of ``threads`` threads each.

    ``threads > 1`` uses the ``gthread`` worker; otherwise ``sync``.
    ``preload`` loads the app (and its model) in the master before forking;
    ``gc_freeze`` calls ``gc.freeze()`` before the fork so the collector does
    not dirty the shared pages.
    ``wait=False`` returns at once: call :meth:`Server.wait_ready` before use. Several
    servers then start at the same time (from this thread: their guards die with the
    thread that started them).
    """
    port = free_port()
    cmd = [
        sys.executable, "-m", "gunicorn",
        "--config", "python:servelab.gunicorn_conf",
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers),
        "--threads", str(threads),
        "--worker-class", "gthread" if threads > 1 else "sync",
        "--timeout", "120",
        "--graceful-timeout", "3",
        "--log-level", "warning",
        *(["--preload"] if preload else []),
        *extra_args,
        app,
    ]  # fmt: skip
    full_env = {**torch_thread_env(torch_threads), "SERVELAB_GC_FREEZE": "1" if gc_freeze else "0", **(env or {})}
    name = f"gunicorn-{workers}w{threads}t" + ("-preload" if preload else "")
    # QUIT is gunicorn's quick shutdown; it still takes ~1.3 s, so after 0.5 s the guard
    # SIGKILLs the group. A measurement server has no in-flight work worth waiting for.
    server = Server(cmd, port=port, name=name, expected_workers=workers, env=full_env, stop_signal="QUIT", grace_s=0.5)
    return server.wait_ready(ready_timeout) if wait else server


def flask(
    app: str = "servelab.apps.predict:app",
    *,
    torch_threads: int | str = 1,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 120.0,
) -> Server:
    """Flask's own threaded development server: one process, a thread per request."""
    port = free_port()
    cmd = [sys.executable, "-m", "flask", "--app", app, "run", "--host", "127.0.0.1", "--port", str(port),
           "--with-threads", "--no-reload", "--no-debugger"]  # fmt: skip
    full_env = {**torch_thread_env(torch_threads), **(env or {})}
    return start(cmd, port=port, name="flask", env=full_env, ready_timeout=ready_timeout)


def stop_all() -> None:
    """Stop every server this process started and has not stopped yet."""
    for server in list(_LIVE.values()):
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - at exit, keep stopping the others
            pass


atexit.register(stop_all)
