"""One run of the demonstration in a process of its own: `python -m shovel.demo.child`.

Started by the demo (runs.py), never by the service. It reads the deterministic generator
through a wrapper that writes, before each batch goes to the reader, how far reading has got
into the side file (progress.py), then runs one stop pattern over one storage client:
- shovel: the service's own runner (runner.run_service), unchanged; only the source it opens is
  wrapped, and with the Python client, the storage it opens is that client;
- the naive patterns of naive.py, over the same reader, queue and storage task.
With --nats-source the source is a NATS JetStream consumer (shovel's NATS source) and the side
file counts the messages handed to the reader; only cancel-all and shovel are run over it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from pathlib import Path

from shovel.batches import Batch, Piece
from shovel.cli import EXIT_USAGE, LOG_FORMAT
from shovel.demo.naive import (
    Client,
    nats_pipeline,
    pipeline,
    run_aiorun,
    run_cancel_all,
    run_plain,
)
from shovel.demo.natsserver import SHOVEL_SHUTDOWN_TIMEOUT_S
from shovel.demo.progress import PROGRESS_FILE, ProgressWriter
from shovel.demo.pyclient import PythonStore
from shovel.service import signals
from shovel.service.runner import source_for
from shovel.settings import Settings, load_settings
from shovel.sources import Source
from shovel.sources.api import AcknowledgedSource, AckProgress
from shovel.storage import Storage, StorageConfig, storage_config

PATTERNS = ("no-handler", "asyncio-run", "cancel-all", "aiorun", "shovel")
CLIENTS = ("python", "native")


class CountingSource:
    """The source, with how far it has been read written to the side file as it goes."""

    def __init__(self, inner: Source, progress: ProgressWriter) -> None:
        self._inner = inner
        self._progress = progress
        self.description = inner.description
        self.replayable = inner.replayable

    def resume(self, committed_offset: int, descriptor: str) -> str:
        self._progress.read_to(committed_offset)
        return self._inner.resume(committed_offset, descriptor)

    async def pieces(self, start_offset: int) -> AsyncGenerator[Piece, None]:
        self._progress.read_to(start_offset)
        async with aclosing(self._inner.pieces(start_offset)) as pieces:
            async for piece in pieces:
                if isinstance(piece, Batch):
                    # Nothing awaits between here and the reader taking the batch: once
                    # written, it has been read.
                    self._progress.read_to(piece.end_offset)
                yield piece

    def stop_tail(self) -> list[Piece]:
        return self._inner.stop_tail()


class CountingAckSource(CountingSource):
    """A NATS source, with the messages handed to the reader (or, at shovel's stop, taken from
    the source's tail) counted in the side file (the committed offset is a stream sequence,
    not a count). Passes the acknowledgement protocol through unchanged."""

    def __init__(self, inner: Source, progress: ProgressWriter) -> None:
        super().__init__(inner, progress)
        assert isinstance(inner, AcknowledgedSource)
        self._acked: AcknowledgedSource = inner
        self.progress: AckProgress = inner.progress
        self._read = 0

    def resume(self, committed_offset: int, descriptor: str) -> str:
        return self._inner.resume(committed_offset, descriptor)

    async def pieces(self, start_offset: int) -> AsyncGenerator[Piece, None]:
        async with aclosing(self._inner.pieces(start_offset)) as pieces:
            async for piece in pieces:
                if isinstance(piece, Batch):
                    self._read += piece.records
                    self._progress.read_to(self._read)
                yield piece

    def stop_tail(self) -> list[Piece]:
        # What arrived but was not handed over yet: shovel's runner stores it too.
        tail = self._inner.stop_tail()
        self._read += sum(piece.records for piece in tail if isinstance(piece, Batch))
        self._progress.read_to(self._read)
        return tail

    async def open(self) -> str:
        return await self._acked.open()

    def durable_progress(self) -> None:
        self._acked.durable_progress()

    async def run_acks(self, records_durable: Callable[[], int]) -> None:
        await self._acked.run_acks(records_durable)

    async def finish(self, records_durable: int, timeout_s: float) -> None:
        await self._acked.finish(records_durable, timeout_s)

    async def close(self) -> None:
        await self._acked.close()


def _counting(inner: Source, progress: ProgressWriter) -> CountingSource:
    if isinstance(inner, AcknowledgedSource):
        return CountingAckSource(inner, progress)
    return CountingSource(inner, progress)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m shovel.demo.child",
        description="One run of `python -m shovel demo` (started by it, not by hand).",
    )
    p.add_argument("--pattern", choices=PATTERNS, required=True)
    p.add_argument("--client", choices=CLIENTS, required=True)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--rate", type=float, required=True, help="records/s; 0: as fast as possible")
    p.add_argument("--latency-ms", type=float, required=True)
    p.add_argument("--count", type=int, default=None, help="records in all (default: endless)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nats-source", default=None, help="a nats:// source instead of the generator")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    source = "generate" if args.count is None else f"generate:{args.count}"
    if args.nats_source is not None:
        # ack_wait (natsfeed.py) is longer than the stop may take, as shovel wants it.
        source = args.nats_source
        flags = ["--shutdown-timeout-s", str(SHOVEL_SHUTDOWN_TIMEOUT_S)]
    else:
        flags = []
    flags += ["--source", source, "--output-dir", str(args.output_dir)]
    flags += ["--generate-rate", str(args.rate), "--metrics-port", "0", "--status-interval-s", "0"]
    return load_settings(flags)


def _run_shovel(args: argparse.Namespace, settings: Settings, progress: ProgressWriter) -> int:
    """shovel's runner, as `python -m shovel` runs it, over the counting source."""
    from shovel.service import runner  # noqa: PLC0415

    def counting_source_for(settings: Settings) -> Source:
        return _counting(source_for(settings), progress)

    # The runner finds these by name when it runs: replacing them here, in this process only,
    # leaves its stop sequence as the service has it.
    setattr(runner, "source_for", counting_source_for)  # noqa: B010
    if args.client == "python":

        class _PythonStorage:
            @staticmethod
            async def open(config: StorageConfig) -> PythonStore:
                return PythonStore(
                    config.directory, args.latency_ms / 1000, args.seed, progress.inflight
                )

        setattr(runner, "Storage", _PythonStorage)  # noqa: B010
    code = asyncio.run(runner.run_service(settings))
    signals.block_for_exit()
    return code


