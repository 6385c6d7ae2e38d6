"""The generation server over transformers' continuous-batching engine, and over static batching:
the cache has the size asked for, tokens stream in OpenAI's format, bad requests get a 400 and the
engine keeps serving, both engines generate the same greedy tokens, and the server dies with a
killed notebook kernel."""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest

from servelab import generation, load, tinyllm
from servelab.apps import generate

SMALL = dict(num_blocks=16, page_size=16, max_batch_tokens=64)  # a 256-token cache: quick to build
MAX_LEN = SMALL["num_blocks"] * SMALL["page_size"]


@pytest.fixture(scope="module")
def servers_pair():
    model_dir = tinyllm.saved_model_dir()
    continuous = generate.start(model_dir, "continuous", **SMALL, wait=False)
    static = generate.start(model_dir, "static", max_batch=4, max_wait_ms=5, wait=False)
    continuous.wait_ready(), static.wait_ready()
    yield continuous, static
    for srv in (continuous, static):
        srv.stop()
        assert srv.alive_pids() == [], f"{srv.name} outlived its test"


@pytest.fixture(scope="module")
def continuous(servers_pair):
    return servers_pair[0]


def test_the_engine_cache_has_the_size_asked_for(continuous) -> None:
    info = generate.engine_info(continuous.url)
    assert (info["num_blocks"], info["page_size"], info["max_batch_tokens"]) == (16, 16, 64)
    kv = generation.kv_bytes_per_token(4, 4, 64, 4)  # the tiny Llama in float32
    assert MAX_LEN * kv <= info["cache_bytes"] <= (MAX_LEN + 2 * SMALL["page_size"]) * kv  # + the engine's 2 trash blocks
    assert info["max_model_len"] == MAX_LEN and info["torch_threads"] == 1


def test_the_engine_in_process_builds_exactly_num_blocks() -> None:
    import torch

    engine = generate.ContinuousEngine(tinyllm.build_model(), num_blocks=8, page_size=16, max_batch_tokens=32)
    try:
        assert engine.cache.num_blocks == 8
        assert engine.processor.max_batch_tokens == 32
        assert engine.cache.cache_tensor.numel() < 64 * 2**20, "a cache sized from RAM, not from num_blocks"
    finally:
        engine.close()
    assert torch.get_num_threads() >= 1


def test_tokens_stream_one_event_each(continuous) -> None:
    record = generation.stream_one(continuous.url + "/v1/completions", generation.completion_body(12, 7))
    assert record.ok and record.output_tokens == 7 and len(record.token_times) == 7
    assert 0 < record.ttft <= record.latency and record.tpot > 0


def test_both_engines_generate_the_same_greedy_tokens(servers_pair) -> None:
    answers = []
    for srv in servers_pair:
        status, answer = generation.status_of(srv.url + "/v1/completions", generation.completion_body(10, 6, stream=False))
        assert status == 200, answer
        answers.append(answer["choices"][0]["text"])
        assert answer["usage"] == {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16}
    assert answers[0] == answers[1] and len(answers[0].split()) == 6


@pytest.mark.parametrize("name", list(generation.bad_requests(MAX_LEN)))
def test_bad_requests_get_400_and_the_engine_keeps_serving(servers_pair, name) -> None:
    for srv in servers_pair:
        limit = generate.engine_info(srv.url)["max_model_len"]  # the static engine's is the model's context
        status, answer = generation.status_of(srv.url + "/v1/completions", generation.bad_requests(limit)[name])
        assert status == 400 and answer["error"]["type"] == "invalid_request_error", answer
        ok, _ = generation.status_of(srv.url + "/v1/completions", generation.completion_body(4, 2, stream=False))
        assert ok == 200, f"{srv.name} stopped serving after a request with {name}"


@pytest.mark.parametrize("payload", [[], {"prompt": ""}, {"prompt": [1, 99999]}, {"prompt": "w1", "max_tokens": True},
                                     {"prompt": "w1", "stream": "yes"}, {"prompt": 5}])
def test_more_malformed_requests(continuous, payload) -> None:
    status, answer = generation.status_of(continuous.url + "/v1/completions", json.dumps(payload).encode())
    assert status == 400, answer


def test_a_request_filling_the_whole_cache_is_served(continuous) -> None:
    body = json.dumps({"prompt": tinyllm.prompt(MAX_LEN - 6), "max_tokens": 6, "stream": True}).encode()
    record = generation.stream_one(continuous.url + "/v1/completions", body)
    assert record.ok and record.output_tokens == 6
    assert generation.status_of(continuous.url + "/v1/completions", generation.completion_body(4, 2, stream=False))[0] == 200


def test_concurrent_streams_all_finish(continuous) -> None:
    schedule, bodies = [0.0] * 6, [generation.completion_body(8, 5 + i, seed=i) for i in range(6)]
    run = load.streams_on_schedule(continuous.url + "/v1/completions", schedule, bodies, deadline_s=20)
    assert run.ok == 6 and [r.output_tokens for r in run.records] == [5, 6, 7, 8, 9, 10]


def test_the_step_budget_can_be_lowered_not_raised(servers_pair) -> None:
    continuous, static = servers_pair
    try:
        assert generate.engine_info(continuous.url, max_batch_tokens=16)["max_batch_tokens"] == 16
        record = generation.stream_one(continuous.url + "/v1/completions", generation.completion_body(100, 3))
        assert record.ok, "a prompt longer than the budget is prefilled in chunks"
        for url in (continuous.url, static.url):
            too_big = generation.status_of(url + "/engine", json.dumps({"max_batch_tokens": 10_000}).encode())
            assert too_big[0] == 400
    finally:
        generate.engine_info(continuous.url, max_batch_tokens=SMALL["max_batch_tokens"])


def test_killed_kernel_leaves_no_generation_server() -> None:
    """A reader's kernel SIGKILLed while the engine runs: the guard takes the server down."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    outputs: list[str] = []
    try:
        code = ("import os, json\nfrom servelab import tinyllm\nfrom servelab.apps import generate\n"
                "srv = generate.start(tinyllm.saved_model_dir(), 'continuous', num_blocks=8, page_size=16, max_batch_tokens=32)\n"
                "print(json.dumps({'kernel': os.getpid(), 'server': srv.pids + [srv.guard.pid]}))")  # fmt: skip
        reply = kc.execute_interactive(code, timeout=180, output_hook=lambda m: outputs.append(
            m["content"]["text"]) if m["msg_type"] == "stream" and m["content"]["name"] == "stdout" else None)  # fmt: skip
        assert reply["content"]["status"] == "ok", reply["content"]
        info = json.loads([line for line in "".join(outputs).splitlines() if line.startswith("{")][-1])
        assert any("servelab.apps.generate" in " ".join(psutil.Process(p).cmdline()) for p in info["server"])
        procs = [psutil.Process(p) for p in info["server"]]
        os.kill(info["kernel"], signal.SIGKILL)
        _, alive = psutil.wait_procs(procs, timeout=15)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "the server outlived its SIGKILLed kernel"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
