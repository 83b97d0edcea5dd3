"""One run of the demonstration in a process of its own: `python -m shovel.demo.child`.

Started by the demo (runs.py), never by the service. It reads the deterministic generator
through a wrapper that writes, before each batch goes to the reader, how far reading has got
into the side file (progress.py), then runs one stop pattern over one storage client:
- shovel: the service's own runner (runner.run_service), unchanged; only the source it opens is
  wrapped, and with the Python client, the storage it opens is that client;
- the naive patterns of naive.py, over the same reader, queue and storage task.
With --nats-source the source is a NATS JetStream consumer (shovel's NATS source) and the side
file counts the messages handed to the reader; only cancel-all and shovel are run over it.
With --sink the records go to a JetStream stream instead of the output directory, through the
classic remote client (nats-py, pyremote.py) or shovel's sink (SinkStore: `python -m shovel
--sink`, which shovel's runner opens itself).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING

from shovel.batches import Batch, Piece
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
from shovel.demo.pyremote import NatsPyStore
from shovel.exitcodes import ExitCode
from shovel.logs import LOG_FORMAT
from shovel.service import signals
from shovel.service.startup import source_for
from shovel.settings import Settings, load_settings
from shovel.sources import Source
from shovel.storage import Storage, StorageConfig, Store
from shovel.storage.natsink import SinkStore
from shovel.storage.sinkurl import parse_sink

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

PATTERNS = ("no-handler", "asyncio-run", "cancel-all", "aiorun", "shovel")
# The clients of a local store (the output directory), measured under every stop.
CLIENTS = ("python", "native")
# The clients of a JetStream stream (--sink), and the stops each is measured under: the classic
# remote client under the two that cancel its tasks, shovel's sink under cancel-all and its own
# runner.
SINK_CLIENTS = {"nats-py": ("cancel-all", "aiorun"), "sink": ("cancel-all", "shovel")}
# The clients whose writes are asyncio tasks of their own (a stop comes once one is in flight).
TASK_CLIENTS = ("python", "nats-py")


class CountingSource(Source):
    """The source, with how far it has been read written to the side file as it goes: the
    offset reached, or, with `by_records` (a NATS source, whose offsets are stream sequences,
    not counts), the records handed to the reader (at shovel's stop, taken from the source's
    tail too). Every other step of the lifecycle passes through unchanged."""

    def __init__(self, inner: Source, progress: ProgressWriter, by_records: bool) -> None:
        self._inner = inner
        self._progress = progress
        self._by_records = by_records
        self._read = 0
        self.description = inner.description
        self.replayable = inner.replayable
        self.offset_unit = inner.offset_unit
        self.max_batch_records = inner.max_batch_records

    def cap_record_bytes(self, limit: int) -> None:
        self._inner.cap_record_bytes(limit)

    def resume(self, committed_offset: int, descriptor: str) -> str:
        if not self._by_records:
            self._progress.read_to(committed_offset)
        return self._inner.resume(committed_offset, descriptor)

    async def open(self) -> str:
        return await self._inner.open()

    async def pieces(self, start_offset: int) -> AsyncGenerator[Piece, None]:
        if not self._by_records:
            self._progress.read_to(start_offset)
        async with aclosing(self._inner.pieces(start_offset)) as pieces:
            async for piece in pieces:
                if isinstance(piece, Batch):
                    # Nothing awaits between here and the reader taking the batch: once
                    # written, it has been read.
                    self._read_past(piece)
                yield piece

    def _read_past(self, batch: Batch) -> None:
        self._read += batch.records
        self._progress.read_to(self._read if self._by_records else batch.end_offset)

    def stop_tail(self) -> list[Piece]:
        # What arrived but was not handed over yet: shovel's runner stores it too.
        tail = self._inner.stop_tail()
        for piece in tail:
            if isinstance(piece, Batch):
                self._read_past(piece)
        return tail

    def durable_progress(self) -> None:
        self._inner.durable_progress()

    async def acknowledge(self, records_durable: Callable[[], int]) -> None:
        await self._inner.acknowledge(records_durable)

    async def finish(self, records_durable: int, timeout_s: float) -> None:
        await self._inner.finish(records_durable, timeout_s)

    async def close(self) -> None:
        await self._inner.close()

    def collectors(self) -> list[Collector]:
        return self._inner.collectors()


def _counting(args: argparse.Namespace, inner: Source, progress: ProgressWriter) -> Source:
    return CountingSource(inner, progress, by_records=args.nats_source is not None)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m shovel.demo.child",
        description="One run of `python -m shovel demo` (started by it, not by hand).",
    )
    p.add_argument("--pattern", choices=PATTERNS, required=True)
    p.add_argument("--client", choices=[*CLIENTS, *SINK_CLIENTS], required=True)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--rate", type=float, required=True, help="records/s; 0: as fast as possible")
    p.add_argument("--latency-ms", type=float, required=True)
    p.add_argument("--count", type=int, default=None, help="records in all (default: endless)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nats-source", default=None, help="a nats:// source instead of the generator")
    p.add_argument(
        "--sink", default=None, help="the nats:// stream of --client nats-py or sink (required)"
    )
    return p


def _settings(args: argparse.Namespace) -> Settings:
    source = "generate" if args.count is None else f"generate:{args.count}"
    if args.nats_source is not None:
        # ack_wait (natsfeed.py) is longer than the stop may take, as shovel wants it.
        source = args.nats_source
        flags = ["--shutdown-timeout-s", str(SHOVEL_SHUTDOWN_TIMEOUT_S)]
    else:
        flags = []
    if args.client == "sink":
        # shovel's runner opens the sink itself (SinkStore); the output directory keeps
        # last-stop.json and rejected/ only.
        flags += ["--sink", args.sink]
    flags += ["--source", source, "--output-dir", str(args.output_dir)]
    flags += ["--generate-rate", str(args.rate), "--metrics-port", "0", "--status-interval-s", "0"]
    return load_settings(flags)


def _run_shovel(args: argparse.Namespace, settings: Settings, progress: ProgressWriter) -> int:
    """shovel's runner, as `python -m shovel` runs it, over the counting source."""
    from shovel.service.runner import run_service  # noqa: PLC0415

    def counting_source_for(settings: Settings) -> Source:
        return _counting(args, source_for(settings), progress)

    async def open_python_store(config: StorageConfig) -> Store:
        if args.client == "nats-py":
            return await NatsPyStore.open(
                parse_sink(args.sink), config.directory, progress.inflight
            )
        return PythonStore(config.directory, args.latency_ms / 1000, args.seed, progress.inflight)

    # The runner's stop sequence as the service has it, over the counting source (and a
    # Python client, when asked for; with --client sink the runner opens the sink itself).
    code = asyncio.run(
        run_service(
            settings,
            open_source=counting_source_for,
            open_storage=open_python_store if args.client in TASK_CLIENTS else Storage.open,
        )
    )
    signals.block_for_exit()
    return code


