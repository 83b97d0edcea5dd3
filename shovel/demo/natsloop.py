"""One run's stream on the demo's NATS server, as the demo reaches it: through a nats-py
connection of its own, on an event loop on a thread of its own, sampled while the run goes on
and deleted at the end. The NATS source's feed (natsfeed.py) and the JetStream store's stream
(sinkstream.py) are two kinds of it.

nats-py (the 'demo' extra, not shovel's) is imported only where a stream uses it: without it the
demo still imports the figures of both and leaves its NATS cells out (cli.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from nats.aio.client import Client

# The demo's requests to the JetStream API (nats-py's default is 5 s): a request that is not
# answered in time is asked again while the wait it belongs to still makes progress.
API_TIMEOUT_S = 10.0
# How often a run's stream is sampled for the timeline, unless its kind says otherwise.
SAMPLE_S = 0.05
_T = TypeVar("_T")


async def _quiet(_e: Exception) -> None:
    """The demo's connection errors surface as failed calls; nothing to log besides."""


async def answered(request: Awaitable[_T]) -> _T | None:
    """A JetStream API request's answer, or None when none came in time (the wait it belongs
    to counts that as no progress, and asks again)."""
    import nats.errors  # noqa: PLC0415  (the optional 'demo' extra)

    try:
        return await request
    except (nats.errors.TimeoutError, TimeoutError):
        return None


class StreamOnThread:
    """A run's stream `stream`, its event loop and thread started here; end with `close()`,
    which deletes the stream."""

    def __init__(self, url: str, stream: str, subject: str, thread_name: str) -> None:
        self.url = url
        self.stream = stream
        self.subject = subject
        self._stop_sampling = asyncio.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=thread_name)
        self._thread.start()
        self._nc: Client | None = None
        self._sampler: asyncio.Task[None] | None = None

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        # No timeout but for the clean-up: each wait in `coro` ends when it stops making
        # progress, however slow the machine.
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    async def _connect(self, name: str) -> Client:
        import nats  # noqa: PLC0415  (the optional 'demo' extra)

        self._nc = await nats.connect(
            [f"nats://{self.url}"], name=name, allow_reconnect=False, error_cb=_quiet
        )
        return self._nc

    def _start_sampling(
        self, take: Callable[[], Awaitable[None]], every_s: float = SAMPLE_S
    ) -> None:
        """Runs `take` every `every_s` (a request that fails is skipped) until stop_sampling."""
        self._sampler = asyncio.create_task(self._sample(take, every_s))

    async def _sample(self, take: Callable[[], Awaitable[None]], every_s: float) -> None:
        import nats.errors  # noqa: PLC0415  (the optional 'demo' extra)

        while not self._stop_sampling.is_set():
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await take()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_sampling.wait(), every_s)

    def stop_sampling(self) -> None:
        """Ends the timeline's samples (after the child exited)."""
        self._loop.call_soon_threadsafe(self._stop_sampling.set)

    def close(self) -> None:
        """Deletes the stream, closes the connection, ends the thread."""
        with contextlib.suppress(Exception):
            self._call(self._close(), 30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    async def _close(self) -> None:
        import nats.errors  # noqa: PLC0415  (the optional 'demo' extra)

        self._stop_sampling.set()
        if self._sampler is not None:
            with contextlib.suppress(Exception):
                await self._sampler
        if self._nc is not None:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._nc.jetstream().delete_stream(self.stream)
            await self._nc.close()
