"""The MLP behind a dynamic batcher, served by aiohttp in one process.

Run it as ``python -m servelab.apps.batched --port P [--max-batch 32]
[--max-wait-ms 2] [--target-ms T] [--max-queue N] [--deadline-ms D] [--kernel dense|onednn]``, or
start it from a notebook with :func:`start`. One event loop parses requests
(the same JSON as ``servelab.apps.predict``, validated by the same
``parse_inputs`` in :mod:`servelab.apps.validation`) and hands
each input to a :class:`servelab.batching.DynamicBatcher`, whose one thread
runs the forward pass. torch releases the GIL inside the matrix multiplies,
so the loop keeps accepting requests while a batch computes: the next batch
forms behind the one in flight.

Routes: ``POST /predict``, ``GET /health`` (answers once the model is
loaded: the server only listens after that), ``GET /stats`` (the batcher's
histogram of batch sizes, batch times and current cap, and where the CPU went:
``forward_cpu_s``, ``batcher_cpu_s`` and the event loop's ``parse_cpu_s``
over ``parsed`` bodies), ``POST /stats/reset``,
and ``POST /config`` (``max_batch``, ``max_wait_ms``, ``target_ms``; a null
``target_ms`` turns AIMD off; ``max_queue``, ``deadline_ms``, null for off) to
change the batching without reloading the model. The Open Inference Protocol
(KServe v2) routes sit beside ``/predict``: see :mod:`servelab.apps.oip`.

Overload (off by default, as in the chapter's first runs): with
``max_queue`` set, a request that finds that many waiting gets 503 with
``Retry-After`` at once, before its body is parsed. With ``deadline_ms``, or
a client's ``X-Deadline-Ms`` header, a request that can no longer be answered
in time is dropped before compute and gets 504. ``/stats`` counts both
(``shed``, ``expired``).
Taught in: chapters/04_batching.ipynb.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from servelab import servers

if TYPE_CHECKING:
    from aiohttp import web

MAX_CONFIG_BATCH = 1024
CONFIG_FIELDS = ("max_batch", "max_wait_ms", "target_ms", "max_queue", "deadline_ms")
#: Request header: the client's deadline, in milliseconds from the server's receipt of the request.
DEADLINE_HEADER = "X-Deadline-Ms"


class ParseClock:
    """CPU time the event loop spent parsing and validating request bodies (a context manager).

    The event loop is one thread, so ``time.thread_time()`` around a parse is
    that parse's CPU, whatever else the machine runs.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.cpu_s, self.count = 0.0, 0

    def __enter__(self) -> "ParseClock":
        self._t0 = time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_s += time.thread_time() - self._t0
        self.count += 1

    def stats(self) -> dict[str, Any]:
        return {"parse_cpu_s": self.cpu_s, "parsed": self.count}


