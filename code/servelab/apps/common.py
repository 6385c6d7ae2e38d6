"""What every served app shares: settings from the environment, JSON errors, the model.

Environment variables (set by :func:`servelab.servers.gunicorn`):

- ``SERVELAB_TORCH_THREADS``: torch intra-op threads per worker (default 1;
  ``default`` leaves torch's one-per-core choice, which oversubscribes).
- ``SERVELAB_MODEL_WIDTH`` / ``SERVELAB_MODEL_DEPTH``: MLP size (4096 / 4 = 256 MiB).
- ``SERVELAB_PYLOOP_ITERS``: cost of the pure-Python ``/pyloop`` handler.
- ``SERVELAB_MAX_BODY_BYTES``: request bodies above this get 413.
- ``SERVELAB_MODEL_LOAD``: ``import`` (default: at import, so ``--preload``
  shares it), ``after_fork`` (each worker builds its own copy after the fork).
- ``SERVELAB_WRITE_WEIGHTS_AFTER_FORK=1``: each worker writes to every weight
  page after the fork, which breaks copy-on-write sharing.
Taught in: chapters/02_gil.ipynb.
"""

from __future__ import annotations

import os

import torch
from flask import Flask, jsonify, request
from gunicorn.http.errors import ParseException as GunicornParseError
from werkzeug.exceptions import HTTPException

from servelab.apps.mlp import build_mlp
from servelab.apps.validation import RequestError, check_body_complete


def configure_torch_threads() -> int:
    """Apply ``SERVELAB_TORCH_THREADS`` and return torch's thread count."""
    setting = os.environ.get("SERVELAB_TORCH_THREADS", "1")
    if setting != "default":
        torch.set_num_threads(int(setting))
    return torch.get_num_threads()


def env_int(name: str, default: int) -> int:
    """An integer setting from the environment."""
    return int(os.environ.get(name, default))


class ModelHolder:
    """The process's one model, built at import or after the fork."""

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None
        self.width = env_int("SERVELAB_MODEL_WIDTH", 4096)
        self.depth = env_int("SERVELAB_MODEL_DEPTH", 4)

    def load(self) -> torch.nn.Module:
        if self.model is None:
            self.model = build_mlp(self.width, self.depth)
        return self.model

    def write_weights(self) -> None:
        """Write to every weight page (values unchanged): each page gets copied."""
        with torch.no_grad():
            for p in self.load().parameters():
                p.mul_(1.0)


MODEL = ModelHolder()


def after_fork() -> None:
    """Called in each gunicorn worker once it has loaded the app."""
    if os.environ.get("SERVELAB_MODEL_LOAD") == "after_fork":
        MODEL.load()
    if os.environ.get("SERVELAB_WRITE_WEIGHTS_AFTER_FORK") == "1":
        MODEL.write_weights()


def json_error(status: int, message: str):  # noqa: ANN201 - a Flask response tuple
    """A JSON error body with the HTTP status."""
    return jsonify(error=message, status=status), status


def request_error(exc: RequestError):  # noqa: ANN201 - a Flask response tuple
    """The JSON answer to a client mistake found by :mod:`servelab.apps.validation`."""
    return jsonify(exc.body()), exc.status


def read_request_body() -> bytes:
    """The current request's whole body; 400 if it ended early or its chunked framing is broken.

    Over ``MAX_CONTENT_LENGTH``, Flask raises its 413 (a JSON answer, see :func:`make_app`).
    """
    try:
        body = request.get_data()
    except (OSError, GunicornParseError) as exc:  # gunicorn's InvalidChunkSize, NoMoreData: the client's bytes
        raise RequestError(400, f"the request body could not be read: {type(exc).__name__}: {exc}") from None
    check_body_complete(len(body), request.content_length)
    return body


def make_app(name: str) -> Flask:
    """A Flask app whose every error, 404 and 413 included, is JSON."""
    app = Flask(name)
    app.config["MAX_CONTENT_LENGTH"] = env_int("SERVELAB_MAX_BODY_BYTES", 8 * 2**20)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # noqa: ANN202
        return json_error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # noqa: ANN202
        app.logger.exception("unhandled error")
        return json_error(500, f"internal error: {type(exc).__name__}")

    @app.get("/health")
    def health():  # noqa: ANN202
        return jsonify(status="ok", pid=os.getpid(), model_loaded=MODEL.model is not None,
                       torch_threads=torch.get_num_threads())  # fmt: skip

    return app
