"""The Open Inference Protocol layer, without a server: requests in, answers out, 400s for bad bodies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from servelab.apps import oip
from servelab.apps.validation import RequestError

WIDTH = 8


def rows(n: int = 2) -> np.ndarray:
    return np.arange(n * WIDTH, dtype=np.float32).reshape(n, WIDTH) / 7


def parse(body: bytes, headers: dict[str, str]) -> oip.InferRequest:
    return oip.parse_infer_request(body, headers.get(oip.HEADER_LENGTH), WIDTH)


@pytest.mark.parametrize("make", [oip.json_request, oip.binary_request])
def test_json_and_binary_requests_give_the_same_tensor(make) -> None:
    body, headers = make(rows())
    assert torch.equal(parse(body, headers).inputs, torch.from_numpy(rows()))


def test_nested_json_data_is_accepted_row_major() -> None:
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, WIDTH],
                                   "data": rows().tolist()}]}).encode()  # fmt: skip
    assert torch.equal(parse(body, {}).inputs, torch.from_numpy(rows()))


def test_binary_answer_carries_int64_after_the_header() -> None:
    body, headers = oip.binary_request(rows(), binary_output=True)
    request = parse(body, headers)
    answer = oip.infer_response([3, 5], request)
    n = int(answer.headers[oip.HEADER_LENGTH])
    head = json.loads(answer.body[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 16
    assert np.frombuffer(answer.body[n:], dtype="<i8").tolist() == [3, 5]


def test_json_answer_has_the_data_inline() -> None:
    body, headers = oip.json_request(rows())
    head = json.loads(oip.infer_response([1, 2], parse(body, headers)).body)
    assert head["outputs"] == [{"name": "top", "datatype": "INT64", "shape": [2], "data": [1, 2]}]


def mutated(change) -> tuple[bytes, dict[str, str]]:
    """A binary request whose JSON header ``change`` edits (the header length follows)."""
    body, headers = oip.binary_request(rows())
    n = int(headers[oip.HEADER_LENGTH])
    header = json.loads(body[:n])
    change(header)
    head = json.dumps(header).encode()
    return head + body[n:], {oip.HEADER_LENGTH: str(len(head))}


def _set_input(key, value):
    return lambda h: h["inputs"][0].__setitem__(key, value)


@pytest.mark.parametrize(
    "make_bad",
    [
        lambda: (oip.binary_request(rows())[0][:-4], oip.binary_request(rows())[1]),  # truncated tensor bytes
        lambda: (oip.binary_request(rows())[0] + b"xx", oip.binary_request(rows())[1]),  # bytes nobody claims
        lambda: (oip.binary_request(rows())[0], {oip.HEADER_LENGTH: "abc"}),
        lambda: (oip.binary_request(rows())[0], {oip.HEADER_LENGTH: "0"}),
        lambda: (oip.binary_request(rows())[0], {oip.HEADER_LENGTH: "999999"}),
        lambda: (oip.binary_request(rows())[0], {oip.HEADER_LENGTH: "10"}),  # splits the JSON
        lambda: mutated(_set_input("shape", [2, WIDTH + 1])),
        lambda: mutated(_set_input("shape", [0, WIDTH])),
        lambda: mutated(_set_input("shape", [2.0, WIDTH])),
        lambda: mutated(_set_input("datatype", "FP64")),
        lambda: mutated(_set_input("name", "other")),
        lambda: mutated(_set_input("parameters", {"binary_data_size": 7})),
        lambda: mutated(_set_input("parameters", {})),
        lambda: mutated(lambda h: h.__setitem__("inputs", [])),
        lambda: mutated(lambda h: h.__setitem__("bogus", 1)),
        lambda: mutated(lambda h: h.__setitem__("outputs", [{"name": "logits"}])),
        lambda: (np.full((1, WIDTH), np.nan, "<f4").tobytes(), {}),  # raw bytes without a header
        lambda: oip.binary_request(np.full((1, WIDTH), np.inf, np.float32)),
        lambda: (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, WIDTH],
                                         "data": ["a"] * WIDTH}]}).encode(), {}),  # fmt: skip
        lambda: (json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, WIDTH],
                                         "data": [1.0] * (WIDTH + 1)}]}).encode(), {}),  # fmt: skip
        lambda: (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [NaN'
                 + b", 1" * 7 + b"]}]}", {}),  # fmt: skip
        lambda: (b'{"inputs": ' + b"[" * 100_000, {}),
    ],
)
def test_malformed_requests_get_400(make_bad) -> None:
    body, headers = make_bad()
    with pytest.raises(RequestError) as caught:
        parse(body, headers)
    assert caught.value.status == 400 and oip.error_body(caught.value) == {"error": caught.value.message}


def test_unknown_model_is_404_and_metadata_describes_the_tensors() -> None:
    with pytest.raises(RequestError) as caught:
        oip.check_model("bert")
    assert caught.value.status == 404
    oip.check_model(oip.MODEL_NAME, oip.MODEL_VERSION)
    meta = oip.model_metadata(WIDTH)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, WIDTH]}]
    assert meta["outputs"][0]["datatype"] == "INT64"
