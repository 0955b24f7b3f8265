"""The `serve` stage: the FastAPI app (`app`) on uvicorn, over the engine worker, and its lifecycle.

`build_server` wires a loaded engine to a bound socket, the app and its engine worker (tests run
it in-process: `serve_forever()` in a thread, `close()` or `drain()` to stop); `run` is the stage:
load, warm up, listen, print `serving NAME on http://HOST:PORT`, serve until SIGTERM/SIGINT, then
drain (new requests get 503, in-flight ones get up to `serve.drain_timeout_s`) and exit 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from jz3_jax.decoding.engine import Engine, RequestError
from jz3_jax.decoding.factory import LoadedEngine, load_engine, sampling_from_config
from jz3_jax.decoding.factory import warm_up as warm_up_engine
from jz3_jax.errors import UserError
from jz3_jax.runtime.preemption import TermFlag
from jz3_jax.serve import auth
from jz3_jax.serve.app import ServeState, create_app
from jz3_jax.serve.metrics import Metrics
from jz3_jax.serve.protocol import ModelInfo, error_body
from jz3_jax.serve.worker import Worker

if TYPE_CHECKING:
    from jz3_jax.serve.spec import ServeSpec
    from jz3_jax.stages import StageContext

_MODEL_FILE_SUFFIXES = (".gguf", ".safetensors")
_BACKLOG = 1024  # bursts of hundreds of connections are queued, not refused


class _DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with connection deadlines uvicorn 0.55 lacks.

    uvicorn has `timeout_keep_alive`, but armed only after a response and cancelled by any byte
    received, and no deadline for a request's headers: a fresh connection that sends nothing, or
    a client sending its headers a byte at a time (slowloris), holds a connection forever. So:
    the idle (keep-alive) timer is also armed when a connection opens; a header timer, armed when
    a connection opens and when a response ends, closes the connection unless a whole request
    head has arrived by then; and a connection beyond `max_connections` gets 503 and is closed.
    (`limit_concurrency` would answer 503 only once a request's headers arrived, in plain text.)
    The body's deadline is the app's (`app._read_json`: 408).
    """

    header_timeout: float = 30.0
    max_connections: int = 1024
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            body = json.dumps(error_body(f"too many open connections (serve.max_connections={self.max_connections})",
                                         "server_error", code="unavailable")).encode()
            transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            transport.close()
            return
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout_handler)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout_handler(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a whole request head has arrived
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm_header_timer()  # before the next request's head is parsed (pipelining)
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)


