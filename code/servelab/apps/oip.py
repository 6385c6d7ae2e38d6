"""The Open Inference Protocol (KServe v2) for the book's MLP, with the binary tensor data extension.

NVIDIA Triton, KServe, MLServer and Seldon speak this protocol, so their
clients (``tritonclient``, ``kserve``) talk to the book's servers too. This
module is the protocol without a web framework: the predict app (Flask) and
the batching app (aiohttp) route to it.

Routes (``{name}`` is :data:`MODEL_NAME`; ``/versions/{v}`` may follow it):

- ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server metadata);
- ``GET /v2/models/{name}`` (inputs, outputs, datatypes, shapes) and ``/v2/models/{name}/ready``;
- ``POST /v2/models/{name}/infer``: one input ``input`` (FP32, shape ``[rows, width]``),
  one output ``top`` (INT64, shape ``[rows]``: the argmax of each row).

An inference request is JSON (tensor values in ``data``), or, with the binary
extension, a JSON header of ``Inference-Header-Content-Length`` bytes followed
by the raw little-endian tensor bytes, whose length the input's
``parameters.binary_data_size`` gives. A row of 4096 floats is 83 KB of JSON
that takes about a millisecond to parse, or 16 KB of bytes that
``torch.frombuffer`` takes as they are. The answer is binary when the request
asks for it (``outputs[].parameters.binary_data`` or
``parameters.binary_data_output``), as ``tritonclient`` does by default.

Errors are ``{"error": "..."}`` with a 4xx status, as the protocol specifies;
the checks (finite numbers, shapes, sizes, nesting) are
:mod:`servelab.apps.validation`'s.
Taught in: chapters/04_batching.ipynb.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from servelab.apps.validation import MAX_ROWS, BadInput, RequestError, check_finite, decode_json

MODEL_NAME = "mlp"
MODEL_VERSION = "1"
INPUT_NAME = "input"
OUTPUT_NAME = "top"
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("binary_tensor_data",)
_REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs"})
_FLOAT32_BYTES = 4


@dataclass(frozen=True)
class InferRequest:
    """A validated inference request: the input rows, the request id, whether to answer in binary."""

    inputs: torch.Tensor
    request_id: str | None = None
    binary_output: bool = False


@dataclass(frozen=True)
class InferResponse:
    """An answer ready to send: the body bytes and the headers that go with it."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- metadata


def server_metadata() -> dict[str, Any]:
    """``GET /v2``: the server's name, version and protocol extensions."""
    return {"name": "servelab", "version": "0.1.0", "extensions": list(EXTENSIONS)}


def model_metadata(width: int) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the model's one input and one output, with datatypes and shapes."""
    return {
        "name": MODEL_NAME,
        "versions": [MODEL_VERSION],
        "platform": "pytorch",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, width]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "INT64", "shape": [-1]}],
    }


def check_model(name: str, version: str | None = None) -> None:
    """404 unless the path names this server's model (and, if given, its version)."""
    if name != MODEL_NAME:
        raise RequestError(404, f"unknown model {name!r}; this server serves {MODEL_NAME!r}")
    if version is not None and version != MODEL_VERSION:
        raise RequestError(404, f"unknown version {version!r} of model {name!r}; it has {MODEL_VERSION!r}")


def error_body(exc: RequestError) -> dict[str, str]:
    """The protocol's error body: only ``error`` (clients read that key)."""
    return {"error": exc.message}


# --------------------------------------------------------------------------- requests


def split_binary_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tail of a request body (all JSON when there is no header length)."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise RequestError(400, f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
    if not 0 < n <= len(body):
        raise RequestError(400, f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes")
    return body[:n], body[n:]


def _check_shape(shape: object, width: int) -> int:
    """The row count of a ``[rows, width]`` shape; 400 otherwise."""
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(d) is int for d in shape)):
        raise RequestError(400, f'input "shape" must be [rows, {width}], got {shape!r}')
    rows, cols = shape
    if cols != width or not 1 <= rows <= MAX_ROWS:
        raise RequestError(400, f'input "shape" must be [rows, {width}] with 1 <= rows <= {MAX_ROWS}, got {shape}')
    return rows


def _flat_numbers(data: object, count: int) -> list[float]:
    """``data`` flattened row-major (the protocol allows flat or nested lists) as ``count`` numbers."""
    flat: list[Any] = []
    stack = [data]
    while stack:  # iterative: a deeply nested "data" must not recurse
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif len(flat) == count:
            raise RequestError(400, f'input "data" has more than the {count} values its shape says')
        else:
            flat.append(item)
    if len(flat) != count:
        raise RequestError(400, f'input "data" has {len(flat)} values but its shape says {count}')
    if not set(map(type, flat)) <= {int, float}:
        raise RequestError(400, 'input "data" must hold numbers only (FP32)')
    return flat


def _tensor_from_json(data: object, rows: int, width: int) -> torch.Tensor:
    is_flat = isinstance(data, list) and len(data) == rows * width and set(map(type, data)) <= {int, float}
    flat = data if is_flat else _flat_numbers(data, rows * width)  # flat: the common case, one C-level pass
    try:
        return torch.tensor(flat, dtype=torch.float32).reshape(rows, width)
    except (OverflowError, RuntimeError) as exc:
        raise RequestError(400, f"input values must fit FP32: {exc}") from None


