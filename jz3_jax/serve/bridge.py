"""Engine worker thread -> asyncio: a `Job` whose events land on an asyncio queue of the event loop.

The worker thread never blocks on the loop and the loop never blocks on the worker: events cross
with `loop.call_soon_threadsafe`, and a coroutine awaits them (with a deadline) on its own queue.
"""

from __future__ import annotations

import asyncio
import contextlib

from jz3_jax.decoding.engine import Event
from jz3_jax.decoding.sampling import SamplingParams
from jz3_jax.serve.protocol import ApiError
from jz3_jax.serve.worker import Job


class ClientGone(Exception):
    """The client disconnected; the job is cancelled and nothing more will be sent."""


_GONE = object()


class AsyncJob(Job):
    """A job read from the event loop `loop` (create it on that loop)."""

    def __init__(self, prompt_ids: list[int], params: list[SamplingParams], loop: asyncio.AbstractEventLoop,
                 **options):
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        super().__init__(prompt_ids, params, **options)

    def _put(self, item: Event | ApiError) -> None:
        # A loop already closed (server stopped) has no reader left to tell.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def disconnect(self) -> None:
        """The client went away (call on the loop): cancel, and wake the reader with ClientGone."""
        self.cancel()
        self._queue.put_nowait(_GONE)

    async def event(self, timeout: float) -> Event:
        """The next event; raises the job's ApiError, ClientGone, or TimeoutError after `timeout` seconds."""
        item = await asyncio.wait_for(self._queue.get(), max(timeout, 0.0))
        if item is _GONE:
            raise ClientGone()
        if isinstance(item, ApiError):
            raise item
        return item
