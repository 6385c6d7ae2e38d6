"""The predict app: right answers for good input, clear 4xx JSON for bad input."""

from __future__ import annotations

import http.client
import json
import os

import pytest

from servelab import servers
from servelab.apps import mlp

# A tiny model for in-process tests. Restore the environment right after the
# import: nbval kernels inherit it, and the chapters must get the real model.
_saved = dict(os.environ)
os.environ.update(SERVELAB_MODEL_WIDTH="64", SERVELAB_MODEL_DEPTH="2")
from servelab.apps import predict  # noqa: E402

os.environ.clear()
os.environ.update(_saved)

WIDTH = predict.MODEL.width


@pytest.fixture()
def client():
    return predict.app.test_client()


def test_health(client) -> None:
    body = client.get("/health").get_json()
    assert body["status"] == "ok" and body["pid"] == os.getpid()


def test_predict_synthetic_batch(client) -> None:
    body = client.post("/predict", json={"batch": 3}).get_json()
    assert body["batch"] == 3 and len(body["top"]) == 3


def test_predict_real_inputs(client) -> None:
    rows = [[0.1] * WIDTH, [0.2] * WIDTH]
    resp = client.post("/predict", json={"inputs": rows, "python_work": 1000})
    assert resp.status_code == 200 and resp.get_json()["batch"] == 2


def test_pyloop(client) -> None:
    assert client.get("/pyloop").status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2, 3]", 422, "JSON object"),
        (json.dumps({"inputs": [[1.0, 2.0]]}).encode(), 422, f"{WIDTH} numbers"),
        (json.dumps({"inputs": []}).encode(), 422, "non-empty"),
        (json.dumps({"inputs": [["a"] * WIDTH]}).encode(), 422, "numbers"),
        (json.dumps({"batch": 0}).encode(), 422, "batch"),
        (json.dumps({"batch": True}).encode(), 422, "batch"),
        (json.dumps({"batch": 10_000}).encode(), 422, "batch"),
        (json.dumps({"batch": 1, "python_work": -1}).encode(), 422, "python_work"),
    ],
)
def test_bad_input_gets_json_4xx(client, body: bytes, status: int, words: str) -> None:
    resp = client.post("/predict", data=body, content_type="application/json")
    assert resp.status_code == status
    assert words in resp.get_json()["error"]


def test_unknown_route_and_method_are_json(client) -> None:
    assert client.get("/nope").get_json()["status"] == 404
    assert client.get("/predict").get_json()["status"] == 405


def test_oversize_body_gets_413_and_worker_survives() -> None:
    env = {"SERVELAB_MODEL_WIDTH": "64", "SERVELAB_MODEL_DEPTH": "2", "SERVELAB_MAX_BODY_BYTES": "1000"}
    with servers.gunicorn(workers=1, env=env) as srv:
        worker = srv.worker_pids[0]
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        body = b'{"inputs": [[' + b"0," * 5000 + b"0]]}"
        conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 413
        assert "error" in json.loads(resp.read())
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("POST", "/predict", body=b"{bad", headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 400
        assert srv.worker_pids == [worker], "the worker was replaced: bad input crashed it"


def test_mlp_sizes() -> None:
    assert mlp.mlp_weight_bytes(4096, 4) // 2**20 == 256
    model = mlp.build_mlp(32, 3)
    assert sum(p.numel() * 4 for p in model.parameters()) == mlp.mlp_weight_bytes(32, 3)
    assert mlp.mlp_flops(batch=2, width=32, depth=3) == 2 * 2 * 3 * 32 * 32
