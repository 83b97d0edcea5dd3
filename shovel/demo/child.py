"""One run of the demonstration in a process of its own: `python -m shovel.demo.child`.

Started by the demo (runs.py), never by the service. It reads the deterministic generator
through a wrapper that writes, before each batch goes to the reader, how far reading has got
into the side file (progress.py), then runs one stop pattern over one storage client:
- shovel: the service's own runner (runner.run_service), unchanged; only the source it opens is
  wrapped, and with the Python client, the storage it opens is that client;
- the naive patterns of naive.py, over the same reader, queue and storage task.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

from shovel import signals
from shovel.batches import Batch, Piece
from shovel.demo.naive import Client, pipeline, run_aiorun, run_cancel_all, run_plain
from shovel.demo.progress import PROGRESS_FILE, ProgressWriter
from shovel.demo.pyclient import PythonStore
from shovel.settings import Settings, load_settings
from shovel.sources import Source, open_source
from shovel.storage import Storage, StorageConfig

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
    return p


def _settings(args: argparse.Namespace) -> Settings:
    source = "generate" if args.count is None else f"generate:{args.count}"
    flags = ["--source", source, "--output-dir", str(args.output_dir)]
    flags += ["--generate-rate", str(args.rate), "--metrics-port", "0", "--status-interval-s", "0"]
    return load_settings(flags)


def _storage_config(settings: Settings) -> StorageConfig:
    return StorageConfig(
        directory=settings.output_dir,
        segment_max_bytes=settings.segment_max_bytes,
        fsync_interval_ms=settings.fsync_interval_ms,
        fsync_max_bytes=settings.fsync_max_bytes,
        max_inflight_bytes=settings.max_inflight_bytes,
    )


def _run_shovel(args: argparse.Namespace, settings: Settings, progress: ProgressWriter) -> int:
    """shovel's runner, as `python -m shovel` runs it, over the counting source."""
    from shovel import runner  # noqa: PLC0415

    def counting_open_source(*args: Any, **kwargs: Any) -> Source:
        return CountingSource(open_source(*args, **kwargs), progress)

    # The runner finds these by name when it runs: replacing them here, in this process only,
    # leaves its stop sequence as the service has it.
    setattr(runner, "open_source", counting_open_source)  # noqa: B010
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
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    progress = ProgressWriter(args.output_dir / PROGRESS_FILE)
    if args.pattern == "shovel":
        return _run_shovel(args, settings, progress)

    source = CountingSource(
        open_source(
            settings.source_spec,
            settings.read_chunk_bytes,
            settings.max_record_bytes,
            settings.generator_rate,
        ),
        progress,
    )

    async def open_client() -> Client:
        if args.client == "python":
            return PythonStore(
                settings.output_dir, args.latency_ms / 1000, args.seed, progress.inflight
            )
        return await Storage.open(_storage_config(settings))

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
