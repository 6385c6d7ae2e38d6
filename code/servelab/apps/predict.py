"""The chapters' model server: ``/predict`` (torch), ``/pyloop`` (pure Python), ``/health``.

``POST /predict`` takes JSON, either ``{"inputs": [[...], ...]}`` with rows of
the model's width, or ``{"batch": n}`` for a synthetic input made on the
server (cheap to send, so the load test measures the model, not JSON
parsing). ``"python_work": k`` adds k iterations of pure-Python work first,
like tokenisation would, which holds the GIL.

Simulated stalls (off by default): with ``SERVELAB_SLOW_FRACTION=0.02`` a
random 2% of ``/predict`` requests first sleep ``SERVELAB_SLOW_MS`` (default
50) milliseconds. This stands in for what gives real servers their latency
tail (a garbage-collection pause, a noisy neighbour on the same host, a page
fault): the worker is stalled, not computing, so the simulation costs no CPU.
Taught in: chapters/02_gil.ipynb, chapters/01_latency.ipynb (stalls).
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time

import torch
from flask import jsonify, request

from servelab.apps.common import MODEL, configure_torch_threads, env_int, json_error, make_app

MAX_BATCH = 256
PYLOOP_ITERS = env_int("SERVELAB_PYLOOP_ITERS", 150_000)
SLOW_FRACTION = float(os.environ.get("SERVELAB_SLOW_FRACTION", "0"))
SLOW_MS = float(os.environ.get("SERVELAB_SLOW_MS", "50"))
if not (0.0 <= SLOW_FRACTION <= 1.0 and SLOW_MS >= 0.0):
    raise ValueError("SERVELAB_SLOW_FRACTION must be in [0, 1] and SERVELAB_SLOW_MS >= 0")

# A mutation for the test suite (tests/test_ch2_mutation.py), off by default: SERVELAB_PREDICT_HOLD_GIL=1 puts one
# lock per process around the forward pass, as if torch kept the GIL, so a worker's threads run it one at a time.
FORWARD_LOCK = threading.Lock() if os.environ.get("SERVELAB_PREDICT_HOLD_GIL") == "1" else contextlib.nullcontext()

configure_torch_threads()
if os.environ.get("SERVELAB_MODEL_LOAD", "import") == "import":
    MODEL.load()

app = make_app(__name__)


def python_work(iterations: int) -> int:
    """Pure-Python CPU work that holds the GIL the whole time."""
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def simulated_stall_s(fraction: float, stall_ms: float, draw: float) -> float:
    """Seconds a request stalls: ``stall_ms`` if ``draw`` (uniform in [0, 1)) falls below ``fraction``.

    Taught in: chapters/01_latency.ipynb.
    """
    return stall_ms / 1e3 if draw < fraction else 0.0


class BadInput(ValueError):
    """The request's JSON does not describe a valid input."""


def parse_inputs(payload: object, width: int) -> torch.Tensor:
    """Validate a /predict payload and turn it into a (batch, width) tensor."""
    if not isinstance(payload, dict):
        raise BadInput('body must be a JSON object like {"inputs": [[...]]} or {"batch": 1}')
    if "inputs" in payload:
        rows = payload["inputs"]
        if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
            raise BadInput('"inputs" must be a non-empty list of rows')
        if len(rows) > MAX_BATCH:
            raise BadInput(f"at most {MAX_BATCH} rows per request, got {len(rows)}")
        if any(len(r) != width for r in rows):
            raise BadInput(f"every row must have {width} numbers")
        try:
            return torch.tensor(rows, dtype=torch.float32)
        except (TypeError, ValueError) as exc:
            raise BadInput(f"inputs must be numbers: {exc}") from None
    batch = payload.get("batch", 1)
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_BATCH:
        raise BadInput(f'"batch" must be an integer from 1 to {MAX_BATCH}')
    return torch.randn(batch, width)


@app.post("/predict")
def predict():  # noqa: ANN201
    payload = request.get_json(silent=True)
    if payload is None:
        return json_error(400, "body is not valid JSON (send Content-Type: application/json)")
    try:
        x = parse_inputs(payload, MODEL.width)
        work = payload.get("python_work", 0)
        if not isinstance(work, int) or not 0 <= work <= 10_000_000:
            raise BadInput('"python_work" must be an integer from 0 to 10000000')
    except BadInput as exc:
        return json_error(422, str(exc))
    stall = simulated_stall_s(SLOW_FRACTION, SLOW_MS, random.random())
    if stall:
        time.sleep(stall)  # random reseeds after fork, so workers stall independently
    python_work(work)
    with FORWARD_LOCK, torch.inference_mode():
        y = MODEL.load()(x)
    return jsonify(pid=os.getpid(), batch=int(x.shape[0]), top=y.argmax(dim=1).tolist())


@app.get("/pyloop")
def pyloop():  # noqa: ANN201
    return jsonify(pid=os.getpid(), result=python_work(PYLOOP_ITERS))
