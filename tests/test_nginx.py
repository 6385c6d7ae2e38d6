"""nginx in front of a backend: it proxies, it writes only to its temp dir, and it leaves no process."""

import sys
import tempfile
import urllib.request
from pathlib import Path

import psutil
import pytest

from servelab import nginx, servers, tools

needs_nginx = pytest.mark.skipif(not nginx.available(), reason=tools.missing_reason("nginx"))


def test_config_puts_every_written_path_in_the_workdir(tmp_path):
    text = nginx.render_config(listen_port=18080, backend_port=18081, workdir=tmp_path)
    assert "listen 127.0.0.1:18080;" in text
    assert "server 127.0.0.1:18081;" in text
    assert "daemon off;" in text
    for kind in nginx.TEMP_PATHS:
        assert f"{kind}_temp_path {tmp_path / 'temp' / kind};" in text
    assert f"pid {tmp_path / 'nginx.pid'};" in text
    assert "/var/" not in text and "/run/" not in text
    assert 'proxy_set_header Connection "";' in text  # upstream keepalive needs it


@pytest.fixture
def static_backend():
    """A tiny static file server with a /health file, started through servelab.servers."""
    root = Path(tempfile.mkdtemp(prefix="servelab-static-"))
    (root / "health").write_text("ok\n")
    (root / "big.bin").write_bytes(b"x" * 300_000)  # bigger than nginx's memory buffers: uses proxy_temp_path
    port = servers.free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)]
    with servers.start(cmd, port=port, name="static") as backend:
        yield backend


@needs_nginx
def test_nginx_proxies_and_stops_leaving_no_process(static_backend):
    proxy = nginx.proxy(static_backend)
    try:
        assert proxy.port != static_backend.port
        with urllib.request.urlopen(proxy.url + "/health", timeout=5) as resp:
            assert resp.read() == b"ok\n"
        with urllib.request.urlopen(proxy.url + "/big.bin", timeout=5) as resp:
            assert len(resp.read()) == 300_000
        names = {psutil.Process(pid).name() for pid in proxy.pids}
        assert names == {"nginx"}, names
        assert len(proxy.pids) >= 2  # master and a worker
        assert (proxy.workdir / "nginx.pid").exists()
    finally:
        proxy.stop()
    assert proxy.alive_pids() == []
    assert "emerg" not in (proxy.workdir / "error.log").read_text()
    with urllib.request.urlopen(static_backend.url + "/health", timeout=5) as resp:
        assert resp.status == 200  # stopping the proxy left the backend alone


def test_proxy_without_nginx_says_so(monkeypatch):
    monkeypatch.setattr(nginx, "nginx_binary", lambda: None)
    assert not nginx.available()
    with pytest.raises(FileNotFoundError, match="nginx"):
        nginx.proxy(12345)
