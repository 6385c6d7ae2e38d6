"""A hostile HTTP client for the server tests: raw requests, slow and partial sends, and generated bodies.

Imported by tests/test_hostile_clients.py (the table of the issue and the
property-based fuzzing) and tests/test_oip_servers.py. It speaks HTTP/1.1
over a plain socket, so it can send what a polite client library would
refuse to: bodies shorter than their ``Content-Length``, broken chunked
framing, bytes trickled in with pauses.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import time
from dataclasses import dataclass, field

from hypothesis import strategies as st

JSON = "application/json"
FIELDS = ("inputs", "batch", "python_work")
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class Reply:
    """What came back: the status (None when the server closed without answering) and the body."""

    status: int | None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> dict:
        return json.loads(self.body)


def request_head(path: str, *, content_type: str | None = JSON, length: int | None = None,
                 chunked: bool = False, method: str = "POST", extra: dict[str, str] | None = None) -> bytes:  # fmt: skip
    """The request line and headers; ``length`` None with ``chunked`` False sends no length at all."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def exchange(port: int, head: bytes, body: bytes = b"", *, pieces: int = 1, pause_s: float = 0.0,
             half_close: bool = False, timeout_s: float = 10.0) -> Reply:  # fmt: skip
    """Send ``head`` then ``body`` in ``pieces`` with ``pause_s`` between them; read one answer.

    ``half_close`` shuts our sending side afterwards, so a server waiting for
    more body sees the end of the stream (and can still answer).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            sock.sendall(head)
            step = max(1, math.ceil(len(body) / max(1, pieces)))
            for start in range(0, len(body), step):
                sock.sendall(body[start : start + step])
                if pause_s:
                    time.sleep(pause_s)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # broken pipe, reset, not connected: the server answered early (a 413) and
            pass  # closed, or gave up on our bytes; its answer may still be readable
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            return Reply(response.status, response.read(), dict(response.getheaders()))
        except (http.client.RemoteDisconnected, http.client.BadStatusLine, ConnectionResetError):
            return Reply(None)


def post(port: int, path: str, body: bytes, content_type: str | None = JSON, **headers: str) -> Reply:
    """A well-formed POST of ``body``."""
    return exchange(port, request_head(path, content_type=content_type, length=len(body), extra=headers), body)


def get(port: int, path: str) -> Reply:
    return exchange(port, request_head(path, method="GET", content_type=None))


# --------------------------------------------------------------------------- the oracle


def _valid_number(value: object) -> bool:
    if type(value) is int:
        return abs(value) < FLOAT32_MAX  # compared as ints: 10**400 is too big for a float
    return type(value) is float and math.isfinite(value) and abs(value) < FLOAT32_MAX


def _valid_rows(rows: object, width: int) -> bool:
    if not isinstance(rows, list) or not 1 <= len(rows) <= 256:
        return False
    return all(isinstance(r, list) and len(r) == width and all(map(_valid_number, r)) for r in rows)


def _valid_count(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def is_valid_predict(payload: object, width: int, *, allow_python_work: bool) -> bool:
    """Whether a /predict JSON payload is valid, written apart from the servers' validator on purpose."""
    if not isinstance(payload, dict) or not set(payload) <= set(FIELDS):
        return False
    if ("inputs" in payload) == ("batch" in payload):
        return False
    if "inputs" in payload and not _valid_rows(payload["inputs"], width):
        return False
    if "batch" in payload and not _valid_count(payload["batch"], 1, 256):
        return False
    work = payload.get("python_work", 0)
    return _valid_count(work, 0, 10_000_000) and (allow_python_work or work == 0)


# --------------------------------------------------------------------------- strategies

#: Numbers a client might send: ordinary, huge, non-finite, and not numbers at all.
numbers = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.integers(-(10**6), 10**6),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e39, -1e39, 1e300, 10**40, -(10**40)]),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
any_json = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=16,
)


def rows_strategy(width: int) -> st.SearchStrategy:
    """Lists of rows, mostly of the right width and finite, sometimes not."""
    good_row = st.lists(st.floats(-100, 100, allow_nan=False), min_size=width, max_size=width)
    odd_row = st.lists(numbers, min_size=max(0, width - 2), max_size=width + 2)
    return st.lists(st.one_of(good_row, good_row, odd_row, st.just([]), numbers), min_size=0, max_size=4)


def predict_payloads(width: int) -> st.SearchStrategy:
    """Dictionaries near a valid /predict body: right and wrong fields, values and shapes."""
    values = {
        "inputs": st.one_of(rows_strategy(width), numbers),
        "batch": st.one_of(st.integers(-2, 300), numbers),
        "python_work": st.one_of(st.integers(-2, 50), st.just(0), numbers),
        "extra": any_json,
    }
    return st.fixed_dictionaries({}, optional=values)


def truncations(body: bytes) -> st.SearchStrategy:
    """``body`` cut short at any point (an empty body included)."""
    return st.integers(0, max(0, len(body) - 1)).map(lambda n: body[:n])


huge_number_texts = st.one_of(
    st.integers(300, 5000).map(lambda e: f"1e{e}"),
    st.integers(300, 5000).map(lambda e: f"-1e{e}"),
    st.integers(30, 6000).map(lambda n: "9" * n),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e-999", "0.0000001e-400", "-0"]),
)
content_types = st.sampled_from([
    None, JSON, "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/octet-stream", "*/*", "garbage", "",
])  # fmt: skip


def json_content_type(content_type: str | None) -> bool:
    """Whether the servers take ``content_type`` as JSON (a missing or empty one counts)."""
    return not content_type or content_type.split(";")[0].strip().lower() == JSON
