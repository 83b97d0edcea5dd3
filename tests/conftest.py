"""Fixtures: inputs that several tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_input


@pytest.fixture(scope="session")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """About 48 MB of varied records: large enough to be stopped mid-way."""
    path = tmp_path_factory.mktemp("input") / "big.txt"
    return path, write_input(path, 500_000)
