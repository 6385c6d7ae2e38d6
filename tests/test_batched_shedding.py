"""The batching server under overload: 503 with Retry-After from a full queue, 504 past a deadline, counted in /stats."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import hostile_client as hc
import pytest

from servelab.apps import batched

# Big enough that a forward pass takes milliseconds, so 40 concurrent requests overflow a queue of 2.
MEDIUM = {"SERVELAB_MODEL_WIDTH": "1024", "SERVELAB_MODEL_DEPTH": "4"}
BODY = json.dumps({"batch": 1}).encode()


@pytest.fixture(scope="module")
def server():
    srv = batched.start(max_batch=1, max_wait_ms=0, max_queue=2, env=MEDIUM)
    yield srv
    srv.stop()
    assert srv.alive_pids() == [], "the batching server outlived its test"


def burst(port: int, n: int, **headers: str) -> list[hc.Reply]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _: hc.post(port, "/predict", BODY, **headers), range(n)))


def test_a_full_queue_answers_503_with_retry_after(server) -> None:
    batched.get_stats(server.url, reset=True)
    replies = burst(server.port, 40)
    statuses = sorted(r.status for r in replies)
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    shed = [r for r in replies if r.status == 503]
    assert all("queue is full" in r.json()["error"] for r in shed)
    assert all(r.headers.get("Retry-After", "").isdigit() and int(r.headers["Retry-After"]) >= 1 for r in shed)
    assert batched.wait_until_drained(server.url, timeout=10)
    stats = batched.get_stats(server.url)
    assert stats["shed"] == len(shed) and stats["max_queue"] == 2
    assert stats["answered"] + stats["shed"] == len(replies), "every request is answered exactly once"


def test_a_request_past_its_deadline_gets_504_unrun(server) -> None:
    batched.configure(server.url, max_queue=None)  # queue everything, so the late ones expire instead
    try:
        hc.post(server.port, "/predict", BODY)  # the batcher learns how long a batch takes
        batched.get_stats(server.url, reset=True)
        replies = burst(server.port, 20, **{batched.DEADLINE_HEADER: "0.5"})
        assert {r.status for r in replies} <= {200, 504}
        assert any(r.status == 504 for r in replies)
        assert batched.wait_until_drained(server.url, timeout=10)
        stats = batched.get_stats(server.url)
        assert stats["expired"] == sum(r.status == 504 for r in replies)
        assert stats["answered"] + stats["expired"] == len(replies)
    finally:
        batched.configure(server.url, max_queue=2)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "inf", "nan"])
def test_a_bad_deadline_header_is_a_400(server, value: str) -> None:
    reply = hc.post(server.port, "/predict", BODY, **{batched.DEADLINE_HEADER: value})
    assert reply.status == 400 and batched.DEADLINE_HEADER in reply.json()["error"]


def test_config_sets_and_validates_the_overload_settings(server) -> None:
    stats = batched.configure(server.url, deadline_ms=250)
    assert stats["default_deadline_ms"] == 250 and stats["max_queue"] == 2
    stats = batched.configure(server.url, deadline_ms=None)
    assert stats["default_deadline_ms"] is None
    assert hc.post(server.port, "/config", json.dumps({"max_queue": 0}).encode()).status == 422
    assert hc.post(server.port, "/config", json.dumps({"deadline_ms": -1}).encode()).status == 422
