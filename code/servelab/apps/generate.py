"""A text-generation server with the OpenAI completions API, over one of two engines.

Run it as ``python -m servelab.apps.generate --port P --model-dir D --engine continuous`` (or
``--engine static``), or start it from a notebook with :func:`start`.

- ``continuous``: the real engine of transformers, its :class:`ContinuousBatchingManager`, with its own
  scheduler (iteration-level batching, chunked prefill under a per-step token budget) and its own
  paged KV cache, sized by ``--num-blocks`` × ``--page-size`` tokens; ``--max-batch-tokens`` is the
  per-step token budget. We write only what it lacks: validation, the HTTP front and streaming.
- ``static``: request-level batching, for comparison: chapter 4's :class:`DynamicBatcher` collects
  requests and runs ``model.generate`` on the batch, which runs until its longest member is done;
  every request still streams its own tokens, step by step.

Why not ``transformers serve --continuous-batching``? In transformers 5.24 it answers
``max_tokens <= 0`` with 200, and one prompt longer than its KV cache kills the engine thread: every
later request gets 503. A server must refuse such requests before they reach the engine, which is
what this one does: a 400 JSON error in OpenAI's format, and the engine keeps serving.

Routes: ``POST /v1/completions`` (``prompt`` as text or token ids, ``max_tokens``, ``stream``;
streaming answers are server-sent events, one per token, then ``data: [DONE]``), ``GET /v1/models``,
``GET /health``, ``GET /engine`` (what the engine was built with, read back from the engine itself:
cache blocks, page size, token budget, torch threads) and ``POST /engine`` (``max_batch_tokens``:
lower the continuous engine's per-step token budget without restarting it).
Taught in: chapters/06_generative.ipynb.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from servelab import servers

if TYPE_CHECKING:
    from aiohttp import web

MODEL_NAME = "servelab-tinyllm"
#: Called on the event loop with each new token, and ``finished`` with the last one (or an error).
TokenSink = Callable[[list[int], bool, str | None], None]


class BadRequest(ValueError):
    """A request the server refuses with 400 (the message says why)."""


@dataclass
class Completion:
    """One validated request."""

    prompt_ids: list[int]
    max_tokens: int
    stream: bool


def parse_completion(payload: Any, tokenizer: Any, max_model_len: int) -> Completion:
    """Validate an OpenAI completions body; raises :class:`BadRequest` with a plain reason."""
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object")
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        ids = list(prompt)
        if any(not 0 <= t < tokenizer.vocab_size for t in ids):
            raise BadRequest(f"token ids must be in [0, {tokenizer.vocab_size})")
    else:
        raise BadRequest('"prompt" must be a string or a list of token ids')
    if not ids:
        raise BadRequest("the prompt is empty")
    max_tokens = payload.get("max_tokens", 16)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
        raise BadRequest(f'"max_tokens" must be a positive integer, not {max_tokens!r}')
    if len(ids) + max_tokens > max_model_len:
        raise BadRequest(f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                         f"{max_model_len}-token context")  # fmt: skip
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest('"stream" must be true or false')
    return Completion(ids, max_tokens, stream)


# --------------------------------------------------------------------------- engines


class ContinuousEngine:
    """transformers' continuous-batching manager, fed from the event loop."""

    kind = "continuous"

    def __init__(self, model: Any, *, num_blocks: int, page_size: int, max_batch_tokens: int) -> None:
        from transformers import ContinuousBatchingConfig, GenerationConfig

        # The cache settings go in ContinuousBatchingConfig: put in GenerationConfig they are ignored,
        # and the engine sizes its cache from free memory instead.
        config = ContinuousBatchingConfig(num_blocks=num_blocks, page_size=page_size, max_batch_tokens=max_batch_tokens,
                                          allow_block_sharing=False, scheduler_type="fifo")  # fmt: skip
        generation = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0)
        self.manager = model.init_continuous_batching(generation_config=generation, continuous_batching_config=config)
        self.manager.start()
        self.processor = self._wait_for_processor()
        self.max_model_len = min(model.config.max_position_embeddings, num_blocks * page_size)
        self._ids = itertools.count()

    def _wait_for_processor(self, timeout: float = 60.0) -> Any:
        # The manager builds its batch processor (and the cache) in its own thread, after start().
        deadline = time.monotonic() + timeout
        while self.manager.batch_processor is None:
            if not self.manager.is_running() or time.monotonic() > deadline:
                raise RuntimeError("the continuous-batching engine did not start")
            time.sleep(0.01)
        return self.manager.batch_processor

    @property
    def cache(self) -> Any:
        return self.processor.cache

    def info(self) -> dict[str, Any]:
        cfg = self.manager.continuous_batching_config
        return {"engine": self.kind, "num_blocks": self.cache.num_blocks, "page_size": cfg.page_size,
                "max_batch_tokens": self.processor.max_batch_tokens, "max_batch_tokens_built": self.cache.max_batch_tokens,
                "cache_bytes": int(self.cache.cache_tensor.numel() * self.cache.cache_tensor.element_size()),
                "running": self.manager.is_running()}  # fmt: skip

    def set_max_batch_tokens(self, tokens: int) -> None:
        """Lower the per-step token budget (chunked prefill); the engine's buffers are sized for the built one."""
        if not 1 <= tokens <= self.cache.max_batch_tokens:
            raise BadRequest(f"max_batch_tokens must be from 1 to {self.cache.max_batch_tokens} (the built budget)")
        self.processor.max_batch_tokens = tokens

    def submit(self, job: Completion, sink: TokenSink) -> Callable[[], None]:
        """Queue ``job``; ``sink`` gets its tokens on the running event loop. Returns a cancel function."""
        if not self.manager.is_running():
            raise RuntimeError("the engine thread has stopped")
        request_id = f"req-{next(self._ids)}"
        seen = [0]

        def deliver(output: Any) -> None:
            new = list(output.generated_tokens[seen[0]:])
            seen[0] = len(output.generated_tokens)
            sink(new, output.is_finished(), output.error)

        self.manager.register_result_handler(request_id, deliver)  # before add_request: no token can be missed
        self.manager.add_request(job.prompt_ids, request_id=request_id, max_new_tokens=job.max_tokens,
                                 streaming=job.stream, eos_token_id=-1)  # fmt: skip
        return lambda: self.manager.cancel_request(request_id)

    def close(self) -> None:
        self.manager.stop(block=True, timeout=5)


