"""The FastAPI app: routes, JSON bodies in and out, server-sent-event streams, OpenAI-style errors.

A generation request is parsed (`protocol`), handed to the engine worker as an `AsyncJob` and
answered from that job's events: one JSON body, or an SSE stream. Meanwhile a watcher notices a
client that disconnects and cancels its job, so the worker frees its rows before the next engine
dispatch. `_Gate`, an ASGI middleware around everything, answers 503 while draining, checks the API
key on `/v1/*`, counts in-flight requests and records each answer in the metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jz3_jax.serve import auth, protocol
from jz3_jax.serve.bridge import AsyncJob, ClientGone
from jz3_jax.serve.metrics import CONTENT_TYPE, Metrics
from jz3_jax.serve.protocol import ApiError, ModelInfo, ParsedRequest
from jz3_jax.serve.worker import Worker

CLIENT_GONE_STATUS = 499  # nginx's "client closed request": recorded in the metrics, sent to nobody


@dataclasses.dataclass
class ServeState:
    """What the routes share: the worker, the model, the limits, and the drain bookkeeping."""

    worker: Worker
    model: ModelInfo
    metrics: Metrics
    logger: logging.Logger
    request_timeout_s: float
    max_body_bytes: int
    api_key: str | None = None
    body_timeout_s: float = 60.0
    started: int = dataclasses.field(default_factory=lambda: int(time.time()))
    draining: bool = False  # set from another thread; read once per request on the loop
    in_flight: int = 0  # requests past the gate and not yet answered (touched on the loop only)


def create_app(state: ServeState) -> ASGIApp:
    """The ASGI app serving `state`: the FastAPI routes inside `_Gate` (no docs routes: every path
    outside the API is a 404)."""
    app = FastAPI(title="jz3_jax serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        message = f"no such endpoint: {request.method} {request.url.path}" if error.status_code == 404 else error.detail
        return _error_response(ApiError(error.status_code, str(message), code=code))

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:  # a bug costs one request
        state.logger.exception("serve: error while handling %s %s", request.method, request.url.path)
        return _error_response(ApiError(500, f"internal server error: {error}", "server_error"))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _generate(request, state, protocol.CHAT)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generate(request, state, protocol.COMPLETION)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return protocol.models_body(state.model.name, state.started)

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        if model_id != state.model.name:
            raise ApiError(404, f"no such model: {model_id}", code="model_not_found")
        return protocol.model_body(state.model.name, state.started)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "waiting": state.worker.waiting}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)

    return _Gate(app, state)


class _Gate:
    """ASGI middleware: 503 while draining, the API key on `/v1/*`, in-flight count, metrics."""

    def __init__(self, app: ASGIApp, state: ServeState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, path, status = time.monotonic(), scope["path"], [500]

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        state = self.state
        try:
            if state.draining:
                raise ApiError(503, "the server is shutting down", "server_error", code="unavailable")
            if path == "/v1" or path.startswith("/v1/"):
                auth.check(_header(scope, b"authorization"), state.api_key)
        except ApiError as error:
            await _error_response(error)(scope, receive, send_recording)
        else:
            state.in_flight += 1
            try:
                await self.app(scope, receive, send_recording)
            finally:
                state.in_flight -= 1
        finally:
            state.metrics.answered(path, status[0], time.monotonic() - started)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _error_response(error: ApiError) -> JSONResponse:
    headers = None
    if error.status == 401:  # and the connection is closed: an unauthenticated client holds nothing
        headers = {"WWW-Authenticate": "Bearer", "Connection": "close"}
    elif error.status == 408:
        headers = {"Connection": "close"}
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


# --- generation --------------------------------------------------------------------------------------


async def _read_json(request: Request, limit: int, timeout: float) -> Any:
    """The body as JSON; 413 past `limit` bytes (checked on Content-Length and again while reading),
    408 (and the connection closed) when the whole body takes longer than `timeout` seconds, 400
    for text that is not valid JSON or not encodable (a lone surrogate escape such as "\\ud800")."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the request body has {length} bytes; serve.max_body_bytes={limit}", code="body_too_large")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, f"the request body exceeds serve.max_body_bytes={limit}",
                                   code="body_too_large")
    except TimeoutError:
        raise ApiError(408, f"the request body took longer than serve.body_timeout_s={timeout:g}s",
                       code="request_timeout") from None
    try:
        decoded = json.loads(bytes(body))
        # JSON allows "\ud800" (a lone surrogate) but no tokenizer can encode it: refuse it here, once
        json.dumps(decoded, ensure_ascii=False).encode("utf-8")
        return decoded
    except UnicodeEncodeError as error:
        raise ApiError(400, f"the request body holds text that is not valid Unicode (a lone surrogate): {error}",
                       code="invalid_json") from None
    except (ValueError, RecursionError) as error:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise ApiError(400, f"the request body is not valid JSON: {error}", code="invalid_json") from None