def _tensor_from_bytes(raw: bytes, rows: int, width: int) -> torch.Tensor:
    values = np.frombuffer(raw, dtype="<f4").reshape(rows, width)  # the protocol's byte order
    return torch.from_numpy(values.copy())  # a writable copy: frombuffer's view is read-only


def _input_tensor(spec: object, binary: bytes, width: int) -> tuple[torch.Tensor, int]:
    """The tensor of one input spec, and how many bytes of the binary tail it used."""
    if not isinstance(spec, dict):
        raise RequestError(400, "each entry of \"inputs\" must be an object")
    if spec.get("name") != INPUT_NAME:
        raise RequestError(400, f"unexpected input {spec.get('name')!r}; model {MODEL_NAME!r} takes {INPUT_NAME!r}")
    if spec.get("datatype") != "FP32":
        raise RequestError(400, f'input {INPUT_NAME!r} has datatype FP32, not {spec.get("datatype")!r}')
    rows = _check_shape(spec.get("shape"), width)
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError(400, 'input "parameters" must be an object')
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in spec:
            raise RequestError(400, f'input {INPUT_NAME!r} needs "data" or parameters.binary_data_size')
        return _tensor_from_json(spec["data"], rows, width), 0
    expected = rows * width * _FLOAT32_BYTES
    if type(size) is not int or size != expected:
        raise RequestError(400, f"binary_data_size must be {expected} for shape {spec['shape']} FP32, got {size!r}")
    if len(binary) < size:
        raise RequestError(400, f"binary_data_size is {size} but only {len(binary)} bytes follow the JSON header")
    return _tensor_from_bytes(binary[:size], rows, width), size


def _wants_binary_output(header: dict[str, Any]) -> bool:
    parameters = header.get("parameters") or {}
    outputs = header.get("outputs") or []
    if not isinstance(parameters, dict) or not isinstance(outputs, list):
        raise RequestError(400, '"parameters" must be an object and "outputs" a list')
    for output in outputs:
        if not isinstance(output, dict) or output.get("name") != OUTPUT_NAME:
            raise RequestError(400, f"unknown output in {output!r}; model {MODEL_NAME!r} has {OUTPUT_NAME!r}")
    flags = [(o.get("parameters") or {}).get("binary_data") for o in outputs]
    return bool(parameters.get("binary_data_output")) or any(flags)


def parse_infer_request(body: bytes, header_length: str | None, width: int) -> InferRequest:
    """Validate a ``POST /v2/models/{name}/infer`` body (JSON or JSON + binary tensors); 400 if invalid."""
    header_bytes, binary = split_binary_body(body, header_length)
    header = decode_json(header_bytes)
    if not isinstance(header, dict):
        raise RequestError(400, 'the inference request must be a JSON object with "inputs"')
    unknown = sorted(set(header) - _REQUEST_FIELDS)
    if unknown:
        raise RequestError(400, f"unknown field(s) {', '.join(map(repr, unknown))} in the inference request")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise RequestError(400, f'"inputs" must be a list of exactly one tensor, {INPUT_NAME!r}')
    try:
        x, used = _input_tensor(inputs[0], binary, width)
        check_finite(x)
    except BadInput as exc:  # the protocol answers every invalid argument with 400
        raise RequestError(400, exc.message) from None
    if used != len(binary):
        raise RequestError(400, f"{len(binary) - used} bytes after the JSON header belong to no input")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(400, '"id" must be a string')
    return InferRequest(x, request_id, _wants_binary_output(header))


# --------------------------------------------------------------------------- responses


def infer_response(top: list[int], request: InferRequest) -> InferResponse:
    """The answer to ``request``: output ``top`` as JSON data or as binary INT64 after the JSON header."""
    output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": "INT64", "shape": [len(top)]}
    head: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": MODEL_VERSION, "outputs": [output]}
    if request.request_id is not None:
        head["id"] = request.request_id
    if not request.binary_output:
        output["data"] = top
        return InferResponse(json.dumps(head).encode(), {"Content-Type": "application/json"})
    raw = np.asarray(top, dtype="<i8").tobytes()
    output["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(head).encode()
    return InferResponse(header + raw, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))})


# --------------------------------------------------------------------------- clients


def binary_request(rows: np.ndarray, *, binary_output: bool = False) -> tuple[bytes, dict[str, str]]:
    """A binary inference request for ``rows`` (float32, shape ``[n, width]``): body and headers.

    For load generators (``load.closed_loop(url, body=..., headers=...)``), so a
    load test can send the same rows as JSON or as bytes side by side.
    """
    data = np.ascontiguousarray(rows, dtype="<f4")
    if data.ndim != 2:
        raise ValueError(f"rows must be 2-D [n, width], got shape {data.shape}")
    raw = data.tobytes()
    header: dict[str, Any] = {
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": list(data.shape),
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": OUTPUT_NAME, "parameters": {"binary_data": binary_output}}],
    }  # fmt: skip
    head = json.dumps(header).encode()
    return head + raw, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


def json_request(rows: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The same request as :func:`binary_request` with the values as JSON ``data``."""
    data = np.asarray(rows, dtype=np.float32)
    header = {
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": list(data.shape), "data": data.ravel().tolist()}],
        "outputs": [{"name": OUTPUT_NAME}],
    }
    return json.dumps(header).encode(), {"Content-Type": "application/json"}


def infer_path(model: str = MODEL_NAME) -> str:
    """The inference route of ``model``."""
    return f"/v2/models/{model}/infer"

