"""Debian's nginx as a reverse proxy in front of a server, run unprivileged from a temp dir.

nginx normally runs as a system service: config in ``/etc/nginx``, logs in
``/var/log/nginx``, a PID file in ``/run``, and temp files for request
bodies and buffered responses in ``/var/lib/nginx``. None of these is
writable by a reader's account, so we write a complete config into a
temporary directory and point every path there: ``pid``, ``error_log`` and
all five ``*_temp_path`` directives. ``-p`` sets the prefix and ``-e`` the
start-up error log, which nginx otherwise opens in ``/var/log`` before it
has read our config.

nginx runs in the foreground (``daemon off``) under :mod:`servelab.servers`
like every other server, and stops gracefully on SIGQUIT: the master lets
its workers finish the requests in flight, then exits.
Taught in: chapters/02_gil.ipynb.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from servelab import servers, tools

TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_binary() -> str | None:
    """Path of the ``nginx`` executable, or None where it is not installed."""
    return tools.find("nginx")


def available() -> bool:
    """Whether nginx is installed here."""
    return nginx_binary() is not None


def render_config(*, listen_port: int, backend_port: int, workdir: Path, worker_processes: int = 1,
                  upstream_keepalive: int = 32) -> str:
    """A complete nginx.conf proxying 127.0.0.1:``listen_port`` to 127.0.0.1:``backend_port``.

    Every file nginx writes (PID, error log, temp files) lives under ``workdir``.
    The upstream keeps idle connections open (``keepalive``), which needs
    HTTP/1.1 and an empty ``Connection`` header towards the backend.
    """
    temp_lines = "\n".join(
        f"    {kind}_temp_path {workdir / 'temp' / kind};" for kind in TEMP_PATHS
    )
    return f"""\
# Written by servelab.nginx: an unprivileged reverse proxy for one backend.
daemon off;
master_process on;
worker_processes {worker_processes};
pid {workdir / 'nginx.pid'};
error_log {workdir / 'error.log'} warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
{temp_lines}

    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive {upstream_keepalive};
    }}

    server {{
        listen 127.0.0.1:{listen_port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"""


def write_config(workdir: Path, *, listen_port: int, backend_port: int, worker_processes: int = 1) -> Path:
    """Write nginx.conf and the temp directories into ``workdir``; return the config path."""
    for kind in TEMP_PATHS:
        (workdir / "temp" / kind).mkdir(parents=True, exist_ok=True)
    # Run as root, nginx hands requests to workers running as "nobody"; they must reach the temp dirs.
    workdir.chmod(0o755)
    conf = workdir / "nginx.conf"
    conf.write_text(render_config(listen_port=listen_port, backend_port=backend_port, workdir=workdir,
                                  worker_processes=worker_processes))
    return conf


def proxy(backend: servers.Server | int, *, worker_processes: int = 1, health_path: str = "/health",
          ready_timeout: float = 30.0) -> servers.Server:
    """Start nginx on a free port in front of ``backend`` (a Server or a port); use as a context manager.

    The returned :class:`servelab.servers.Server` is ready once ``health_path``
    answers *through* nginx, and stops with SIGQUIT (nginx's graceful stop).
    Raises :class:`FileNotFoundError` where nginx is not installed.
    """
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed (Debian/Ubuntu: apt-get install nginx-light)")
    backend_port = backend if isinstance(backend, int) else backend.port
    workdir = Path(tempfile.mkdtemp(prefix="servelab-nginx-"))
    port = servers.free_port()
    conf = write_config(workdir, listen_port=port, backend_port=backend_port, worker_processes=worker_processes)
    cmd = [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    return servers.start(cmd, port=port, name="nginx", health_path=health_path, stop_signal="QUIT",
                         ready_timeout=ready_timeout, workdir=workdir)
