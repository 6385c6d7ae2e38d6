"""The chapters' model server: ``/predict`` (torch), ``/pyloop`` (pure Python), ``/health``.

``POST /predict`` takes JSON, either ``{"inputs": [[...], ...]}`` with rows of
the model's width, or ``{"batch": n}`` for a synthetic input made on the
server (cheap to send, so the load test measures the model, not JSON
parsing). ``"python_work": k`` adds k iterations of pure-Python work first,
like tokenisation would, which holds the GIL. One of ``inputs`` and
``batch`` is required (``{}`` is a 422); every client mistake gets its own
4xx JSON error (:mod:`servelab.apps.validation`), never a 500.

The Open Inference Protocol (KServe v2) routes sit beside it:
``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/mlp`` and
``POST /v2/models/mlp/infer`` with JSON or binary tensors (:mod:`servelab.apps.oip`).

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
from flask import Response, jsonify, request

from servelab.apps import oip
from servelab.apps.common import MODEL, configure_torch_threads, env_int, make_app, read_request_body, request_error
from servelab.apps.validation import MAX_ROWS, BadInput, RequestError, parse_inputs, validate_predict_body

__all__ = ["app", "BadInput", "parse_inputs", "python_work", "simulated_stall_s", "top_classes"]
MAX_BATCH = MAX_ROWS  # most rows per request (servelab.apps.validation checks it)
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


def top_classes(x: torch.Tensor) -> list[int]:
    """The model's answer for each row: the index of its largest output."""
    with FORWARD_LOCK, torch.inference_mode():
        return MODEL.load()(x).argmax(dim=1).tolist()


@app.post("/predict")
def predict():  # noqa: ANN201
    try:
        req = validate_predict_body(read_request_body(), request.content_type, MODEL.width)
    except RequestError as exc:
        return request_error(exc)
    stall = simulated_stall_s(SLOW_FRACTION, SLOW_MS, random.random())
    if stall:
        time.sleep(stall)  # random reseeds after fork, so workers stall independently
    python_work(req.python_work)
    return jsonify(pid=os.getpid(), batch=int(req.inputs.shape[0]), top=top_classes(req.inputs))


# ---- the Open Inference Protocol (KServe v2), beside /predict: see servelab.apps.oip
def oip_error(exc: RequestError):  # noqa: ANN201 - a Flask response tuple
    return jsonify(oip.error_body(exc)), exc.status


@app.get("/v2")
def oip_server_metadata():  # noqa: ANN201
    return jsonify(oip.server_metadata())


@app.get("/v2/health/live")
def oip_live():  # noqa: ANN201
    return jsonify(live=True)


@app.get("/v2/health/ready")
def oip_ready():  # noqa: ANN201
    return jsonify(ready=MODEL.model is not None)


@app.get("/v2/models/<name>", defaults={"version": None, "ready": False})
@app.get("/v2/models/<name>/versions/<version>", defaults={"ready": False})
@app.get("/v2/models/<name>/ready", defaults={"version": None, "ready": True})
@app.get("/v2/models/<name>/versions/<version>/ready", defaults={"ready": True})
def oip_model(name: str, version: str | None, ready: bool):  # noqa: ANN201
    """The model's metadata, or (``.../ready``) whether it is ready."""
    try:
        oip.check_model(name, version)
    except RequestError as exc:
        return oip_error(exc)
    return jsonify(name=name, ready=MODEL.model is not None) if ready else jsonify(oip.model_metadata(MODEL.width))


@app.post("/v2/models/<name>/infer")
@app.post("/v2/models/<name>/versions/<version>/infer")
def oip_infer(name: str, version: str | None = None):  # noqa: ANN201
    try:
        oip.check_model(name, version)
        req = oip.parse_infer_request(read_request_body(), request.headers.get(oip.HEADER_LENGTH), MODEL.width)
    except RequestError as exc:
        return oip_error(exc)
    answer = oip.infer_response(top_classes(req.inputs), req)
    return Response(answer.body, status=200, headers=answer.headers)


@app.get("/pyloop")
def pyloop():  # noqa: ANN201
    return jsonify(pid=os.getpid(), result=python_work(PYLOOP_ITERS))
