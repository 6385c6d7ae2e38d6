"""The Open Inference Protocol on both apps, spoken by a client the book did not write (``tritonclient``).

Metadata, a JSON inference, a binary inference, and 4xx answers for bad
requests, against the predict app (gunicorn) and the batching server; then
the book's load generators sending binary bodies.
"""

from __future__ import annotations

import json

import hostile_client as hc
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from servelab import load, servers
from servelab.apps import batched, oip
from servelab.apps.mlp import build_mlp

WIDTH, DEPTH = 16, 2
TINY = {"SERVELAB_MODEL_WIDTH": str(WIDTH), "SERVELAB_MODEL_DEPTH": str(DEPTH)}
STARTERS = {
    "predict (gunicorn)": lambda: servers.gunicorn(workers=2, env=TINY),
    "batched (aiohttp)": lambda: batched.start(max_batch=8, max_wait_ms=1, env=TINY),
}


@pytest.fixture(scope="module", params=list(STARTERS))
def server(request):
    srv = STARTERS[request.param]()
    yield srv
    srv.stop()
    assert srv.alive_pids() == [], "a server outlived its test"


@pytest.fixture()
def client(server):
    c = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=30)
    yield c
    c.close()


def some_rows(n: int = 3) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, WIDTH)).astype(np.float32)


def expected_top(rows: np.ndarray) -> list[int]:
    with torch.inference_mode():
        return build_mlp(WIDTH, DEPTH)(torch.from_numpy(rows)).argmax(dim=1).tolist()


def test_health_and_metadata(client) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(oip.MODEL_NAME)
    meta = client.get_model_metadata(oip.MODEL_NAME)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, WIDTH]}]
    assert meta["outputs"] == [{"name": "top", "datatype": "INT64", "shape": [-1]}]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_inference_gives_the_models_answer(client, binary: bool) -> None:
    rows = some_rows()
    tensor = triton.InferInput("input", list(rows.shape), "FP32").set_data_from_numpy(rows, binary_data=binary)
    outputs = [triton.InferRequestedOutput("top", binary_data=binary)]
    result = client.infer(oip.MODEL_NAME, [tensor], outputs=outputs, request_id="r1")
    assert result.as_numpy("top").tolist() == expected_top(rows)
    assert result.get_response()["id"] == "r1"


def test_binary_inference_with_default_outputs(client) -> None:
    rows = some_rows(2)
    tensor = triton.InferInput("input", [2, WIDTH], "FP32").set_data_from_numpy(rows)  # binary by default
    result = client.infer(oip.MODEL_NAME, [tensor])  # no outputs named: tritonclient asks for binary ones
    assert result.as_numpy("top").tolist() == expected_top(rows)


@pytest.mark.parametrize(
    ("rows", "model", "status"),
    [(np.zeros((1, WIDTH + 1), np.float32), oip.MODEL_NAME, "400"),  # wrong width
     (np.full((1, WIDTH), np.nan, np.float32), oip.MODEL_NAME, "400"),  # non-finite
     (np.zeros((1, WIDTH), np.float32), "bert", "404")],  # fmt: skip
)
def test_bad_requests_raise_the_protocols_errors(client, rows, model, status) -> None:
    tensor = triton.InferInput("input", list(rows.shape), "FP32").set_data_from_numpy(rows)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [tensor])
    assert caught.value.status() == status and caught.value.message()


def test_a_malformed_binary_body_is_a_400(server) -> None:
    rows = some_rows(2)
    tensor = triton.InferInput("input", [2, WIDTH], "FP32").set_data_from_numpy(rows)
    body, json_size = triton.InferenceServerClient.generate_request_body([tensor])
    for bad_body, header_length in [(body[:-5], json_size), (body + b"\0" * 4, json_size), (body, json_size - 3),
                                    (body, len(body) + 1)]:  # fmt: skip
        reply = hc.post(server.port, oip.infer_path(), bad_body, "application/octet-stream",
                        **{oip.HEADER_LENGTH: str(header_length)})  # fmt: skip
        assert reply.status == 400 and set(reply.json()) == {"error"}, reply
    assert hc.get(server.port, "/health").status == 200


@pytest.mark.parametrize("tool", ["wrk", "asyncio", "open"])
def test_load_generators_send_binary_bodies(server, tool: str) -> None:
    if tool == "wrk" and not load.wrk_available():
        pytest.skip("wrk is not installed")
    body, headers = oip.binary_request(some_rows(1), binary_output=True)
    url = server.url + oip.infer_path()
    if tool == "open":
        result = load.open_loop(url, rate=100, duration_s=0.5, body=body, headers=headers)
        assert result.sent > 10 and result.errors == 0 and result.unfinished == 0
    else:
        result = load.closed_loop(url, concurrency=2, duration_s=0.5, max_requests=200, method="POST",
                                  body=body, headers=headers, tool=tool)  # fmt: skip
        assert result.completed > 10 and result.errors == 0


def test_json_and_binary_requests_agree_over_http(server) -> None:
    rows = some_rows(4)
    answers = []
    for make in (oip.json_request, oip.binary_request):
        body, headers = make(rows)
        reply = hc.post(server.port, oip.infer_path(), body, headers.pop("Content-Type"), **headers)
        assert reply.status == 200
        answers.append(json.loads(reply.body)["outputs"][0]["data"])
    assert answers[0] == answers[1] == expected_top(rows)
