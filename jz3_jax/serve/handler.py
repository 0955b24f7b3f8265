"""The HTTP handler: routes, JSON bodies in and out, server-sent-event streams, error replies.

One handler thread per connection (keep-alive, HTTP/1.1). A handler parses and checks the request
(`protocol`), hands a `Job` to the engine worker and writes what comes back: one JSON body, or an
SSE stream in chunked transfer encoding. Every failure becomes an OpenAI-style error body; a client
that goes away mid-stream only cancels its own job.
"""

from __future__ import annotations

import json
import queue
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from jz3_jax.serve import protocol
from jz3_jax.serve.protocol import ApiError, ParsedRequest
from jz3_jax.serve.worker import Job

if TYPE_CHECKING:
    from jz3_jax.serve.server import OpenAIServer

MAX_BODY_BYTES = 8 << 20
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class OpenAIHandler(BaseHTTPRequestHandler):
    """`POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models[/ID]`, `GET /health`."""

    protocol_version = "HTTP/1.1"
    server_version = "jz3_jax-serve"
    timeout = 300  # seconds an idle keep-alive connection (or a stalled upload) may hold its thread
    server: "OpenAIServer"

    def do_GET(self) -> None:  # noqa: N802 (the http.server naming)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:
        self.server.logger.debug("serve: %s " + format, self.address_string(), *args)

    # --- routing -----------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        try:
            # A GET may carry a body too: read it, or its bytes would be taken for the next request.
            body = self._read_body() if method == "POST" or self.headers.get("Content-Length") else None
            path = urlsplit(self.path).path.rstrip("/")
            if path in ("/v1/chat/completions", "/v1/completions"):
                self._require(method, "POST")
                kind = protocol.CHAT if path == "/v1/chat/completions" else protocol.COMPLETION
                self._generate(protocol.parse_request(kind, _decode_json(body), self.server.model))
            elif path == "/v1/models":
                self._require(method, "GET")
                self._send_json(200, protocol.models_body(self.server.model.name, self.server.started))
            elif path.startswith("/v1/models/") and path[len("/v1/models/"):] == self.server.model.name:
                self._require(method, "GET")
                self._send_json(200, protocol.model_body(self.server.model.name, self.server.started))
            elif path == "/health":
                self._send_json(200, {"status": "ok", "waiting": self.server.worker.waiting})
            else:
                raise ApiError(404, f"no such endpoint: {method} {path or '/'}", code="not_found")
        except ApiError as error:
            self._send_error(error)
        except _CLIENT_GONE:
            self.close_connection = True
        except Exception as error:  # a bug must cost one request, never the server
            self.server.logger.exception("serve: error while handling %s %s", method, self.path)
            self._send_error(ApiError(500, f"internal server error: {error}", "server_error"))

    def _require(self, method: str, allowed: str) -> None:
        if method != allowed:
            raise ApiError(405, f"{self.path} accepts {allowed} only", code="method_not_allowed")

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True  # whatever follows on this connection cannot be framed
            raise ApiError(411 if self.headers.get("Transfer-Encoding") else 400,
                           "the request needs a Content-Length header and a JSON body")
        try:
            size = int(length)
        except ValueError:
            size = -1
        if not 0 <= size <= MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(413 if size > MAX_BODY_BYTES else 400,
                           f"bad Content-Length {length!r} (at most {MAX_BODY_BYTES} bytes)")
        return self.rfile.read(size)

    # --- generation ----------------------------------------------------------------------------------

    def _generate(self, request: ParsedRequest) -> None:
        job = Job(request.prompt_ids, request.params)
        self.server.worker.submit(job)
        deadline = time.monotonic() + self.server.request_timeout_s
        try:
            if request.stream:
                self._stream(request, job, deadline)
            else:
                self._complete(request, job, deadline)
        finally:
            job.cancel()  # drop any further events (a timeout, an error, a client that left)

    def _next(self, job: Job, deadline: float):
        try:
            return job.next_event(deadline - time.monotonic())
        except queue.Empty:
            raise ApiError(504, f"the request took longer than serve.request_timeout_s="
                           f"{self.server.request_timeout_s:g}s", "timeout_error", code="timeout") from None

    def _complete(self, request: ParsedRequest, job: Job, deadline: float) -> None:
        results = [None] * len(request.params)
        while any(r is None for r in results):
            event = self._next(job, deadline)
            if event.finished is not None:
                results[event.request.id] = event.finished
        self._send_json(200, protocol.response_body(request, self.server.model.name, results))

    def _stream(self, request: ParsedRequest, job: Job, deadline: float) -> None:
        model = self.server.model.name
        first = self._next(job, deadline)  # errors up to here still get a plain HTTP error reply
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if request.kind == protocol.CHAT:
            for index in range(len(request.params)):
                self._send_event(protocol.chunk_body(request, model, index, role=True))
        unfinished, completion_tokens, event = len(request.params), 0, first
        try:
            while True:
                index = event.request.id
                if event.text_delta:
                    self._send_event(protocol.chunk_body(request, model, index, text=event.text_delta))
                if event.finished is not None:
                    self._send_event(protocol.chunk_body(request, model, index,
                                                         finish_reason=event.finished.finish_reason))
                    completion_tokens += len(event.finished.token_ids)
                    unfinished -= 1
                if not unfinished:
                    break
                event = self._next(job, deadline)
        except ApiError as error:  # headers are gone: report in the stream, then end it
            self._send_event(error.body())
            self.close_connection = True
        else:
            if request.include_usage:
                self._send_event(protocol.usage_chunk_body(request, model, completion_tokens))
        self._send_chunk(b"data: [DONE]\n\n")
        self._send_chunk(b"")

    # --- writing ----------------------------------------------------------------------------------------

    def _send_event(self, body: dict) -> None:
        self._send_chunk(b"data: " + json.dumps(body).encode() + b"\n\n")

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: ApiError) -> None:
        try:
            self._send_json(error.status, error.body())
        except _CLIENT_GONE:
            self.close_connection = True


def _decode_json(body: bytes | None) -> Any:
    try:
        return json.loads(body or b"")
    except (ValueError, RecursionError) as error:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise ApiError(400, f"the request body is not valid JSON: {error}", code="invalid_json") from None
