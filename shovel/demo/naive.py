"""THE WRONG WAYS to stop an asyncio pipeline, kept here to be measured by `python -m shovel demo`.

Each runs shovel's own reader task, bounded queue and storage task (pipeline.py) in one
TaskGroup, as the service does, and differs from shovel only in how a stop is handled:
- plain: `asyncio.run(main())` and nothing more. SIGTERM's default action kills the process
  at once, queue and pending writes with it; SIGINT raises KeyboardInterrupt, and asyncio.run
  cancels the main task, whose TaskGroup cancels reader and storage task together.
- cancel-all: a signal handler that cancels every task in `asyncio.all_tasks()` (advice found
  everywhere), the storage task and the client's own write tasks included.
- aiorun: `aiorun.run(main())` with its default shutdown: on SIGTERM it stops the loop, then
  cancels every task and waits for them.
In every one of them the main coroutine closes its client in a `finally`, as careful code does.
Over a NATS source (nats_pipeline) the main also runs the source's acknowledging task, and its
`finally` then does what shovel does after closing storage: acknowledge what is durable, give
back the rest, drain and close the NATS connection (NatsSource.finish). The NATS client runs in
the native module on a runtime of its own, which cancel-all does not reach: it cancels the
reader, storage and acknowledging tasks, not the client.
The service never imports this module.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, cast

from shovel.batches import Batch
from shovel.service.pipeline import ReadTally, run_reader, run_storage
from shovel.service.queue import BatchQueue
from shovel.sources import Source
from shovel.storage import Storage, StorageConfig
from shovel.storage.rejects import RejectWriter

# How long the `finally` gives the client to finish its writes.
CLOSE_TIMEOUT_S = 20.0


class Client(Protocol):
    """What the naive main needs of a storage client (shovel's, or the Python one)."""

    @property
    def committed_offset(self) -> int:
        """Where the source resumes."""
        ...

    async def write(self, batch: Batch) -> int:
        """Hands a batch over."""
        ...

    async def close(self, timeout_s: float) -> object:
        """Finishes pending writes and closes."""
        ...


Main = Callable[[], Coroutine[Any, Any, None]]


def pipeline(
    source: Source,
    open_client: Callable[[], Awaitable[Client]],
    output_dir: Path,
    queue_max_batches: int,
    max_record_bytes: int,
) -> Main:
    """The naive main coroutine: run reader and storage task until the source ends, close the
    client whatever happens. Nothing in it plans for a stop."""

    async def main() -> None:
        client = await open_client()
        queue = BatchQueue(queue_max_batches)
        rejects = RejectWriter(output_dir, max_record_bytes)
        try:
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(
                    run_reader(source, client.committed_offset, queue, ReadTally(), rejects)
                )
                # run_storage only calls write(), which both clients have.
                tg.create_task(run_storage(queue, cast(Storage, client)))
                await reader
                queue.close()
        finally:
            await client.close(CLOSE_TIMEOUT_S)

    return main


def nats_pipeline(
    source: Source,
    config: StorageConfig,
    queue_max_batches: int,
    max_record_bytes: int,
) -> Main:
    """The naive main over a NATS source and shovel's native client: the same reader, queue and
    storage task, the source's acknowledging task beside them, and the same careful `finally`
    as shovel's stop (close storage, then acknowledge and close the connection)."""

    async def main() -> None:
        client = await Storage.open(config)
        client.on_durable(lambda _s: source.durable_progress())
        source.resume(client.committed_offset, client.initial_source)
        await source.open()
        queue = BatchQueue(queue_max_batches)
        rejects = RejectWriter(config.directory, max_record_bytes)
        try:
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(
                    run_reader(source, client.committed_offset, queue, ReadTally(), rejects)
                )
                tg.create_task(run_storage(queue, client))
                tg.create_task(source.acknowledge(lambda: client.stats().records_durable))
                await reader
                queue.close()
        finally:
            await client.close(CLOSE_TIMEOUT_S)
            await source.finish(client.stats().records_durable, CLOSE_TIMEOUT_S)

    return main


def run_plain(main: Main) -> int:
    """No stop handling at all."""
    asyncio.run(main())
    return 0


def run_cancel_all(main: Main) -> int:
    """A handler that cancels every task of the loop."""

    async def with_handler() -> None:
        loop = asyncio.get_running_loop()

        def cancel_everything() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, cancel_everything)
        await main()

    asyncio.run(with_handler())
    return 0


def run_aiorun(main: Main) -> int:
    """aiorun's run() with its default shutdown."""
    import aiorun  # noqa: PLC0415  (the optional 'demo' extra)

    async def then_stop() -> None:
        await main()
        # aiorun runs the loop until stopped: a pipeline that ended stops it.
        asyncio.get_running_loop().stop()

    aiorun.run(then_stop())
    return 0
