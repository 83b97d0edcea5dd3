"""An asyncio front for the native JetStream sink: a stream as storage, opened, written to,
and closed with every accepted record acknowledged by the stream.

It is a `Store` like the output directory: the service hands it batches, reads its counters,
and closes it within the deadline. The stream holds the resume point (the last message on the
subject carries the source offset and descriptor), so `committed_offset` and `initial_source`
come from there, and the pod needs no volume. The native client signals progress by making a
file descriptor readable; cancelling any wait here abandons the wait, never a publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass

from shovel._native import (
    NatsSink,
    SinkError,
    SinkOpened,
    SinkStats,
)
from shovel.batches import Batch
from shovel.storage.sinkurl import SinkSpec
from shovel.storage.waiting import Progress

__all__ = ["SinkClosed", "SinkError", "SinkStore", "writer_id"]

log = logging.getLogger(__name__)


def writer_id() -> str:
    """This run's id on the messages it stores: host, process and a random part (what a second
    writer's refusal names)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:24] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class SinkClosed:
    """What a close reports."""

    committed_offset: int


class SinkStore:
    """An open JetStream sink. Create with `await SinkStore.open(...)`; end with `close()`."""

    def __init__(
        self,
        native: NatsSink,
        opened: SinkOpened,
        spec: SinkSpec,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._native = native
        self._opened = opened
        self.spec = spec
        self._loop = loop
        self._progress = Progress(loop)
        self._watching = True
        loop.add_reader(native.notify_fd(), self._on_progress)

    @classmethod
    async def open(
        cls,
        spec: SinkSpec,
        *,
        connect_timeout_s: float | None,
        max_inflight_bytes: int,
        offset_unit: str,
    ) -> SinkStore:
        """Connects, checks the stream and reads the resume point back, waiting while no
        server answers (at most the connect timeout). Raises SinkError with the reason."""
        native = NatsSink(
            list(spec.servers),
            spec.stream,
            spec.subject,
            creds=None if spec.creds is None else str(spec.creds),
            tls_ca=None if spec.tls_ca is None else str(spec.tls_ca),
            tls_cert=None if spec.tls_cert is None else str(spec.tls_cert),
            tls_key=None if spec.tls_key is None else str(spec.tls_key),
            connect_timeout_s=connect_timeout_s,
            batch=spec.batch,
            max_inflight_bytes=max_inflight_bytes,
            offset_unit=offset_unit,
            writer_id=writer_id(),
        )
        loop = asyncio.get_running_loop()
        news = asyncio.Event()

        def on_news() -> None:
            native.drain_notifications()
            _log_events(native)
            news.set()

        loop.add_reader(native.notify_fd(), on_news)
        try:
            while True:
                news.clear()
                opened = native.opened()
                if opened is not None:
                    break
                await news.wait()
        except BaseException:
            # Refused, or a stop while connecting: nothing was handed over, so the close
            # has nothing to report (and must not take the place of what is raised).
            loop.remove_reader(native.notify_fd())
            with contextlib.suppress(Exception):
                await asyncio.to_thread(native.close, 0.0)
            _log_events(native)
            raise
        loop.remove_reader(native.notify_fd())
        if not opened.atomic:
            log.warning(
                "stream %s does not take atomic batches (allow_atomic is off): publishing one "
                "record per round trip; set allow_atomic: true on the stream for speed",
                spec.stream,
            )
        return cls(native, opened, spec, loop)

    @property
    def opened(self) -> SinkOpened:
        """What the open found in the stream."""
        return self._opened

    @property
    def committed_offset(self) -> int:
        """The source offset the stream holds everything up to: where the source resumes."""
        return self._opened.offset

    @property
    def initial_source(self) -> str:
        """The source descriptor stored with it ("" if none)."""
        return self._opened.source

    @property
    def initial_records(self) -> int:
        """Messages on the subject when the sink opened."""
        return self._opened.messages

    @property
    def recovery_notes(self) -> list[str]:
        """Nothing to recover: the stream stores whole batches or none."""
        return []

    @property
    def record_limit(self) -> int:
        """The largest record the stream takes."""
        return self._opened.record_limit

    def stats(self) -> SinkStats:
        """The native counters, now (safe from any thread)."""
        return self._native.stats()

    def on_durable(self, observer: Callable[[float], None]) -> None:
        """Calls `observer(seconds)` with each batch's hand-over-to-acknowledgement time."""
        self._progress.on_durable(observer)

    def _on_progress(self) -> None:
        self._native.drain_notifications()
        _log_events(self._native)
        self._progress.made(self._native.durable_seq)

    async def write(self, batch: Batch) -> int:
        """Hands `batch` over, waiting while the sink is full. Returns its sequence number.
        Raises SinkError once the sink has failed."""
        return await self._progress.hand_over(
            lambda: self._native.submit(batch.data, batch.records, batch.end_offset, batch.source)
        )

    async def flushed(self) -> None:
        """Waits until the stream has acknowledged everything handed over so far."""
        while self._native.durable_seq < self._progress.last_seq:
            self._native.check()
            await self._progress.next()

    async def failed(self) -> None:
        """Returns never; raises SinkError as soon as a permanent error has ended the writes
        (the storage task would otherwise learn of it only at its next write)."""
        while True:
            self._native.check()
            await self._progress.next()

    async def close(self, timeout_s: float) -> SinkClosed:
        """Waits for the stream to acknowledge every accepted record (in a thread; the loop
        stays free), then disconnects. Raises CloseTimeoutError past `timeout_s`, SinkError
        after a permanent error."""
        try:
            offset = await asyncio.to_thread(self._native.close, timeout_s)
        finally:
            if self._watching:
                self._watching = False
                self._loop.remove_reader(self._native.notify_fd())
            self._on_progress()
        return SinkClosed(offset)


def _log_events(native: NatsSink) -> None:
    for level, text in native.take_events():
        log.log(level, "%s", text)
