"""`read_checkpoint`: the native module's reader of an output directory's checkpoint."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from shovel._native import (
    Checkpoint,
    CorruptStoreError,
    StorageClient,
    StorageIOError,
    read_checkpoint,
)

SOURCE = '{"kind":"test","name":"a b"}'


def store_two_records(out: Path) -> None:
    """Stores two records (5 bytes, read up to source offset 10) and closes the client."""
    client = StorageClient(
        out,
        segment_max_bytes=1 << 20,
        fsync_interval_ms=5,
        fsync_max_bytes=1 << 20,
        max_inflight_bytes=1 << 20,
    )
    assert client.submit(b"a\nbb\n", 2, 10, source=SOURCE) is not None
    client.close(30)


def test_no_checkpoint_reads_as_none(tmp_path: Path) -> None:
    assert read_checkpoint(tmp_path) is None
    assert read_checkpoint(tmp_path / "missing") is None


def test_a_checkpoint_reads_as_its_fields(tmp_path: Path) -> None:
    store_two_records(tmp_path)
    # A str as well as a Path (the other tests pass a Path).
    cp = read_checkpoint(str(tmp_path))
    assert isinstance(cp, Checkpoint)
    assert (cp.committed_offset, cp.records, cp.bytes) == (10, 2, 5)
    assert (cp.segment, cp.segment_len, cp.source) == (0, 5, SOURCE)
    assert repr(cp).startswith("Checkpoint(committed_offset=10, records=2, bytes=5,")
    with pytest.raises(AttributeError):
        cp.records = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("damage", "detail"),
    [
        (lambda text: b"", "the file is empty"),
        (lambda text: b"\0\0garbage\n", "no crc32 line"),
        (lambda text: text.replace(b"committed_offset 10", b"committed_offset 11"), "crc32"),
    ],
    ids=["empty", "garbage", "changed"],
)
def test_a_damaged_checkpoint_raises_corrupt_store_error(
    tmp_path: Path, damage: Callable[[bytes], bytes], detail: str
) -> None:
    store_two_records(tmp_path)
    path = tmp_path / "checkpoint"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptStoreError, match=detail) as err:
        read_checkpoint(tmp_path)
    assert str(path) in str(err.value)


def test_an_unreadable_checkpoint_raises_storage_io_error(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").mkdir()
    with pytest.raises(StorageIOError) as err:
        read_checkpoint(tmp_path)
    assert err.value.errno == errno.EISDIR
    assert err.value.filename == tmp_path / "checkpoint"
