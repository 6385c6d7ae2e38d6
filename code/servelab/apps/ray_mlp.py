"""The book's MLP as a Ray Serve deployment: one replica is one Ray actor process holding the model.

``POST /predict`` takes the same JSON as :mod:`servelab.apps.predict` (validated by the same
``parse_inputs``) and answers with the replica's PID and Ray node id, so a client can see where
its request ran. ``GET /health`` names the replica and the servelab it imported. Any other path
is a 404, bad JSON a 400 and a bad input a 422, each with a JSON body.

Batching is Serve's own ``@serve.batch``, switched by the deployment's ``user_config``
(``max_batch_size`` 1 means no batching, ``batch_wait_timeout_s`` the wait), which Serve
applies to running replicas through :meth:`MLP.reconfigure` without restarting them. A batch
can never hold more than the deployment's ``max_ongoing_requests``, so raise that with it.

The deployment's settings for a real cluster are in ``ray_mlp.yaml`` beside this file, for
``serve deploy``. Taught in: chapters/05a_ray_serve.ipynb.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

#: What the chapter deploys unless told otherwise (the YAML says the same).
DEFAULT_USER_CONFIG = {"max_batch_size": 1, "batch_wait_timeout_s": 0.01}


def error(status: int, message: str) -> JSONResponse:
    """A JSON error body with its HTTP status, like the book's other servers."""
    return JSONResponse({"error": message, "status": status}, status_code=status)


@serve.deployment(max_ongoing_requests=5, ray_actor_options={"num_cpus": 1},
                  user_config=DEFAULT_USER_CONFIG)  # fmt: skip
class MLP:
    """One replica: the 4 × Linear(4096, 4096) MLP, torch at one thread, on the node Ray chose."""

    def __init__(self) -> None:
        import ray

        # Imported here, in the replica's process: importing predict loads the model once.
        from servelab.apps import predict

        self._predict = predict
        self.model = predict.MODEL.load()
        self.node_id = ray.get_runtime_context().get_node_id()
        self.batching = False

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this with the deployment's ``user_config``, at start and on every change."""
        size = int(user_config.get("max_batch_size", 1))
        self._forward_batch.set_max_batch_size(max(1, size))
        self._forward_batch.set_batch_wait_timeout_s(float(user_config.get("batch_wait_timeout_s", 0.01)))
        self.batching = size > 1

    def _forward(self, x: Any) -> list[int]:
        import torch

        with torch.inference_mode():
            return self.model(x).argmax(dim=1).tolist()

    @serve.batch(max_batch_size=10, batch_wait_timeout_s=0.01)
    async def _forward_batch(self, inputs: list[Any]) -> list[dict[str, Any]]:
        import torch

        # The pass runs in a thread, so the replica keeps taking requests: the next batch forms meanwhile.
        top = await asyncio.to_thread(self._forward, torch.cat(inputs))
        answers, start = [], 0
        for x in inputs:
            answers.append({"top": top[start : start + x.shape[0]], "server_batch": len(top)})
            start += x.shape[0]
        return answers

    async def __call__(self, request: Request) -> JSONResponse:
        if request.url.path.rstrip("/").endswith("/health"):
            import servelab

            return JSONResponse({"status": "ok", "pid": os.getpid(), "node_id": self.node_id,
                                 "servelab": servelab.__file__})  # fmt: skip
        if request.method != "POST" or not request.url.path.rstrip("/").endswith("/predict"):
            return error(404, f"no route {request.method} {request.url.path}; POST /predict or GET /health")
        try:
            payload = json.loads(await request.body())
        except ValueError:
            return error(400, "body is not valid JSON")
        try:
            x = self._predict.parse_inputs(payload, self._predict.MODEL.width)
            if payload.get("python_work", 0):
                raise self._predict.BadInput('"python_work" is not supported by the Ray Serve app')
        except self._predict.BadInput as exc:
            return error(422, str(exc))
        if self.batching:
            answer = await self._forward_batch(x)
        else:
            answer = {"top": self._forward(x), "server_batch": int(x.shape[0])}
        return JSONResponse({"pid": os.getpid(), "node_id": self.node_id, "batch": int(x.shape[0]), **answer})


app = MLP.bind()