def build_app(
    max_batch: int = 32,
    max_wait_ms: float = 2.0,
    target_ms: float | None = None,
    *,
    max_queue: int | None = None,
    deadline_ms: float | None = None,
    kernel: str = "dense",
) -> "web.Application":
    """The aiohttp application with its model loaded and its batcher running.

    ``max_queue`` and ``deadline_ms`` (both off by default) are the batcher's
    overload protection: see :mod:`servelab.batching`. ``kernel`` is how the
    forward pass multiplies (:data:`servelab.apps.mlp.KERNELS`).
    """
    import torch
    from aiohttp import web

    from servelab.apps import oip
    from servelab.apps.common import MODEL, configure_torch_threads, env_int
    from servelab.apps.mlp import forward_function
    from servelab.apps.validation import RequestError, check_body_complete, check_body_size, validate_predict_body
    from servelab.batching import AIMD, BatcherClosed, DeadlineExceeded, DynamicBatcher, QueueFull

    configure_torch_threads()
    run_model = forward_function(MODEL.load(), kernel)
    max_body = env_int("SERVELAB_MAX_BODY_BYTES", 8 * 2**20)

    def forward(inputs: list[torch.Tensor]) -> list[dict[str, Any]]:
        with torch.inference_mode():
            top = run_model(torch.cat(inputs)).argmax(dim=1).tolist()
        rows = len(top)
        answers, start = [], 0
        for x in inputs:
            answers.append({"top": top[start : start + x.shape[0]], "server_batch": rows})
            start += x.shape[0]
        return answers

    batcher = DynamicBatcher(
        forward,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        adaptive=AIMD(target_ms) if target_ms else None,
        units=lambda x: int(x.shape[0]),
        max_queue=max_queue,
        default_deadline_ms=deadline_ms,
    )

    parsing = ParseClock()

    @web.middleware
    async def json_errors(request: web.Request, handler):  # noqa: ANN001, ANN202
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return web.json_response({"error": exc.text or exc.reason, "status": exc.status}, status=exc.status)
        except Exception as exc:  # noqa: BLE001 - the client gets JSON, the log gets the trace
            request.app.logger.exception("unhandled error")
            return web.json_response({"error": f"internal error: {type(exc).__name__}", "status": 500}, status=500)

    def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
        return web.json_response({"error": message, "status": status}, status=status, headers=headers)

    async def read_body(request: web.Request) -> bytes:
        check_body_size(request.content_length, max_body)  # 413 before reading, when the length is declared
        try:
            body = await request.read()  # aiohttp's client_max_size answers 413 for an undeclared one
        except ConnectionResetError:  # the client closed before its body was complete
            raise RequestError(400, "the connection closed before the request body was complete") from None
        check_body_complete(len(body), request.content_length)
        return body

    async def run_batched(x: torch.Tensor, deadline: float | None) -> dict[str, Any] | web.Response:
        """The batcher's answer for ``x``, or the 503/504 that says why there is none."""
        try:
            return await batcher.submit_async(x, deadline)
        except QueueFull as exc:
            return overloaded(exc)
        except DeadlineExceeded as exc:
            return error(504, str(exc))
        except BatcherClosed as exc:
            return error(503, str(exc))

    def overloaded(exc: QueueFull) -> web.Response:
        retry_after = str(max(1, math.ceil(exc.retry_after_s)))  # whole seconds, as HTTP says
        return error(503, f"{exc}; retry after {retry_after} s", {"Retry-After": retry_after})

    def request_deadline(request: web.Request, arrived: float) -> float | None:
        """The client's deadline (``X-Deadline-Ms``: milliseconds from arrival), if it sent one."""
        value = request.headers.get(DEADLINE_HEADER)
        if value is None:
            return None
        try:
            budget_ms = float(value)
        except ValueError:
            raise RequestError(400, f"{DEADLINE_HEADER} must be a number of milliseconds, got {value!r}") from None
        if not 0 < budget_ms < math.inf:
            raise RequestError(400, f"{DEADLINE_HEADER} must be > 0 and finite, got {value!r}")
        return arrived + budget_ms / 1e3

    async def predict(request: web.Request) -> web.Response:
        arrived = time.monotonic()
        try:
            batcher.refuse_if_full()  # before parsing: shedding must cost almost nothing
            deadline = request_deadline(request, arrived)
            body = await read_body(request)
            with parsing:
                req = validate_predict_body(body, request.headers.get("Content-Type"), MODEL.width,
                                            allow_python_work=False)  # fmt: skip
        except QueueFull as exc:
            return overloaded(exc)
        except RequestError as exc:
            return web.json_response(exc.body(), status=exc.status)
        answer = await run_batched(req.inputs, deadline)
        if isinstance(answer, web.Response):
            return answer
        return web.json_response({"pid": os.getpid(), "batch": int(req.inputs.shape[0]), **answer})

    # ---- the Open Inference Protocol (KServe v2): servelab.apps.oip
    def oip_error(exc: RequestError) -> web.Response:
        return web.json_response(oip.error_body(exc), status=exc.status)

    async def oip_server(request: web.Request) -> web.Response:
        return web.json_response(oip.server_metadata())

    async def oip_live(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def oip_ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": MODEL.model is not None and not batcher.closed})

    async def oip_model(request: web.Request) -> web.Response:
        """The model's metadata, or (``.../ready``) whether it is ready."""
        try:
            oip.check_model(request.match_info["name"], request.match_info.get("version"))
        except RequestError as exc:
            return oip_error(exc)
        if request.path.endswith("/ready"):
            return web.json_response({"name": oip.MODEL_NAME, "ready": not batcher.closed})
        return web.json_response(oip.model_metadata(MODEL.width))

    async def oip_infer(request: web.Request) -> web.Response:
        arrived = time.monotonic()
        try:
            oip.check_model(request.match_info["name"], request.match_info.get("version"))
            batcher.refuse_if_full()
            deadline = request_deadline(request, arrived)
            body = await read_body(request)
            with parsing:
                req = oip.parse_infer_request(body, request.headers.get(oip.HEADER_LENGTH), MODEL.width)
        except QueueFull as exc:
            return overloaded(exc)
        except RequestError as exc:
            return oip_error(exc)
        answer = await run_batched(req.inputs, deadline)
        if isinstance(answer, web.Response):
            return answer
        reply = oip.infer_response(answer["top"], req)
        return web.Response(body=reply.body, headers=reply.headers)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pid": os.getpid(), "model_loaded": MODEL.model is not None,
                                  "torch_threads": torch.get_num_threads(), "kernel": kernel})  # fmt: skip

    def all_stats() -> dict[str, Any]:
        return {**batcher.stats(), **parsing.stats()}

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(all_stats())

    async def reset(request: web.Request) -> web.Response:
        before = all_stats()
        batcher.reset_stats()
        parsing.reset()
        return web.json_response(before)

    async def configure(request: web.Request) -> web.Response:
        try:
            settings = json.loads(await request.read())
            if not isinstance(settings, dict) or set(settings) - set(CONFIG_FIELDS):
                raise ValueError(f"send a JSON object with some of {', '.join(CONFIG_FIELDS)}")
            batch = settings.get("max_batch")
            if batch is not None and not (isinstance(batch, int) and 1 <= batch <= MAX_CONFIG_BATCH):
                raise ValueError(f"max_batch must be an integer from 1 to {MAX_CONFIG_BATCH}")
            target = settings.get("target_ms", "keep")
            adaptive = "keep" if target == "keep" else (AIMD(float(target)) if target else None)
            batcher.configure(max_batch=batch, max_wait_ms=settings.get("max_wait_ms"), adaptive=adaptive,
                              max_queue=settings.get("max_queue", "keep"),
                              default_deadline_ms=settings.get("deadline_ms", "keep"))  # fmt: skip
        except (ValueError, TypeError, RecursionError) as exc:
            return error(422, str(exc) or type(exc).__name__)
        return web.json_response(batcher.stats())

    async def close_batcher(app: web.Application) -> None:
        batcher.close(timeout=10)  # serve what is queued, then stop

    app = web.Application(middlewares=[json_errors], client_max_size=max_body)
    app.add_routes([web.post("/predict", predict), web.get("/health", health), web.get("/stats", stats),
                    web.post("/stats/reset", reset), web.post("/config", configure)])  # fmt: skip
    model_routes = ["/v2/models/{name}", "/v2/models/{name}/versions/{version}"]
    app.add_routes([web.get("/v2", oip_server), web.get("/v2/health/live", oip_live),
                    web.get("/v2/health/ready", oip_ready)]  # fmt: skip
                   + [web.get(path, oip_model) for path in model_routes]
                   + [web.get(path + "/ready", oip_model) for path in model_routes]
                   + [web.post(path + "/infer", oip_infer) for path in model_routes])  # fmt: skip
    app.on_cleanup.append(close_batcher)
    app["batcher"] = batcher
    return app