@dataclass
class _StaticJob:
    job: Completion
    sink: TokenSink
    loop: asyncio.AbstractEventLoop
    produced: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)


class _FanOut:
    """A ``generate`` streamer that hands each step's token to its own request, until its max_tokens."""

    def __init__(self, jobs: list[_StaticJob]) -> None:
        self.jobs, self.prompt_seen = jobs, False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate first puts the prompt itself
            self.prompt_seen = True
            return
        tokens = value.reshape(len(self.jobs), -1)[:, -1].tolist()
        for job, token in zip(self.jobs, tokens):
            if job.produced < job.job.max_tokens and not job.cancelled.is_set():
                job.produced += 1
                job.loop.call_soon_threadsafe(job.sink, [token], job.produced == job.job.max_tokens, None)

    def end(self) -> None:
        pass


class StaticEngine:
    """Request-level batching: a batch runs ``generate`` until its longest member is done."""

    kind = "static"

    def __init__(self, model: Any, *, max_batch: int, max_wait_ms: float, max_model_len: int) -> None:
        from servelab.batching import DynamicBatcher

        self.model, self.max_model_len = model, max_model_len
        self.batcher = DynamicBatcher(self._generate, max_batch=max_batch, max_wait_ms=max_wait_ms, name="static-batcher")

    def _generate(self, jobs: list[_StaticJob]) -> list[None]:
        import torch

        longest = max(len(j.job.prompt_ids) for j in jobs)
        ids = torch.zeros((len(jobs), longest), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, j in enumerate(jobs):  # left padding: every prompt ends where generation starts
            ids[row, longest - len(j.job.prompt_ids):] = torch.tensor(j.job.prompt_ids)
            mask[row, longest - len(j.job.prompt_ids):] = 1
        with torch.inference_mode():
            self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(j.job.max_tokens for j in jobs),
                                do_sample=False, streamer=_FanOut(jobs), pad_token_id=0)  # fmt: skip
        return [None] * len(jobs)

    def info(self) -> dict[str, Any]:
        stats = self.batcher.stats()
        return {"engine": self.kind, "max_batch": self.batcher.max_batch, "max_wait_ms": self.batcher.max_wait_ms,
                "batches": stats["batches"], "mean_batch_size": stats["mean_batch_size"], "running": True}  # fmt: skip

    def set_max_batch_tokens(self, tokens: int) -> None:
        raise BadRequest("the static engine has no per-step token budget")

    def submit(self, job: Completion, sink: TokenSink) -> Callable[[], None]:
        static = _StaticJob(job, sink, asyncio.get_running_loop())
        self.batcher.submit(static).add_done_callback(lambda f: self._report_failure(static, f))
        return static.cancelled.set

    @staticmethod
    def _report_failure(static: _StaticJob, future: Any) -> None:
        if future.exception() is not None:
            static.loop.call_soon_threadsafe(static.sink, [], True, f"generation failed: {future.exception()}")

    def close(self) -> None:
        self.batcher.close(timeout=10)