class OpenAIServer:
    """A uvicorn server on an already bound socket, with its app state and engine worker."""

    def __init__(self, sock: socket.socket, state: ServeState, header_timeout_s: float = 30.0,
                 keep_alive_timeout_s: float = 15.0, max_connections: int = 1024):
        self.socket = sock
        self.server_address = sock.getsockname()  # `(host, port, ...)` actually bound
        self.state = state
        self.worker = state.worker
        self.model = state.model
        self.logger = state.logger
        protocol = type("ServeH11Protocol", (_DeadlineH11Protocol,),
                        {"header_timeout": header_timeout_s, "max_connections": max_connections})
        config = uvicorn.Config(
            create_app(state), http=protocol, loop="asyncio", lifespan="off", log_config=None, log_level="warning",
            access_log=False, backlog=_BACKLOG, timeout_graceful_shutdown=5, timeout_keep_alive=5)
        config.timeout_keep_alive = keep_alive_timeout_s  # a float is fine: it only feeds loop.call_later
        self._uvicorn = uvicorn.Server(config)
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        """`http://HOST:PORT` with the port actually bound."""
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def serve_forever(self) -> None:
        """Serve until `close()` (call this in its own thread: it runs the event loop)."""
        try:
            asyncio.run(self._uvicorn.serve(sockets=[self.socket]))
        finally:
            self._stopped.set()

    def drain(self, timeout: float) -> bool:
        """Answer new requests with 503, wait up to `timeout` seconds for the in-flight ones, then
        `close()`. True when every in-flight request finished in time."""
        self.state.draining = True
        deadline = time.monotonic() + timeout
        while self.state.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        left = self.state.in_flight
        if left:
            self.logger.warning("serve: %d request(s) still running after serve.drain_timeout_s=%gs; stopping them",
                                left, timeout)
        self.close()
        return not left

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker (waiting and running requests get 503), stop uvicorn (idle keep-alive
        connections are closed) and close the socket."""
        self.worker.stop()
        self._uvicorn.should_exit = True
        self._stopped.wait(timeout)
        self.socket.close()


def default_model_name(model_cfg) -> str:
    """The id clients send as `model` when `serve.model_name` is empty: the checkpoint's file name
    (without .gguf/.safetensors) or directory name, or `<family>-random` for a random init."""
    if not model_cfg.checkpoint:
        return f"{model_cfg.family}-random"
    name = Path(model_cfg.checkpoint.rstrip("/")).name
    for suffix in _MODEL_FILE_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)  # connections made before serve_forever starts wait instead of being refused
    except OSError as error:
        sock.close()
        raise UserError(f"serve cannot listen on {host}:{port}: {error}") from error
    return sock


def build_server(loaded: LoadedEngine, spec: ServeSpec, logger: logging.Logger | None = None) -> tuple[OpenAIServer, Worker]:
    """A listening server (not yet serving: run `server.serve_forever()` in a thread) and its started
    engine worker, for `loaded` with the `serve`/`sampling` sections of `spec`. `server.close()` stops both."""
    logger = logger or logging.getLogger("jz3_jax")
    if loaded.tokenizer is None:
        raise UserError("serve needs a tokenizer: set model.tokenizer or use a checkpoint that has one")
    sc = spec.serve
    key = check_config(sc)
    auth.warn_if_open(sc.host, key, logger)
    defaults = sampling_from_config(spec.sampling, seed=None)  # unseeded requests draw a fresh seed each
    try:
        loaded.engine.check_sampling(defaults)
    except RequestError as error:
        raise UserError(f"the sampling section's defaults: {error}") from None
    model = ModelInfo(sc.model_name or default_model_name(spec.model), loaded.tokenizer, loaded.engine.max_seq_len,
                      defaults, loaded.engine.max_logprobs)
    worker = Worker(loaded.engine, sc.max_queue, logger)
    metrics = Metrics(queue_depth=lambda: worker.waiting, running_rows=lambda: worker.running_rows,
                      in_flight=lambda: state.in_flight,  # `state` is bound below, before any scrape
                      engine_stats=loaded.engine.stats)
    state = ServeState(worker, model, metrics, logger, sc.request_timeout_s, sc.max_body_bytes, key,
                       body_timeout_s=sc.body_timeout_s)
    server = OpenAIServer(_bind(sc.host, sc.port), state, sc.header_timeout_s, sc.keep_alive_timeout_s,
                          sc.max_connections)
    worker.start()
    return server, worker


def check_config(sc) -> str | None:
    """Check the `serve` section (UserError otherwise) and return the API key (None: no auth).
    The stage calls this before it loads the model, so a bad setting or an unset
    `serve.api_key_env` costs no load and no compile."""
    if (sc.max_queue < 1 or sc.request_timeout_s <= 0 or not 0 <= sc.port < 65536 or sc.max_body_bytes < 1
            or sc.drain_timeout_s < 0):
        raise UserError(f"serve needs max_queue >= 1, request_timeout_s > 0, a port in [0, 65535], "
                        f"max_body_bytes >= 1 and drain_timeout_s >= 0; got {sc.max_queue}, {sc.request_timeout_s}, "
                        f"{sc.port}, {sc.max_body_bytes}, {sc.drain_timeout_s}")
    if min(sc.header_timeout_s, sc.body_timeout_s, sc.keep_alive_timeout_s) <= 0 or sc.max_connections < 1:
        raise UserError(f"serve needs header_timeout_s, body_timeout_s and keep_alive_timeout_s > 0 and "
                        f"max_connections >= 1; got {sc.header_timeout_s}, {sc.body_timeout_s}, "
                        f"{sc.keep_alive_timeout_s}, {sc.max_connections}")
    return auth.api_key(sc.api_key_env)


def warm_up(engine: Engine, logger: logging.Logger | None = None) -> int:
    """Compile every prefill bucket and the decode step, and their log-probability variants and
    prompt scoring (with `engine.max_logprobs` > 0), before the first client waits for one:
    afterwards no request compiles anything. Returns the number of programs compiled."""
    return warm_up_engine(engine, logger or logging.getLogger("jz3_jax"), logprobs=True)


def run(spec: ServeSpec, ctx: StageContext) -> dict:
    """The stage: serve `spec.model` until SIGTERM/SIGINT, then drain; returns the number of finished completions."""
    if ctx.process_count > 1:
        raise UserError("serve runs in a single process (one engine); launch it without multi-process settings")
    started = time.monotonic()
    check_config(spec.serve)  # before the model loads: a bad setting or an unset api_key_env fails at once
    loaded = load_engine(spec, ctx.logger)
    warm_up(loaded.engine, ctx.logger)
    server, worker = build_server(loaded, spec, ctx.logger)
    interrupted = threading.Event()
    thread = threading.Thread(target=server.serve_forever, name="serve-http", daemon=True)
    with TermFlag() as term:
        previous_sigint = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
        try:
            thread.start()
            ctx.logger.info("serve: engine max_batch=%d max_seq_len=%d, max_queue=%d, ready in %.1fs",
                            loaded.engine.max_batch, loaded.engine.max_seq_len, spec.serve.max_queue,
                            time.monotonic() - started)
            print(f"serving {server.model.name} on {server.url}", flush=True)
            while not (term.raised or interrupted.wait(0.05)):
                if not worker.is_alive() or not thread.is_alive():
                    raise RuntimeError("the engine worker or the HTTP server stopped unexpectedly")
            ctx.logger.info("serve: draining (up to %gs)", spec.serve.drain_timeout_s)
            server.drain(spec.serve.drain_timeout_s)
        finally:
            server.close()
            thread.join(10)
            signal.signal(signal.SIGINT, previous_sigint)
    ctx.logger.info("serve: stopped after %d completion(s)", worker.completed)
    return {"model": server.model.name, "url": server.url, "completions": worker.completed}
