"""The one request validator: each client mistake gets its own 4xx, and valid bodies pass unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from servelab.apps import validation
from servelab.apps.validation import BadInput, RequestError, validate_predict_body

WIDTH = 8
JSON = "application/json"


def status_of(body: bytes, content_type: str | None = JSON, **kwargs) -> int:
    try:
        validate_predict_body(body, content_type, WIDTH, **kwargs)
    except RequestError as exc:
        return exc.status
    return 200


def numbers(text: str) -> bytes:
    """A one-row ``inputs`` body whose every number is ``text`` (raw JSON, so 1e999 stays 1e999)."""
    return b'{"inputs": [[' + b",".join([text.encode()] * WIDTH) + b"]]}"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"", 400),
        (b"  \n", 400),
        (b"\xff\xfe{}", 400),  # not UTF-8
        (b"[" * 100_000, 400),  # nested past the parser's recursion limit
        (b'{"batch": ' + b"9" * 5000 + b"}", 400),  # beyond Python's int-parsing limit
        (b"{}", 422),  # no default: one of inputs and batch is required
        (b"[1, 2]", 422),
        (b'"text"', 422),
        (b"null", 422),
        (b'{"inputs": []}', 422),
        (b'{"inputs": [[1.0, 2.0]]}', 422),
        (json.dumps({"inputs": [["a"] * WIDTH]}).encode(), 422),
        (json.dumps({"inputs": [[True] * WIDTH]}).encode(), 422),
        (json.dumps({"inputs": [[None] * WIDTH]}).encode(), 422),
        (json.dumps({"inputs": [[[1.0]] * WIDTH]}).encode(), 422),
        (json.dumps({"inputs": [[1.0] * WIDTH] * 257}).encode(), 422),
        (numbers("NaN"), 422),
        (numbers("Infinity"), 422),
        (numbers("-Infinity"), 422),
        (numbers("1e999"), 422),  # parses as float infinity
        (numbers("1e39"), 422),  # finite in float64, infinite in float32
        (numbers("1" + "0" * 40), 422),  # an integer beyond float32
        (b'{"batch": 0}', 422),
        (b'{"batch": true}', 422),
        (b'{"batch": 1.0}', 422),
        (b'{"batch": 257}', 422),
        (b'{"batch": 1, "inputs": [[1]]}', 422),
        (b'{"batch": 1, "extra": 1}', 422),
        (b'{"batch": 1, "python_work": -1}', 422),
        (b'{"batch": 1, "python_work": "10"}', 422),
        (b'{"batch": 1}', 200),
        (b'{"batch": 256, "python_work": 5}', 200),
        (numbers("0.5"), 200),
        (numbers("-3"), 200),
        (numbers("3.4e38"), 200),
    ],
)
def test_each_mistake_gets_its_status(body: bytes, status: int) -> None:
    assert status_of(body) == status


@pytest.mark.parametrize(
    ("content_type", "status"),
    [(None, 200), ("", 200), (JSON, 200), ("application/json; charset=utf-8", 200), ("Application/JSON", 200),
     ("text/plain", 415), ("application/x-www-form-urlencoded", 415), ("application/octet-stream", 415)],
)
def test_content_type_must_be_json_when_given(content_type: str | None, status: int) -> None:
    assert status_of(b'{"batch": 1}', content_type) == status


def test_valid_rows_become_the_same_float32_tensor() -> None:
    rows = [[float(i + j) for j in range(WIDTH)] for i in range(3)]
    req = validate_predict_body(json.dumps({"inputs": rows, "python_work": 7}).encode(), JSON, WIDTH)
    assert req.python_work == 7 and req.inputs.dtype == torch.float32
    assert torch.equal(req.inputs, torch.tensor(rows))


def test_synthetic_batch_has_the_requested_rows() -> None:
    assert validate_predict_body(b'{"batch": 5}', JSON, WIDTH).inputs.shape == (5, WIDTH)


def test_python_work_is_refused_where_it_would_block_an_event_loop() -> None:
    assert status_of(b'{"batch": 1, "python_work": 3}', allow_python_work=False) == 422
    assert status_of(b'{"batch": 1, "python_work": 0}', allow_python_work=False) == 200


def test_body_size_and_error_body() -> None:
    validation.check_body_size(None, 10)
    validation.check_body_size(10, 10)
    with pytest.raises(RequestError) as caught:
        validation.check_body_size(11, 10)
    assert caught.value.status == 413 and caught.value.body() == {"error": caught.value.message, "status": 413}


def test_messages_name_the_mistake() -> None:
    for body, words in [(numbers("NaN"), "finite"), (b"{}", "exactly one"), (b"[" * 5000, "nested too deeply"),
                        (b'{"batch": 1, "x": 1}', "unknown field")]:  # fmt: skip
        with pytest.raises(RequestError) as caught:
            validate_predict_body(body, JSON, WIDTH)
        assert words in caught.value.message


def test_a_request_error_is_always_a_4xx() -> None:
    assert BadInput("x").status == 422
    with pytest.raises(ValueError):
        RequestError(500, "a server fault is not a client mistake")
