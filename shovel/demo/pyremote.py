"""A pure-Python asyncio client of a remote store in the classic shape, for the demo: THE WRONG
WAY, on purpose.

The store is a NATS JetStream stream, the client nats-py. `write()` starts one asyncio task per
record, which publishes it with JetStream's `publish` and awaits the stream's acknowledgement
(the PubAck); the payload is the record without its newline, as shovel's sink publishes it.
`close()` awaits the tasks still pending with `asyncio.gather`, then closes the connection.
Its checkpoint is pyclient.py's naive one (NaiveCheckpoint, in OUTPUT/nats-py-store/offset),
which only a restart would read: the demo runs this client under stops it does not restart
from, so that the stream alone says what each stop lost.

nats-py's own machinery (the reader of the connection, the flusher of what is published, the
pings) is asyncio tasks on the same loop: a stop that cancels every task cancels them along
with the publishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from shovel.batches import Batch
from shovel.demo.pyclient import TaskPerWrite
from shovel.storage.sinkurl import SinkSpec

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

STORE_DIR = "nats-py-store"


class NatsPyStore(TaskPerWrite):
    """One task per record, each a JetStream publish awaiting its PubAck. Create with `await
    NatsPyStore.open(...)`."""

    def __init__(
        self,
        nc: Client,
        subject: str,
        directory: Path,
        on_inflight: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(directory, STORE_DIR, on_inflight)
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._subject = subject

    @classmethod
    async def open(
        cls, spec: SinkSpec, directory: Path, on_inflight: Callable[[int], None] | None = None
    ) -> NatsPyStore:
        """Connects to the stream's servers (nats-py's defaults, as a classic client has
        them)."""
        import nats  # noqa: PLC0415  (the optional 'demo' extra)

        nc = await nats.connect(list(spec.servers), name="shovel-demo-nats-py-client")
        return cls(nc, spec.subject, directory, on_inflight)

    async def write(self, batch: Batch) -> int:
        """Starts a publish task per record of `batch` and returns at once (the last one's
        number)."""
        submitted_at = time.monotonic()
        # bytes() is the same object for bytes, and a copy of native Records (a file source).
        for record in bytes(batch.data).split(b"\n")[:-1]:
            self._start(self._publish(record, submitted_at), 1, len(record) + 1)
        self._checkpoint.accepted(batch.end_offset)
        return self._seq

    async def _publish(self, record: bytes, submitted_at: float) -> None:
        await self._js.publish(self._subject, record)
        self._stored(1, len(record) + 1, submitted_at)

    async def _release(self) -> None:
        await self._nc.close()
