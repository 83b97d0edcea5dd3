"""Fixtures that several test modules share (inputs, an in-process metrics server), and each
test's layer marker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shovel.demo.natsserver import HOW_TO_GET, DemoNatsServer, find_binary
from shovel.service.metrics import Metrics, MetricsServer
from tests.helpers import write_input

TESTS = Path(__file__).parent
# The folders under tests/ that hold test modules, each the name of its marker.
LAYERS = ("unit", "process")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks each test with its layer, the folder it is in, so `-m unit` and `-m process` work."""
    for item in items:
        try:
            layer = item.path.relative_to(TESTS).parts[0]
        except ValueError:  # a test from outside tests/
            continue
        if layer not in LAYERS:
            raise pytest.UsageError(
                f"{item.nodeid}: a test module belongs in tests/unit or tests/process"
            )
        item.add_marker(layer)


@pytest.fixture(scope="session")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """About 48 MB of varied records: large enough to be stopped mid-way."""
    path = tmp_path_factory.mktemp("input") / "big.txt"
    return path, write_input(path, 500_000)


@pytest.fixture
def served() -> Iterator[tuple[Metrics, int]]:
    """shovel's metrics server, in-process on a free port: its Metrics and the port."""
    metrics = Metrics()
    server = MetricsServer(metrics, "127.0.0.1", 0)
    server.start()
    try:
        yield metrics, server.port
    finally:
        server.stop()


@pytest.fixture(scope="session")
def demo_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo's NATS server (HOST:PORT), for the tests of what the demo does with a stream."""
    binary = find_binary()
    if binary is None:
        pytest.skip(HOW_TO_GET)
    server = DemoNatsServer(binary, tmp_path_factory.mktemp("nats"))
    try:
        yield server.url
    finally:
        server.stop()