def main(argv: list[str] | None = None) -> int:
    """Runs one pattern over one client; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.pattern == "shovel":
        # As `python -m shovel` does: stop signals are recorded before anything else.
        signals.install_early()
    settings = _settings(args)
    logging.basicConfig(
        level=logging.INFO,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    progress = ProgressWriter(args.output_dir / PROGRESS_FILE)
    if args.pattern == "shovel":
        return _run_shovel(args, settings, progress)

    source = _counting(source_for(settings), progress)
    if isinstance(source, CountingAckSource):
        if args.pattern != "cancel-all" or args.client != "native":
            sys.stderr.write("a NATS source runs with --pattern cancel-all --client native only\n")
            return EXIT_USAGE
        return run_cancel_all(
            nats_pipeline(
                source,
                storage_config(settings),
                settings.queue_max_batches,
                settings.max_record_bytes,
            )
        )

    async def open_client() -> Client:
        if args.client == "python":
            return PythonStore(
                settings.output_dir, args.latency_ms / 1000, args.seed, progress.inflight
            )
        return await Storage.open(storage_config(settings))

    main_coro = pipeline(
        source,
        open_client,
        settings.output_dir,
        settings.queue_max_batches,
        settings.max_record_bytes,
    )
    run: Callable[..., int] = {
        "no-handler": run_plain,
        "asyncio-run": run_plain,
        "cancel-all": run_cancel_all,
        "aiorun": run_aiorun,
    }[args.pattern]
    return run(main_coro)


if __name__ == "__main__":
    raise SystemExit(main())