# --------------------------------------------------------------------------- HTTP


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return f"data: {text}\n\n".encode()


def _chunk(request_id: str, text: str, finish_reason: str | None = None, usage: dict | None = None) -> dict[str, Any]:
    chunk = {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": MODEL_NAME,
             "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}  # fmt: skip
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def build_app(engine: Any, tokenizer: Any) -> "web.Application":
    """The aiohttp application around a started engine."""
    import torch
    from aiohttp import web

    counter = itertools.count()

    def error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
        return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)

    @web.middleware
    async def json_errors(request: web.Request, handler):  # noqa: ANN001, ANN202
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error(exc.status, exc.text or exc.reason)
        except Exception as exc:  # noqa: BLE001 - the client gets JSON, the log gets the trace
            request.app.logger.exception("unhandled error")
            return error(500, f"internal error: {type(exc).__name__}", "server_error")

    def text_of(tokens: list[int], first: bool) -> str:
        words = tokenizer.convert_ids_to_tokens(tokens)
        return ("" if first else " ") + " ".join(words)

    async def completions(request: web.Request) -> web.StreamResponse:
        try:
            payload = json.loads(await request.read())
        except ValueError:
            return error(400, "the body is not valid JSON")
        try:
            job = parse_completion(payload, tokenizer, engine.max_model_len)
        except BadRequest as exc:
            return error(400, str(exc))
        tokens: asyncio.Queue = asyncio.Queue()
        try:
            cancel = engine.submit(job, lambda new, done, err: tokens.put_nowait((new, done, err)))
        except RuntimeError as exc:
            return error(503, str(exc), "server_error")
        request_id = f"cmpl-{next(counter)}"
        usage = {"prompt_tokens": len(job.prompt_ids), "completion_tokens": 0, "total_tokens": len(job.prompt_ids)}
        try:
            if job.stream:
                return await _stream(request, request_id, tokens, usage, text_of)
            return await _whole(request_id, tokens, usage, text_of)
        finally:
            if usage["completion_tokens"] < job.max_tokens:  # the client left (or an error): free the engine's work
                cancel()

    async def _whole(request_id: str, tokens: asyncio.Queue, usage: dict, text_of: Callable) -> web.Response:
        produced: list[int] = []
        while True:
            new, done, err = await tokens.get()
            if err:
                return error(500, err, "server_error")
            produced += new
            if done:
                break
        usage.update(completion_tokens=len(produced), total_tokens=usage["prompt_tokens"] + len(produced))
        return web.json_response(_chunk(request_id, text_of(produced, True), "length", usage))

    async def _stream(request: web.Request, request_id: str, tokens: asyncio.Queue, usage: dict,
                      text_of: Callable) -> web.StreamResponse:  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        while True:
            new, done, err = await tokens.get()
            if err:
                await response.write(_sse({"error": {"message": err, "type": "server_error", "code": 500}}))
                break
            if new:
                await response.write(_sse(_chunk(request_id, text_of(new, usage["completion_tokens"] == 0))))
                usage["completion_tokens"] += len(new)
            if done:
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                await response.write(_sse(_chunk(request_id, "", "length", usage)))
                break
        await response.write(_sse("[DONE]"))
        await response.write_eof()
        return response

    async def health(request: web.Request) -> web.Response:
        info = engine.info()
        status = 200 if info["running"] else 503
        return web.json_response({"status": "ok" if status == 200 else "engine stopped", "pid": os.getpid()}, status=status)

    async def engine_info(request: web.Request) -> web.Response:
        return web.json_response({**engine.info(), "max_model_len": engine.max_model_len,
                                  "torch_threads": torch.get_num_threads(), "pid": os.getpid()})  # fmt: skip

    async def configure(request: web.Request) -> web.Response:
        try:
            settings = json.loads(await request.read())
            tokens = settings.get("max_batch_tokens") if isinstance(settings, dict) else None
            if not isinstance(tokens, int) or isinstance(tokens, bool):
                raise BadRequest('send {"max_batch_tokens": N}')
            engine.set_max_batch_tokens(tokens)
        except (ValueError, BadRequest) as exc:
            return error(400, str(exc))
        return await engine_info(request)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "owned_by": "servelab"}]})

    async def close_engine(app: web.Application) -> None:
        engine.close()

    app = web.Application(middlewares=[json_errors], client_max_size=4 * 2**20)
    app.add_routes([web.post("/v1/completions", completions), web.get("/v1/models", models),
                    web.get("/health", health), web.get("/engine", engine_info), web.post("/engine", configure)])  # fmt: skip
    app.on_cleanup.append(close_engine)
    return app


