"""A JetStream store run's stream, from the demo's side: created, watched, and read back after
the run.

For each run, before the child starts: a stream of its own (in memory, `allow_atomic: true` as
shovel's sink wants it) taking one subject, which the child's client publishes the records on.
While it runs, the messages the stream holds are sampled, for the timeline and for the watch
on a stop that hangs. After the child has exited: the settle (what it published last may still
be on its way into the stream: the wait ends once the stream's last sequence has not moved for
SETTLE_S), then the read-back: every message on the subject, through a consumer of the demo's
own, in stream order, each payload written as a line of RUN/HELD_FILE, which the accounting
counts (accounting.py) as it counts a local store's file.

No wait here has a fixed end: each is given up when it has made no progress for STALL_S. A
read-back that ends so is incomplete, and says how many messages the stream holds that it did
not read: the accounting calls the records those may hold unknown, not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from shovel.demo.accounting import HELD_FILE
from shovel.demo.natsfeed import STALL_S
from shovel.demo.natsloop import API_TIMEOUT_S, StreamOnThread, answered
from shovel.demo.stall import StallClock

# How often the stream's messages are sampled while the run goes on: the timeline's stored
# records, as fresh as the side file's read ones (the run samples both every 10 ms) allow.
SAMPLE_HELD_S = 0.02
# The settle: the stream's last sequence unmoved this long, looked at this often.
SETTLE_S = 0.3
SETTLE_LOOK_S = 0.05
# The read-back's pulls: up to this many messages, each pull waiting up to this long for them.
READ_BATCH = 1000
READ_PULL_S = 0.5


@dataclass(frozen=True, slots=True)
class Held:
    """What the stream held after the run, as read back."""

    # Messages on the subject after the settle (None: the server never said).
    messages: int | None
    # Of those, the messages read back (each once) into HELD_FILE.
    read_back: int
    # Seconds the settle and the read-back took.
    settle_s: float
    read_back_s: float
    # Why the read-back did not get every message (None: it did).
    incomplete: str | None = None

    @property
    def unseen(self) -> int | None:
        """Messages the stream holds that were not read back (None: unknown how many)."""
        return None if self.messages is None else self.messages - self.read_back


class SinkStream(StreamOnThread):
    """One run's stream: see the module docstring."""

    def __init__(self, url: str, stream: str) -> None:
        super().__init__(url, stream, f"{stream}.records", f"sink-{stream}")
        # The messages the stream held at the last sample.
        self._held_now = 0

    @property
    def sink(self) -> str:
        """The child's --sink."""
        return f"nats://{self.url}/{self.stream}?subject={self.subject}"

    def now(self) -> int:
        """Messages the stream held at the last sample (the run's stored records, as far as
        the timeline knows them)."""
        return self._held_now

    def start(self) -> None:
        """Creates the stream and starts sampling it."""
        self._call(self._start())

    async def _start(self) -> None:
        from nats.js.api import StorageType, StreamConfig  # noqa: PLC0415

        nc = await self._connect("shovel-demo-sink-stream")
        await nc.jetstream(timeout=API_TIMEOUT_S).add_stream(
            StreamConfig(
                name=self.stream,
                subjects=[self.subject],
                storage=StorageType.MEMORY,
                allow_atomic=True,
            )
        )
        self._start_sampling(self._sample_held, SAMPLE_HELD_S)

    async def _sample_held(self) -> None:
        assert self._nc is not None
        info = await self._nc.jetstream(timeout=1.0).stream_info(self.stream)
        self._held_now = info.state.messages

    def read_back(self, directory: Path) -> Held:
        """Settles, then reads every message on the subject into DIRECTORY/HELD_FILE (call
        after the child exited)."""
        self.stop_sampling()
        return self._call(self._read_back(directory / HELD_FILE))

    async def _read_back(self, path: Path) -> Held:
        started = time.monotonic()
        messages = await self._settle()
        settled = time.monotonic()
        got: dict[int, bytes] = {}
        incomplete = None
        if messages is None:
            incomplete = f"the server did not say what stream {self.stream} holds for {STALL_S:g} s"
        else:
            incomplete = await self._pull(got, messages)
        with path.open("wb") as f:
            f.writelines(got[seq] + b"\n" for seq in sorted(got))
        return Held(
            messages=messages,
            read_back=len(got),
            settle_s=round(settled - started, 3),
            read_back_s=round(time.monotonic() - settled, 3),
            incomplete=incomplete,
        )

    async def _settle(self) -> int | None:
        """The messages on the subject once the stream's last sequence has not moved for
        SETTLE_S (None: no answer for STALL_S)."""
        assert self._nc is not None
        js = self._nc.jetstream(timeout=API_TIMEOUT_S)
        answers = StallClock(STALL_S)
        asked = 0
        last: tuple[int, int] | None = None
        unmoved_since = time.monotonic()
        while True:
            info = await answered(js.stream_info(self.stream))
            if info is not None:
                asked += 1
                now = (info.state.last_seq, info.state.messages)
                if now != last:
                    last, unmoved_since = now, time.monotonic()
                elif time.monotonic() - unmoved_since >= SETTLE_S:
                    return now[1]
            if not answers.moving(asked):
                return None
            await asyncio.sleep(SETTLE_LOOK_S)

    async def _pull(self, got: dict[int, bytes], messages: int) -> str | None:
        """Reads the subject's messages into `got` (by stream sequence) until it holds
        `messages` of them; returns why it stopped short (None: it did not)."""
        import nats.errors  # noqa: PLC0415  (the optional 'demo' extra)
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy  # noqa: PLC0415

        assert self._nc is not None
        js = self._nc.jetstream(timeout=API_TIMEOUT_S)
        sub = await js.pull_subscribe(
            self.subject,
            stream=self.stream,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        )
        progress = StallClock(STALL_S)
        try:
            while len(got) < messages:
                if not progress.moving(len(got)):
                    return (
                        f"the read-back of stream {self.stream} got nothing new for "
                        f"{STALL_S:g} s with {messages - len(got):,} of its {messages:,} "
                        "messages not read"
                    )
                try:
                    msgs = await sub.fetch(READ_BATCH, timeout=READ_PULL_S)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                for msg in msgs:
                    got.setdefault(msg.metadata.sequence.stream, msg.data)
            return None
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
