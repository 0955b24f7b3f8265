"""The `serve` stage: an OpenAI-compatible HTTP server (stdlib `http.server`) over the engine.

`build_server` wires a loaded engine to a listening server and its engine worker (tests run it
in-process); `run` is the stage: load, warm up, listen, print `serving NAME on http://HOST:PORT`,
serve until SIGTERM/SIGINT, shut down cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

from jz3_jax.decoding.engine import Engine, Request
from jz3_jax.decoding.factory import LoadedEngine, load_engine, sampling_from_config
from jz3_jax.decoding.sampling import SamplingParams
from jz3_jax.errors import UserError
from jz3_jax.serve.handler import OpenAIHandler
from jz3_jax.serve.protocol import ModelInfo
from jz3_jax.serve.worker import Worker

_MODEL_FILE_SUFFIXES = (".gguf", ".safetensors")


class OpenAIServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its model, its engine worker and its request timeout."""

    daemon_threads = True
    request_queue_size = 1024  # the listen backlog: bursts of hundreds of connections are not refused
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], worker: Worker, model: ModelInfo, request_timeout_s: float,
                 logger: logging.Logger):
        self.worker = worker
        self.model = model
        self.request_timeout_s = request_timeout_s
        self.logger = logger
        self.started = int(time.time())
        self._serving = threading.Event()
        self._connections: set[socket.socket] = set()  # open client sockets (kept alive between requests)
        self._connections_lock = threading.Lock()
        super().__init__(address, OpenAIHandler)

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    @property
    def url(self) -> str:
        """`http://HOST:PORT` with the port actually bound."""
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until `close()` (call this in its own thread)."""
        self._serving.set()
        super().serve_forever(poll_interval)

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, stop the worker (waiting and running requests get 503), end the idle
        keep-alive connections (their handler threads would otherwise outlive the server) and
        close the listening socket."""
        if self._serving.is_set():
            self.shutdown()
        self.worker.stop()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RD)  # a handler waiting for the next request reads EOF
        deadline = time.monotonic() + timeout
        while self._connections and time.monotonic() < deadline:
            time.sleep(0.01)
        self.server_close()


class _OpenAIServer6(OpenAIServer):
    address_family = socket.AF_INET6


def default_model_name(model_cfg) -> str:
    """The id clients send as `model` when `serve.model_name` is empty: the checkpoint's file name
    (without .gguf/.safetensors) or directory name, or `<family>-random` for a random init."""
    if not model_cfg.checkpoint:
        return f"{model_cfg.family}-random"
    name = Path(model_cfg.checkpoint.rstrip("/")).name
    for suffix in _MODEL_FILE_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def build_server(loaded: LoadedEngine, cfg, logger: logging.Logger | None = None) -> tuple[OpenAIServer, Worker]:
    """A listening server (not yet serving: run `server.serve_forever()` in a thread) and its started
    engine worker, for `loaded` with the `serve`/`sampling` sections of `cfg`. `server.close()` stops both."""
    logger = logger or logging.getLogger("jz3_jax")
    if loaded.tokenizer is None:
        raise UserError("serve needs a tokenizer: set model.tokenizer or use a checkpoint that has one")
    sc = cfg.serve
    if sc.max_queue < 1 or sc.request_timeout_s <= 0 or not 0 <= sc.port < 65536:
        raise UserError(f"serve needs max_queue >= 1, request_timeout_s > 0 and a port in [0, 65535]; got "
                        f"{sc.max_queue}, {sc.request_timeout_s}, {sc.port}")
    defaults = sampling_from_config(cfg, seed=None)  # unseeded requests draw a fresh seed each
    model = ModelInfo(sc.model_name or default_model_name(cfg.model), loaded.tokenizer, loaded.engine.max_seq_len,
                      defaults)
    worker = Worker(loaded.engine, sc.max_queue, logger)
    server_cls = _OpenAIServer6 if ":" in sc.host else OpenAIServer
    try:
        server = server_cls((sc.host, sc.port), worker, model, sc.request_timeout_s, logger)
    except OSError as error:
        raise UserError(f"serve cannot listen on {sc.host}:{sc.port}: {error}") from error
    worker.start()
    return server, worker


def warm_up(engine: Engine) -> None:
    """Compile the engine's one-prompt prefill and its decode step before the first client waits for it."""
    engine.generate([Request([0], SamplingParams(temperature=0.0, max_new_tokens=2))])


def run(cfg, ctx) -> dict:
    """The stage: serve `cfg.model` until SIGTERM/SIGINT; returns the number of finished completions."""
    if ctx.process_count > 1:
        raise UserError("serve runs in a single process (one engine); launch it without multi-process settings")
    started = time.monotonic()
    loaded = load_engine(cfg, ctx.logger)
    warm_up(loaded.engine)
    server, worker = build_server(loaded, cfg, ctx.logger)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=server.serve_forever, name="serve-http", daemon=True)
    try:
        thread.start()
        ctx.logger.info("serve: engine max_batch=%d max_seq_len=%d, max_queue=%d, ready in %.1fs",
                        loaded.engine.max_batch, loaded.engine.max_seq_len, cfg.serve.max_queue,
                        time.monotonic() - started)
        print(f"serving {server.model.name} on {server.url}", flush=True)
        while not stop.wait(0.5):
            if not worker.is_alive():
                raise RuntimeError("the engine worker stopped unexpectedly")
    finally:
        server.close()
        thread.join(10)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    ctx.logger.info("serve: stopped after %d completion(s)", worker.completed)
    return {"model": server.model.name, "url": server.url, "completions": worker.completed}