def load_engine(model_dir: str | Path, kind: str, *, num_blocks: int = 256, page_size: int = 32,
                max_batch_tokens: int = 1024, max_batch: int = 16, max_wait_ms: float = 5.0) -> tuple[Any, Any]:
    """The engine and tokenizer for a saved model folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from servelab.apps.common import configure_torch_threads

    configure_torch_threads()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    if kind == "continuous":
        engine = ContinuousEngine(model, num_blocks=num_blocks, page_size=page_size, max_batch_tokens=max_batch_tokens)
        if engine.cache.num_blocks != num_blocks:  # never serve from a cache sized behind our back
            raise RuntimeError(f"asked for {num_blocks} cache blocks, the engine built {engine.cache.num_blocks}")
        return engine, tokenizer
    if kind == "static":
        return StaticEngine(model, max_batch=max_batch, max_wait_ms=max_wait_ms,
                            max_model_len=model.config.max_position_embeddings), tokenizer  # fmt: skip
    raise ValueError(f"engine must be 'continuous' or 'static', not {kind!r}")


def main(argv: list[str] | None = None) -> None:
    """Command line: load the model and start the engine, then listen on 127.0.0.1."""
    from aiohttp import web

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--engine", choices=["continuous", "static"], default="continuous")
    parser.add_argument("--num-blocks", type=int, default=256, help="KV cache blocks (continuous)")
    parser.add_argument("--page-size", type=int, default=32, help="tokens per cache block (continuous)")
    parser.add_argument("--max-batch-tokens", type=int, default=1024, help="tokens per engine step (continuous)")
    parser.add_argument("--max-batch", type=int, default=16, help="requests per batch (static)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="batching wait (static)")
    args = parser.parse_args(argv)
    engine, tokenizer = load_engine(args.model_dir, args.engine, num_blocks=args.num_blocks, page_size=args.page_size,
                                    max_batch_tokens=args.max_batch_tokens, max_batch=args.max_batch,
                                    max_wait_ms=args.max_wait_ms)  # fmt: skip
    ready_dir = os.environ.get("SERVELAB_READY_DIR")
    if ready_dir:
        Path(ready_dir, str(os.getpid())).touch()
    web.run_app(build_app(engine, tokenizer), host="127.0.0.1", port=args.port, access_log=None, print=None)


def start(
    model_dir: str | Path,
    engine: str = "continuous",
    *,
    num_blocks: int = 256,
    page_size: int = 32,
    max_batch_tokens: int = 1024,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    torch_threads: int = 1,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 120.0,
    wait: bool = True,
) -> servers.Server:
    """Start the generation server as a guarded process on a free port; returns once it answers.

    ``wait=False`` returns at once (call ``wait_ready()`` later), so two servers can load side by side.
    """
    port = servers.free_port()
    cmd = [sys.executable, "-m", "servelab.apps.generate", "--port", str(port), "--model-dir", str(model_dir),
           "--engine", engine, "--num-blocks", str(num_blocks), "--page-size", str(page_size),
           "--max-batch-tokens", str(max_batch_tokens), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]  # fmt: skip
    full_env = {**servers.torch_thread_env(torch_threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TRANSFORMERS_VERBOSITY": "error", **(env or {})}  # fmt: skip
    # A measurement server has no work worth draining: after 1 s the guard SIGKILLs what is left.
    server = servers.Server(cmd, port=port, name=f"generate-{engine}", env=full_env, grace_s=1.0)
    return server.wait_ready(ready_timeout) if wait else server


def engine_info(server_url: str, **settings: Any) -> dict[str, Any]:
    """``GET /engine`` (or ``POST /engine`` with ``settings``, e.g. ``max_batch_tokens=128``)."""
    body = json.dumps(settings).encode() if settings else None
    request = urllib.request.Request(server_url + "/engine", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


if __name__ == "__main__":
    main()
