"""Every server in the book against a hostile client: the issue's table, then property-based fuzzing.

Three real servers, each started once for this module: the predict app under
gunicorn (2 sync workers), the Python-objects app under gunicorn, and the
batching server (aiohttp). For every case: a 2xx only for a valid request, a
4xx for an invalid one, never a 5xx, no worker replaced, ``/health`` answers.

The number of cases scales with ``SERVELAB_FUZZ_SCALE`` (default 1: a few
hundred per server in about 10 s; ``SERVELAB_FUZZ_SCALE=20`` for a long run).
The case counts and times are printed at the end of the run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import hostile_client as hc
import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from servelab import servers
from servelab.apps import batched, oip

WIDTH = 16
TINY = {"SERVELAB_MODEL_WIDTH": str(WIDTH), "SERVELAB_MODEL_DEPTH": "2"}
SCALE = float(os.environ.get("SERVELAB_FUZZ_SCALE", "1"))
# hypothesis caches in ./.hypothesis by default; keep the repository clean (the example database is off too).
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="servelab-hypothesis-"))


def examples(n: int) -> int:
    return max(1, round(n * SCALE))


def fuzz_settings(n: int) -> settings:
    # No example database: the tests must not write into the repository, and each run explores afresh.
    return settings(max_examples=examples(n), deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))  # fmt: skip


@dataclass
class ServerUnderTest:
    """A running server, the processes that must survive, and the cases it has been sent."""

    name: str
    server: servers.Server
    allow_python_work: bool
    workers: list[psutil.Process] = field(default_factory=list)
    cases: int = 0
    seconds: float = 0.0

    @property
    def port(self) -> int:
        return self.server.port

    def check(self, reply: hc.Reply, valid: bool | None) -> None:
        """Assert the answer fits the request (valid: 2xx; invalid: 4xx; None: 4xx or no answer), then liveness."""
        self.cases += 1
        assert reply.status is None or reply.status < 500, f"{self.name}: {reply.status} {reply.body[:300]!r}"
        if valid is True:
            assert reply.status == 200, f"{self.name}: a valid request got {reply.status} {reply.body[:300]!r}"
        elif valid is False:
            assert reply.status is not None and 400 <= reply.status < 500, f"{self.name}: {reply.status} {reply.body[:300]!r}"
        if valid is not None and reply.status is not None and reply.status >= 400:
            # Broken HTTP framing (valid None) is answered by the HTTP layer below the app, in its own words.
            assert "error" in reply.json(), "a 4xx must say what was wrong, in JSON"
        self.check_alive()

    def check_alive(self) -> None:
        dead = [p.pid for p in self.workers if not p.is_running()]
        assert not dead, f"{self.name}: worker(s) {dead} died"
        assert self.server.worker_pids == sorted(p.pid for p in self.workers), f"{self.name}: a worker was replaced"
        assert hc.get(self.port, "/health").status == 200, f"{self.name}: /health does not answer"


STARTERS: dict[str, tuple[Callable[[], servers.Server], bool]] = {
    "predict (gunicorn)": (lambda: servers.gunicorn(workers=2, env=TINY), True),
    "pyobjects (gunicorn)": (lambda: servers.gunicorn("servelab.apps.pyobjects:app", workers=2,
                                                      env={**TINY, "SERVELAB_PY_OBJECTS": "1000"}), True),  # fmt: skip
    "batched (aiohttp)": (lambda: batched.start(max_batch=8, max_wait_ms=1, env=TINY), False),
}
TABLE: dict[tuple[str, str], int | None] = {}  # (request, server) -> status, for the summary


@pytest.fixture(scope="module", params=list(STARTERS))
def target(request):
    start, allow_work = STARTERS[request.param]
    srv = start()
    sut = ServerUnderTest(request.param, srv, allow_work, [psutil.Process(pid) for pid in srv.worker_pids])
    try:
        yield sut
        sut.check_alive()
    finally:
        srv.stop()
        report(request.config, sut)
    assert srv.alive_pids() == [], "a server outlived its test"


def report(config, sut: ServerUnderTest) -> None:
    """Print the case count and the table's answers, past pytest's output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    rows = sorted({row for row, server in TABLE if server == sut.name}, key=list(ISSUE_TABLE).index)
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\nhostile clients: {sut.name}: {sut.cases} cases in {sut.seconds:.1f} s "
                            f"(SERVELAB_FUZZ_SCALE={SCALE:g})")  # fmt: skip
        for row in rows:
            reporter.write_line(f"    {row:<32} -> {TABLE[(row, sut.name)]}")


@pytest.fixture()
def timed(target):
    t0 = time.perf_counter()
    yield target
    target.seconds += time.perf_counter() - t0


# --------------------------------------------------------------------------- the issue's table


def rows_of(text: str, n: int = 1) -> bytes:
    """``{"inputs": ...}`` with ``n`` rows of the model's width, every number written as ``text``."""
    row = b"[" + b",".join([text.encode()] * WIDTH) + b"]"
    return b'{"inputs": [' + b",".join([row] * n) + b"]}"


