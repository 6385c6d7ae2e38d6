"""Server trees start fully, answer, and never outlive what started them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from servelab import servers

SMALL_MODEL = {"SERVELAB_MODEL_WIDTH": "256", "SERVELAB_MODEL_DEPTH": "2"}
TESTS = Path(__file__).parent


def all_dead(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.1)
    return False


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def test_free_port_is_bindable() -> None:
    import socket

    port = servers.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_gunicorn_serves_and_stops_cleanly() -> None:
    with servers.gunicorn(workers=2, env=SMALL_MODEL) as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        assert len(srv.worker_pids) == 2
        assert get_json(srv.url + "/health")["status"] == "ok"
        pids = srv.pids
        assert len(pids) == 3  # master + 2 workers; the guard is not counted
        assert srv.memory().pss > 0
        assert srv.cpu_seconds() > 0
    assert all_dead(pids), "server processes outlived the context manager"
    assert srv.alive_pids() == []
    assert isinstance(srv.log_tail(), str)  # the log stays readable after stop


def test_waits_for_every_worker_not_just_the_port() -> None:
    delay = 1.0
    env = {"PYTHONPATH": str(TESTS / "apps"), "SLOW_APP_DELAY_S": str(delay)}
    start = time.monotonic()
    with servers.gunicorn("slow_app:app", workers=2, env=env) as srv:
        elapsed = time.monotonic() - start
        ready = sorted(int(f.name) for f in srv.ready_dir.iterdir())
        assert ready == sorted(srv.worker_pids) and len(ready) == 2
        assert elapsed >= delay


def test_failed_start_raises_with_log() -> None:
    with pytest.raises(servers.ServerError, match="No module named|ModuleNotFoundError|App failed"):
        servers.gunicorn("no_such_module:app", workers=1, ready_timeout=30)


def test_cell_that_raises_still_stops_the_server() -> None:
    pids: list[int] = []
    with pytest.raises(RuntimeError):
        with servers.gunicorn(workers=1, env=SMALL_MODEL) as srv:
            pids = srv.pids
            raise RuntimeError("a failing notebook cell")
    assert pids and all_dead(pids)


def test_guard_exits_and_takes_the_group_when_told_to_stop() -> None:
    srv = servers.start([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port := servers.free_port())],
                        port=port, name="http.server", health_path="/")  # fmt: skip
    pids = srv.pids + [srv.guard.pid]
    srv.stop()
    assert all_dead(pids)


SCRIPT = """
import sys, time, json
from servelab import servers
srv = servers.gunicorn(workers=2, env={"SERVELAB_MODEL_WIDTH": "256", "SERVELAB_MODEL_DEPTH": "2"})
print(json.dumps(srv.pids + [srv.guard.pid]), flush=True)
if sys.argv[1] == "exit":
    sys.exit(0)          # normal exit: the atexit hook stops the server
time.sleep(120)          # wait to be killed
"""


def spawn_owner(mode: str) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SCRIPT), mode], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line, "owner process printed no PIDs"
    return proc, json.loads(line)


def test_atexit_stops_server_when_owner_exits_normally() -> None:
    proc, pids = spawn_owner("exit")
    assert proc.wait(timeout=60) == 0
    assert all_dead(pids), "atexit hook did not stop the server"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_owner_killed_leaves_no_server(sig: int) -> None:
    proc, pids = spawn_owner("sleep")
    assert all(psutil.pid_exists(p) for p in pids)
    proc.send_signal(sig)  # SIGKILL: no atexit, no finally; only PR_SET_PDEATHSIG is left
    proc.wait(timeout=10)
    assert all_dead(pids), f"server outlived its owner killed by {signal.Signals(sig).name}"


def test_killed_jupyter_kernel_leaves_no_gunicorn() -> None:
    """The case that matters: a reader's notebook kernel is killed outright."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    outputs: list[str] = []

    def keep_stdout(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            outputs.append(msg["content"]["text"])

    try:
        code = (
            "import os, json\n"
            "from servelab import servers\n"
            "srv = servers.gunicorn(workers=2, env={'SERVELAB_MODEL_WIDTH': '256', 'SERVELAB_MODEL_DEPTH': '2'})\n"
            "print(json.dumps({'kernel': os.getpid(), 'server': srv.pids + [srv.guard.pid]}))"
        )
        reply = kc.execute_interactive(code, timeout=120, output_hook=keep_stdout)
        assert reply["content"]["status"] == "ok", reply["content"]
        info = json.loads("".join(outputs))
        names = [psutil.Process(p).name() for p in info["server"]]
        assert any("gunicorn" in " ".join(psutil.Process(p).cmdline()) for p in info["server"]), names
        os.kill(info["kernel"], signal.SIGKILL)
        assert all_dead(info["server"]), "gunicorn outlived its SIGKILLed kernel"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