def main(argv: list[str] | None = None) -> int:
    """Runs one pattern over one client; returns the exit code."""
    args = _parser().parse_args(argv)
    if (args.client in SINK_CLIENTS) != (args.sink is not None):
        sys.stderr.write("--sink goes with --client nats-py or sink, and they with it\n")
        return ExitCode.USAGE
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

    source = _counting(args, source_for(settings), progress)
    if args.nats_source is not None:
        if args.pattern != "cancel-all" or args.client != "native":
            sys.stderr.write("a NATS source runs with --pattern cancel-all --client native only\n")
            return ExitCode.USAGE
        return run_cancel_all(
            nats_pipeline(
                source,
                settings.storage_config,
                settings.queue_max_batches,
                settings.max_record_bytes,
            )
        )

    async def open_client() -> Client:
        if args.client == "python":
            return PythonStore(
                settings.output_dir, args.latency_ms / 1000, args.seed, progress.inflight
            )
        if args.client == "nats-py":
            return await NatsPyStore.open(
                parse_sink(args.sink), settings.output_dir, progress.inflight
            )
        if args.client == "sink":
            return await SinkStore.open(
                parse_sink(args.sink),
                connect_timeout_s=settings.nats_connect_timeout_s,
                max_inflight_bytes=settings.max_inflight_bytes,
                offset_unit=source.offset_unit,
            )
        return await Storage.open(settings.storage_config)

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
