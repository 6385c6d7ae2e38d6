"""One request validator for every app the book serves: each client mistake gets its own 4xx.

A reader copies these servers as templates, so a bad request must never
reach the model or crash a worker, and must never be answered 500 (a 500
says *the server* is broken, and clients and load balancers treat it so).
Every check raises :class:`RequestError`, which carries the HTTP status and
a message; each framework's handler turns it into a JSON answer.

The rules, in the order they are checked:

======================================  ======  ==================================
request                                 status  why
======================================  ======  ==================================
body over the size limit                413     checked before reading it
body shorter than its Content-Length,   400     the client closed early, or sent
broken chunked framing                          bytes that are not HTTP
``Content-Type`` other than JSON        415     (none at all is taken as JSON)
not JSON, not UTF-8, empty              400     the body cannot be parsed
nested deeper than the parser's limit   400     ``RecursionError`` caught, not a 500
not an object, unknown or missing       422     parsed, but not a valid request
field, wrong type or shape, non-finite
number, number beyond float32
======================================  ======  ==================================

The ``/predict`` body is ``{"inputs": [[...], ...]}`` (rows of the model's
width) or ``{"batch": n}`` (a synthetic input made on the server), plus an
optional ``"python_work": k``. Exactly one of ``inputs`` and ``batch`` is
required: ``{}`` is a 422, there is no default. The same row and number
rules apply to the Open Inference Protocol routes (:mod:`servelab.apps.oip`).
Taught in: chapters/02_gil.ipynb, chapters/04_batching.ipynb.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

#: Most rows one request may carry.
MAX_ROWS = 256
#: Most iterations of pure-Python work one request may ask for.
MAX_PYTHON_WORK = 10_000_000
PREDICT_FIELDS = ("inputs", "batch", "python_work")
JSON_MEDIA_TYPES = frozenset({"application/json"})
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class RequestError(ValueError):
    """A client mistake: the HTTP status to answer with, and a message saying what to fix."""

    def __init__(self, status: int, message: str) -> None:
        if not 400 <= status < 500:
            raise ValueError(f"a client mistake needs a 4xx status, not {status}")
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict[str, Any]:
        """The JSON error body every app sends."""
        return {"error": self.message, "status": self.status}


class BadInput(RequestError):
    """Valid JSON that is not a valid request: a 422."""

    def __init__(self, message: str) -> None:
        super().__init__(422, message)


@dataclass(frozen=True)
class PredictRequest:
    """A validated ``/predict`` request: the (rows, width) input and the pure-Python work to do first."""

    inputs: torch.Tensor
    python_work: int = 0


# --------------------------------------------------------------------------- the HTTP layer


def check_body_size(length: int | None, limit: int) -> None:
    """413 when the body is (or says it is) bigger than ``limit`` bytes."""
    if length is not None and length > limit:
        raise RequestError(413, f"request body size is {length} bytes; the limit is {limit}")


def check_body_complete(received: int, declared: int | None) -> None:
    """400 when the body ended before the ``Content-Length`` it declared (the client closed early).

    Some servers hand the app what arrived without saying it is short; a
    truncated ``{"batch": 1}...`` can even parse, so the lengths are compared.
    """
    if declared is not None and received < declared:
        raise RequestError(400, f"request body ended after {received} of the {declared} bytes it declared")


def check_json_content_type(content_type: str | None) -> None:
    """415 unless the media type is JSON; a missing header is taken as JSON (curl, simple clients)."""
    if not content_type:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in JSON_MEDIA_TYPES:
        raise RequestError(415, f"send Content-Type: application/json, not {media_type!r}")


def decode_json(body: bytes) -> Any:
    """Parse a JSON body; 400 if it is empty, not UTF-8, not JSON, or nested past the parser's limit."""
    if not body.strip():
        raise RequestError(400, "body is empty; send a JSON object")
    try:
        return json.loads(body)
    except RecursionError:
        # The C parser recurses once per nesting level; past the interpreter's limit it raises
        # RecursionError (not a ValueError), which would otherwise surface as a 500.
        raise RequestError(400, "body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise RequestError(400, f"body is not valid JSON: {exc}") from None


# --------------------------------------------------------------------------- values


def check_int(value: object, name: str, low: int, high: int) -> int:
    """An integer (not a bool) from ``low`` to ``high``; 422 otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadInput(f'"{name}" must be an integer from {low} to {high}')
    return value


def check_finite(x: torch.Tensor) -> torch.Tensor:
    """422 if any value is NaN or infinite (``1e999`` parses as infinity; ``1e39`` overflows float32)."""
    if not bool(torch.isfinite(x).all()):
        raise BadInput(f"inputs must be finite numbers within float32 range (|x| <= {_FLOAT32_MAX:.3g}); "
                       "got NaN or infinity")  # fmt: skip
    return x


def _is_number_row(row: list[Any]) -> bool:
    # One C-level pass: the set of the row's element types. bool is a subclass of int, so an
    # isinstance check would let JSON true/false through; comparing the types themselves does not.
    return set(map(type, row)) <= {int, float}


def rows_to_tensor(rows: object, width: int, *, max_rows: int = MAX_ROWS, field: str = "inputs") -> torch.Tensor:
    """A non-empty list of ``width``-number rows as a finite float32 (rows, width) tensor; 422 otherwise."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise BadInput(f'"{field}" must be a non-empty list of rows (lists of numbers)')
    if len(rows) > max_rows:
        raise BadInput(f"at most {max_rows} rows per request, got {len(rows)}")
    if any(len(r) != width for r in rows):
        raise BadInput(f"every row must have {width} numbers")
    if not all(_is_number_row(r) for r in rows):
        raise BadInput(f'"{field}" must hold numbers only (no strings, booleans, nulls or lists inside a row)')
    try:
        x = torch.tensor(rows, dtype=torch.float32)
    except (OverflowError, RuntimeError) as exc:  # an integer too big for a float
        raise BadInput(f"inputs must be numbers within float32 range: {exc}") from None
    return check_finite(x)


# --------------------------------------------------------------------------- /predict


def parse_inputs(payload: object, width: int) -> torch.Tensor:
    """Validate a /predict payload's input and turn it into a (batch, width) tensor (422 if invalid)."""
    if not isinstance(payload, dict):
        raise BadInput('body must be a JSON object like {"inputs": [[...]]} or {"batch": 1}')
    unknown = sorted(set(payload) - set(PREDICT_FIELDS))
    if unknown:
        raise BadInput(f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(PREDICT_FIELDS)}")
    if ("inputs" in payload) == ("batch" in payload):
        raise BadInput('send exactly one of "inputs" (rows of numbers) and "batch" (a row count)')
    if "inputs" in payload:
        return rows_to_tensor(payload["inputs"], width)
    return torch.randn(check_int(payload["batch"], "batch", 1, MAX_ROWS), width)


def parse_predict(payload: object, width: int, *, allow_python_work: bool = True) -> PredictRequest:
    """Validate a parsed /predict body: its input tensor and its ``python_work`` (422 if invalid)."""
    x = parse_inputs(payload, width)
    assert isinstance(payload, dict)  # parse_inputs checked it
    work = check_int(payload.get("python_work", 0), "python_work", 0, MAX_PYTHON_WORK)
    if work and not allow_python_work:
        raise BadInput('"python_work" would block the event loop; the batching server does not do it')
    return PredictRequest(x, work)


def validate_predict_body(
    body: bytes, content_type: str | None, width: int, *, allow_python_work: bool = True
) -> PredictRequest:
    """The whole /predict check on a raw body: media type (415), JSON (400), then the fields (422).

    The size limit (413) is each framework's job, before the body is read.
    """
    check_json_content_type(content_type)
    return parse_predict(decode_json(body), width, allow_python_work=allow_python_work)

