"""The stop sequence in-process, through run_service's seams: a storage of the test's own in
place of the native client, so that what the runner hands over, when it closes, and with how
much of the deadline left, can be seen."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shovel import _early
from shovel.batches import Batch
from shovel.exitcodes import ExitCode
from shovel.service.laststop import read_report
from shovel.service.runner import run_service
from shovel.settings import Settings, load_settings
from shovel.storage import StorageConfig, StorageError, Store

TIMEOUT_S = 5.0


@dataclass
class Counts:
    """What the fake store reports (the fields the runner reads)."""

    inflight_writes: int = 0
    inflight_bytes: int = 0
    inflight_records: int = 0
    records_durable: int = 0
    bytes_durable: int = 0
    committed_offset: int = 0
    fsyncs: int = 0
    errors: int = 0
    retries: int = 0


@dataclass
class Closed:
    committed_offset: int


@dataclass
class FakeStore:
    """Every write durable at once, unless `fail_after` writes were made: then `reached` is
    set, and the next write waits for `go_on`, then `fail_wait_s`, and raises StorageError.
    Records each close's budget."""

    fail_after: int | None = None
    fail_wait_s: float = 0.0
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    go_on: asyncio.Event = field(default_factory=asyncio.Event)
    written: list[Batch] = field(default_factory=list)
    close_budgets: list[float] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)

    committed_offset: int = 0
    initial_source: str = ""
    initial_records: int = 0
    recovery_notes: list[str] = field(default_factory=list)

    def stats(self) -> Counts:
        return self.counts

    def on_durable(self, observer: object) -> None:
        pass

    async def write(self, batch: Batch) -> int:
        if self.fail_after is not None and len(self.written) >= self.fail_after:
            self.reached.set()
            await self.go_on.wait()
            await asyncio.sleep(self.fail_wait_s)
            raise StorageError("the test's storage failed")
        self.written.append(batch)
        self.counts.records_durable += batch.records
        self.counts.committed_offset = batch.end_offset
        return len(self.written)

    async def flushed(self) -> None:
        pass

    async def close(self, timeout_s: float) -> Closed:
        self.close_budgets.append(timeout_s)
        return Closed(self.counts.committed_offset)


@pytest.fixture(autouse=True)
def _signals_restored() -> Iterator[None]:
    """run_service leaves shovel's recorder on the stop signals: the test process gets its own
    handlers back."""
    saved = {sig: signal.getsignal(sig) for sig in _early.stop_signals()}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        _early.pending.clear()


def settings(out: Path, source: str) -> Settings:
    return load_settings(
        ["--source", source, "--output-dir", str(out), "--metrics-port", "0",
         "--status-interval-s", "0", "--generate-rate", "0",
         "--shutdown-timeout-s", str(TIMEOUT_S)]
    )  # fmt: skip


def run(config: Settings, store: FakeStore) -> int:
    async def opened(_config: StorageConfig) -> Store:
        return store

    return asyncio.run(run_service(config, open_storage=opened))


def test_the_end_of_a_source_hands_everything_over_then_closes_with_the_whole_budget(
    tmp_path: Path,
) -> None:
    store = FakeStore()
    assert run(settings(tmp_path, "generate:5000"), store) == ExitCode.OK
    assert sum(b.records for b in store.written) == 5000
    assert store.written[-1].end_offset == 5000
    # No signal: nothing was in a hurry, and the close got the usual budget from then.
    assert len(store.close_budgets) == 1
    assert TIMEOUT_S - 1.0 < store.close_budgets[0] <= TIMEOUT_S
    report = read_report(tmp_path)
    assert report is not None
    assert (report.reason, report.exit_code, report.undelivered) == ("end of source", 0, 0)


def test_a_storage_failure_during_a_signalled_stop_closes_within_what_is_left(
    tmp_path: Path,
) -> None:
    """The deadline runs from the signal: a failure on the way does not restart it."""
    config = settings(tmp_path, "generate")

    async def main() -> tuple[int, FakeStore]:
        store = FakeStore(fail_after=3, fail_wait_s=0.5)

        async def opened(_config: StorageConfig) -> Store:
            return store

        service = asyncio.ensure_future(run_service(config, open_storage=opened))
        await asyncio.wait_for(store.reached.wait(), 30)
        os.kill(os.getpid(), signal.SIGTERM)
        # The failure comes half a second after the signal, so half a second into the deadline
        # (less the moment the loop takes to see the signal).
        store.go_on.set()
        return await asyncio.wait_for(service, 30), store

    code, store = asyncio.run(main())
    assert code == ExitCode.FATAL
    assert len(store.close_budgets) == 1
    # Half a second of it went to the failure (less the moment the signal took to arrive); a
    # fresh budget would be the whole of it.
    assert store.close_budgets[0] < TIMEOUT_S - 0.25
    report = read_report(tmp_path)
    assert report is not None
    assert (report.reason, report.exit_code) == ("fatal", 1)
    assert report.detail == "storage failed: the test's storage failed"