async def _watch_disconnect(receive: Receive, job: AsyncJob) -> None:
    """Cancel `job` when the client disconnects (the body is read: the next message is the disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    job.disconnect()


async def _generate(request: Request, state: ServeState, kind: str) -> Response:
    arrived = time.monotonic()
    try:
        body = await _read_json(request, state.max_body_bytes, state.body_timeout_s)
    except ClientDisconnect:  # gone before the whole body arrived
        return Response(status_code=CLIENT_GONE_STATUS)
    parsed = protocol.parse_request(kind, body, state.model)
    loop = asyncio.get_running_loop()
    prompts = parsed.choice_prompts
    job = AsyncJob(parsed.prompt_ids, parsed.params, loop, prompts=prompts, generate=parsed.generate,
                   echo_logprobs=parsed.logprobs if parsed.echo else None)
    state.worker.submit(job)  # ApiError 429 (queue full) or 503 (stopping)
    state.metrics.prompt_tokens.inc(sum(len(p) for p in prompts))
    deadline = loop.time() + state.request_timeout_s
    watcher = asyncio.create_task(_watch_disconnect(request.receive, job))
    streaming = False
    try:
        first = await _next(job, deadline, state)  # errors up to here still get a plain HTTP error reply
        state.metrics.time_to_first_token.observe(time.monotonic() - arrived)
        if parsed.stream:
            # From here Starlette's StreamingResponse watches for the disconnect itself.
            watcher.cancel()
            streaming = True
            return _JobStream(job, _sse(parsed, job, first, deadline, state))
        return JSONResponse(await _collect(parsed, job, first, deadline, state))
    except ClientGone:
        return Response(status_code=CLIENT_GONE_STATUS)
    finally:
        watcher.cancel()
        if not streaming:
            job.cancel()  # drop any further events (a timeout, an error)


async def _next(job: AsyncJob, deadline: float, state: ServeState):
    try:
        event = await job.event(deadline - asyncio.get_running_loop().time())
    except TimeoutError:
        raise ApiError(504, f"the request took longer than serve.request_timeout_s={state.request_timeout_s:g}s",
                       "timeout_error", code="timeout") from None
    state.metrics.generated(len(event.new_token_ids))
    return event


async def _collect(parsed: ParsedRequest, job: AsyncJob, event, deadline: float, state: ServeState) -> dict:
    results = [None] * len(parsed.params)
    while True:
        if event.finished is not None:
            results[event.request.id] = event.finished
        if all(r is not None for r in results):
            return protocol.response_body(parsed, state.model, results, job.prompt_logprobs)
        event = await _next(job, deadline, state)


class _JobStream(StreamingResponse):
    """An SSE response that cancels its job however the stream ends (finished, failed, client gone)."""

    def __init__(self, job: AsyncJob, content: AsyncIterator[bytes]):
        super().__init__(content, media_type="text/event-stream; charset=utf-8", headers={"Cache-Control": "no-cache"})
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


def _data(body: dict) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def _sse(parsed: ParsedRequest, job: AsyncJob, event, deadline: float, state: ServeState) -> AsyncIterator[bytes]:
    model = state.model
    offsets = [0] * len(parsed.params)  # each choice's text_offset so far (completions with logprobs)
    if parsed.kind == protocol.CHAT:
        for index in range(len(parsed.params)):
            yield _data(protocol.chunk_body(parsed, model, index, role=True))
    elif parsed.echo:  # each choice opens with its prompt (and, with logprobs, the prompt's)
        for index in range(len(parsed.params)):
            prompt = parsed.prompts[index // parsed.n]
            entries = (protocol.prompt_entries(prompt, job.prompt_logprobs[index])
                       if job.prompt_logprobs is not None else [])
            yield _data(protocol.chunk_body(parsed, model, index, text=parsed.echo_texts[index // parsed.n],
                                            entries=entries))
            offsets[index] += sum(len(model.token_text(token)) for token, _, _ in entries)
    unfinished, completion_tokens = len(parsed.params), 0
    try:
        while True:
            index = event.request.id
            if event.text_delta or event.logprobs:
                entries = protocol.token_entries(event.logprobs) if event.logprobs is not None else None
                yield _data(protocol.chunk_body(parsed, model, index, text=event.text_delta, entries=entries,
                                                offset=offsets[index]))
                offsets[index] += sum(len(model.token_text(token)) for token, _, _ in entries or [])
            if event.finished is not None:
                yield _data(protocol.chunk_body(parsed, model, index, finish_reason=event.finished.finish_reason))
                completion_tokens += len(event.finished.token_ids)
                unfinished -= 1
            if not unfinished:
                break
            event = await _next(job, deadline, state)
    except ApiError as error:  # the headers are gone: report in the stream, then end it
        yield _data(error.body())
    else:
        if parsed.include_usage:
            yield _data(protocol.usage_chunk_body(parsed, model, completion_tokens))
    yield b"data: [DONE]\n\n"