def main(argv: list[str] | None = None) -> None:
    """Command line: load the model, then listen on 127.0.0.1."""
    from aiohttp import web

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--target-ms", type=float, default=None, help="AIMD batch-time target (off if absent)")
    parser.add_argument("--max-queue", type=int, default=None, help="queue bound; 503 beyond it (unbounded if absent)")
    parser.add_argument("--deadline-ms", type=float, default=None, help="default per-request deadline (none if absent)")
    parser.add_argument("--kernel", default="dense", help="how the forward pass multiplies: dense or onednn")
    args = parser.parse_args(argv)
    app = build_app(args.max_batch, args.max_wait_ms, args.target_ms, max_queue=args.max_queue,
                    deadline_ms=args.deadline_ms, kernel=args.kernel)  # fmt: skip
    ready_dir = os.environ.get("SERVELAB_READY_DIR")
    if ready_dir:
        Path(ready_dir, str(os.getpid())).touch()
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


def start(
    *,
    max_batch: int = 32,
    max_wait_ms: float = 2.0,
    target_ms: float | None = None,
    max_queue: int | None = None,
    deadline_ms: float | None = None,
    kernel: str = "dense",
    torch_threads: int | str = 1,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 120.0,
) -> servers.Server:
    """Start the batching server as a guarded process on a free port; returns once it answers.

    ``max_queue`` and ``deadline_ms`` switch on load shedding and deadlines (off by default);
    ``kernel="onednn"`` runs the forward pass on oneDNN (see :func:`servelab.apps.mlp.forward_function`).
    """
    port = servers.free_port()
    cmd = [sys.executable, "-m", "servelab.apps.batched", "--port", str(port),
           "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]  # fmt: skip
    if target_ms:
        cmd += ["--target-ms", str(target_ms)]
    if max_queue is not None:
        cmd += ["--max-queue", str(max_queue)]
    if deadline_ms is not None:
        cmd += ["--deadline-ms", str(deadline_ms)]
    if kernel != "dense":
        cmd += ["--kernel", kernel]
    full_env = {**servers.torch_thread_env(torch_threads), **(env or {})}
    name = f"batched-{max_batch}" + (f"-aimd{target_ms:g}" if target_ms else "") + ("" if kernel == "dense" else f"-{kernel}")
    return servers.start(cmd, port=port, name=name, env=full_env, ready_timeout=ready_timeout)


def _call(url: str, data: dict | None = None, timeout: float = 10.0) -> dict[str, Any]:
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read())


def get_stats(server_url: str, *, reset: bool = False) -> dict[str, Any]:
    """The batcher's statistics (``reset=True`` also zeroes them, after reading them)."""
    return _call(server_url + "/stats/reset", {}) if reset else _call(server_url + "/stats")


def wait_until_drained(server_url: str, timeout: float = 15.0) -> bool:
    """Wait until every request the batcher took is answered (after an overload left a backlog); True if so.

    It waits for the batch in flight too, not only for an empty queue, so the
    next measurement starts on an idle server. With ``max_queue`` set the
    backlog is bounded, so the wait is at most a few batch times.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = get_stats(server_url)
        if stats["queue_depth"] == 0 and stats.get("outstanding", 0) == 0:
            return True
        time.sleep(0.05)
    return False


def configure(server_url: str, **settings: Any) -> dict[str, Any]:
    """Change ``max_batch``, ``max_wait_ms``, ``target_ms`` (None: AIMD off), ``max_queue`` or
    ``deadline_ms`` (None: off) of a running server."""
    return _call(server_url + "/config", settings)


if __name__ == "__main__":
    main()
