"""The batching HTTP server: right answers to the right callers, JSON errors, stats and config."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from servelab.apps import batched
from servelab.apps.mlp import build_mlp

WIDTH, DEPTH = 32, 2
TINY = {"SERVELAB_MODEL_WIDTH": str(WIDTH), "SERVELAB_MODEL_DEPTH": str(DEPTH)}


@pytest.fixture(scope="module")
def server():
    srv = batched.start(max_batch=8, max_wait_ms=20, env=TINY)
    yield srv
    srv.stop()
    assert srv.alive_pids() == [], "the batching server outlived its test"


def post(url: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_answers_with_the_model_loaded(server) -> None:
    with urllib.request.urlopen(server.url + "/health", timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "ok" and body["model_loaded"] and body["torch_threads"] == 1


def test_concurrent_callers_each_get_their_own_rows_answer(server) -> None:
    # Distinct inputs; the expected answers come from the same model run unbatched in this process.
    model = build_mlp(WIDTH, DEPTH)
    inputs = [torch.randn(1 + i % 3, WIDTH, generator=torch.Generator().manual_seed(i)) for i in range(40)]
    with torch.inference_mode():
        expected = [model(x).argmax(dim=1).tolist() for x in inputs]
    batched.get_stats(server.url, reset=True)
    with ThreadPoolExecutor(max_workers=20) as pool:
        replies = list(pool.map(lambda x: post(server.url + "/predict", {"inputs": x.tolist()}), inputs))
    assert all(status == 200 for status, _ in replies)
    assert [body["top"] for _, body in replies] == expected, "an answer went to the wrong caller"
    assert max(body["server_batch"] for _, body in replies) > 3, "concurrent requests should share batches"
    stats = batched.get_stats(server.url)
    assert stats["answered"] == stats["submitted"] == 40
    assert max(int(k) for k in stats["batch_size_histogram"]) <= 8, "a batch exceeded max_batch rows"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 422, "JSON object"),
        (json.dumps({"inputs": [[1.0, 2.0]]}).encode(), 422, f"{WIDTH} numbers"),
        (json.dumps({"batch": 0}).encode(), 422, "batch"),
        (json.dumps({"batch": 1, "python_work": 10}).encode(), 422, "event loop"),
        (b"x" * (9 * 2**20), 413, "size"),
    ],
)
def test_bad_input_gets_a_json_error(server, body, status, words) -> None:
    code, reply = post(server.url + "/predict", body)
    assert code == status and reply["status"] == status and words in reply["error"]


def test_unknown_route_is_a_json_404(server) -> None:
    code, reply = post(server.url + "/nope", {})
    assert code == 404 and reply["status"] == 404


def test_config_switches_aimd_and_validates(server) -> None:
    assert batched.configure(server.url, target_ms=25)["adaptive_target_ms"] == 25
    stats = batched.configure(server.url, target_ms=None, max_batch=8, max_wait_ms=1)
    assert stats["adaptive_target_ms"] is None and stats["cap"] == 8 and stats["max_wait_ms"] == 1
    assert post(server.url + "/config", {"max_batch": 0})[0] == 422
    assert post(server.url + "/config", {"bogus": 1})[0] == 422
    batched.configure(server.url, max_wait_ms=20)


def test_reset_returns_the_stats_before_zeroing(server) -> None:
    post(server.url + "/predict", {"batch": 2})
    before = batched.get_stats(server.url, reset=True)
    after = batched.get_stats(server.url)
    assert before["answered"] >= 1 and after["answered"] == 0
    assert batched.wait_until_drained(server.url, timeout=5)


def test_the_environment_of_this_process_is_untouched() -> None:
    assert os.environ.get("SERVELAB_MODEL_WIDTH") != str(WIDTH)


def test_stats_count_parse_and_forward_cpu(server) -> None:
    batched.get_stats(server.url, reset=True)
    for _ in range(5):
        assert post(server.url + "/predict", {"inputs": [[0.5] * WIDTH]})[0] == 200
    stats = batched.get_stats(server.url)
    assert stats["parsed"] == 5 and stats["parse_cpu_s"] > 0
    assert 0 < stats["forward_cpu_s"] <= stats["batcher_cpu_s"]