ISSUE_TABLE: dict[str, tuple[bytes, int, str]] = {
    "malformed JSON": (b'{"inputs": [[1, 2', 400, "not valid JSON"),
    "empty body": (b"", 400, "empty"),
    "wrong row length": (b'{"inputs": [[1.0, 2.0]]}', 422, f"{WIDTH} numbers"),
    "strings": (json.dumps({"inputs": [["a"] * WIDTH]}).encode(), 422, "numbers only"),
    "12 MB body": (b'{"inputs": [[' + b"0," * (6 * 2**20) + b"0]]}", 413, ""),
    '{"inputs": []}': (b'{"inputs": []}', 422, "non-empty"),
    "4096 x NaN (width x rows)": (rows_of("NaN", 4096 // WIDTH), 422, "finite"),
    "4096 x 1e999 (width x rows)": (rows_of("1e999", 4096 // WIDTH), 422, "finite"),
    "{} (no inputs at all)": (b"{}", 422, "exactly one"),
    "100,000 nested [": (b"[" * 100_000, 400, "nested too deeply"),
    "valid rows (control)": (rows_of("0.5", 2), 200, ""),
}


@pytest.mark.parametrize("row", list(ISSUE_TABLE))
def test_issue_table_row(timed, row: str) -> None:
    body, status, words = ISSUE_TABLE[row]
    reply = hc.post(timed.port, "/predict", body)
    TABLE[(row, timed.name)] = reply.status
    assert reply.status == status, f"{timed.name}: {row}: {reply.status} {reply.body[:200]!r}"
    if status >= 400:
        assert words in reply.json()["error"]
    timed.check(reply, status == 200)


# --------------------------------------------------------------------------- fuzzing


@fuzz_settings(150)
@given(payload=hc.predict_payloads(WIDTH))
def test_fuzz_near_valid_payloads(timed, payload) -> None:
    valid = hc.is_valid_predict(payload, WIDTH, allow_python_work=timed.allow_python_work)
    timed.check(hc.post(timed.port, "/predict", json.dumps(payload).encode()), valid)


@fuzz_settings(60)
@given(value=hc.any_json)
def test_fuzz_random_json(timed, value) -> None:
    valid = hc.is_valid_predict(value, WIDTH, allow_python_work=timed.allow_python_work)
    timed.check(hc.post(timed.port, "/predict", json.dumps(value).encode()), valid)


@fuzz_settings(60)
@given(body=st.binary(max_size=512))
def test_fuzz_random_bytes(timed, body: bytes) -> None:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        valid = False
    else:
        valid = hc.is_valid_predict(payload, WIDTH, allow_python_work=timed.allow_python_work)
    timed.check(hc.post(timed.port, "/predict", body), valid)


VALID_BODY = rows_of("0.25", 2)


@fuzz_settings(40)
@given(body=hc.truncations(VALID_BODY))
def test_fuzz_truncated_bodies(timed, body: bytes) -> None:
    timed.check(hc.post(timed.port, "/predict", body), False)


@fuzz_settings(30)
@given(number=hc.huge_number_texts)
def test_fuzz_huge_numbers(timed, number: str) -> None:
    body = rows_of(number)
    try:
        valid = hc.is_valid_predict(json.loads(body), WIDTH, allow_python_work=True)
    except ValueError:  # beyond Python's digit limit: the servers cannot parse it either
        valid = False
    timed.check(hc.post(timed.port, "/predict", body), valid)


@fuzz_settings(30)
@given(content_type=hc.content_types, valid_body=st.booleans())
def test_fuzz_content_types(timed, content_type: str | None, valid_body: bool) -> None:
    body = VALID_BODY if valid_body else b"{}"
    timed.check(hc.post(timed.port, "/predict", body, content_type), valid_body and hc.json_content_type(content_type))


@fuzz_settings(20)
@given(pieces=st.integers(2, 6), pause_ms=st.integers(0, 8), mode=st.sampled_from(["slow", "short", "chunked", "bad chunk"]),
       cut=st.integers(1, 50))  # fmt: skip
def test_fuzz_slow_and_partial_sends(timed, pieces: int, pause_ms: int, mode: str, cut: int) -> None:
    """Bodies trickled in pieces; bodies shorter than declared; chunked framing, good and broken."""
    body, valid = VALID_BODY, True
    if mode == "slow":
        head = hc.request_head("/predict", length=len(body))
    elif mode == "short":  # declare the full length, send less, then close our side
        head, body, valid = hc.request_head("/predict", length=len(body)), body[:-cut], None
    else:
        head = hc.request_head("/predict", chunked=True)
        size = b"zz" if mode == "bad chunk" else f"{len(body):x}".encode()
        body, valid = size + b"\r\n" + body + b"\r\n0\r\n\r\n", (True if mode == "chunked" else None)
    reply = hc.exchange(timed.port, head, body, pieces=pieces, pause_s=pause_ms / 1e3, half_close=valid is None)
    timed.check(reply, valid)


BINARY_BODY, BINARY_HEADERS = oip.binary_request(np.full((2, WIDTH), 0.5, np.float32))


@fuzz_settings(40)
@given(cut=st.integers(0, len(BINARY_BODY)), noise=st.binary(max_size=16), header_delta=st.integers(-3, 3))
def test_fuzz_binary_inference_bodies(timed, cut: int, noise: bytes, header_delta: int) -> None:
    """The Open Inference Protocol route with its binary framing cut, padded and mislabelled."""
    body = BINARY_BODY[: len(BINARY_BODY) - cut] + noise
    header_length = int(BINARY_HEADERS[oip.HEADER_LENGTH]) + header_delta
    valid = cut == 0 and not noise and header_delta == 0
    reply = hc.post(timed.port, oip.infer_path(), body, "application/octet-stream",
                    **{oip.HEADER_LENGTH: str(header_length)})  # fmt: skip
    timed.check(reply, valid)
