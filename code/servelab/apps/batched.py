"""The MLP behind a dynamic batcher, served by aiohttp in one process.

Run it as ``python -m servelab.apps.batched --port P [--max-batch 32]
[--max-wait-ms 2] [--target-ms T]``, or start it from a notebook with
:func:`start`. One event loop parses requests (the same JSON as
``servelab.apps.predict``, validated by the same ``parse_inputs``) and hands
each input to a :class:`servelab.batching.DynamicBatcher`, whose one thread
runs the forward pass. torch releases the GIL inside the matrix multiplies,
so the loop keeps accepting requests while a batch computes: the next batch
forms behind the one in flight.

Routes: ``POST /predict``, ``GET /health`` (answers once the model is
loaded: the server only listens after that), ``GET /stats`` (the batcher's
histogram of batch sizes, batch times and current cap), ``POST /stats/reset``,
and ``POST /config`` (``max_batch``, ``max_wait_ms``, ``target_ms``; a null
``target_ms`` turns AIMD off) to change the batching without reloading the model.
Taught in: chapters/04_batching.ipynb.
"""

from __future__ import annotations

import argparse
import json
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


def build_app(max_batch: int = 32, max_wait_ms: float = 2.0, target_ms: float | None = None) -> "web.Application":
    """The aiohttp application with its model loaded and its batcher running."""
    import torch
    from aiohttp import web

    from servelab.apps.common import MODEL, configure_torch_threads, env_int
    from servelab.apps.predict import BadInput, parse_inputs  # loads the model (at import)
    from servelab.batching import AIMD, DynamicBatcher

    configure_torch_threads()
    model = MODEL.load()

    def forward(inputs: list[torch.Tensor]) -> list[dict[str, Any]]:
        with torch.inference_mode():
            top = model(torch.cat(inputs)).argmax(dim=1).tolist()
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
    )

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

    def error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message, "status": status}, status=status)

    async def predict(request: web.Request) -> web.Response:
        try:
            payload = json.loads(await request.read())
        except ValueError:
            return error(400, "body is not valid JSON")
        try:
            x = parse_inputs(payload, MODEL.width)
            if payload.get("python_work", 0):
                raise BadInput('"python_work" would block the event loop; the batching server does not do it')
        except BadInput as exc:
            return error(422, str(exc))
        answer = await batcher.submit_async(x)
        return web.json_response({"pid": os.getpid(), "batch": int(x.shape[0]), **answer})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pid": os.getpid(), "model_loaded": MODEL.model is not None,
                                  "torch_threads": torch.get_num_threads()})  # fmt: skip

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(batcher.stats())

    async def reset(request: web.Request) -> web.Response:
        before = batcher.stats()
        batcher.reset_stats()
        return web.json_response(before)

    async def configure(request: web.Request) -> web.Response:
        try:
            settings = json.loads(await request.read())
            if not isinstance(settings, dict) or set(settings) - {"max_batch", "max_wait_ms", "target_ms"}:
                raise ValueError("send a JSON object with max_batch, max_wait_ms and/or target_ms")
            batch = settings.get("max_batch")
            if batch is not None and not (isinstance(batch, int) and 1 <= batch <= MAX_CONFIG_BATCH):
                raise ValueError(f"max_batch must be an integer from 1 to {MAX_CONFIG_BATCH}")
            target = settings.get("target_ms", "keep")
            adaptive = "keep" if target == "keep" else (AIMD(float(target)) if target else None)
            batcher.configure(max_batch=batch, max_wait_ms=settings.get("max_wait_ms"), adaptive=adaptive)
        except (ValueError, TypeError) as exc:
            return error(422, str(exc))
        return web.json_response(batcher.stats())

    async def close_batcher(app: web.Application) -> None:
        batcher.close(timeout=10)  # serve what is queued, then stop

    app = web.Application(middlewares=[json_errors], client_max_size=env_int("SERVELAB_MAX_BODY_BYTES", 8 * 2**20))
    app.add_routes([web.post("/predict", predict), web.get("/health", health), web.get("/stats", stats),
                    web.post("/stats/reset", reset), web.post("/config", configure)])  # fmt: skip
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
    args = parser.parse_args(argv)
    app = build_app(args.max_batch, args.max_wait_ms, args.target_ms)
    ready_dir = os.environ.get("SERVELAB_READY_DIR")
    if ready_dir:
        Path(ready_dir, str(os.getpid())).touch()
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


def start(
    *,
    max_batch: int = 32,
    max_wait_ms: float = 2.0,
    target_ms: float | None = None,
    torch_threads: int | str = 1,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 120.0,
) -> servers.Server:
    """Start the batching server as a guarded process on a free port; returns once it answers."""
    port = servers.free_port()
    cmd = [sys.executable, "-m", "servelab.apps.batched", "--port", str(port),
           "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]  # fmt: skip
    if target_ms:
        cmd += ["--target-ms", str(target_ms)]
    full_env = {**servers.torch_thread_env(torch_threads), **(env or {})}
    name = f"batched-{max_batch}" + (f"-aimd{target_ms:g}" if target_ms else "")
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
    """Wait until the batcher's queue is empty (after an overload left a backlog); True if it is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if get_stats(server_url)["queue_depth"] == 0:
            return True
        time.sleep(0.05)
    return False


def configure(server_url: str, **settings: Any) -> dict[str, Any]:
    """Change ``max_batch``, ``max_wait_ms`` or ``target_ms`` (None: AIMD off) of a running server."""
    return _call(server_url + "/config", settings)


if __name__ == "__main__":
    main()
