"""Which files count as rotations of a followed file, and in which order they are read."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from shovel.sources.rotations import (
    Mark,
    Rotated,
    between,
    candidates,
    rotation_tag,
    rotations,
    unread,
)


@pytest.mark.parametrize(
    ("name", "base", "tag", "compressed"),
    [
        ("app.log.1", "app.log", "1", False),
        ("app.log.2.gz", "app.log", "2", True),
        ("app.log-20261202", "app.log", "20261202", False),
        ("app.log.20261202", "app.log", "20261202", False),
        ("app.log_2026-12-02T10:15", "app.log", "2026-12-02T10:15", False),
        ("app.1.log", "app.log", "1", False),
        ("app.2026-12-02.0.log", "app.log", "2026-12-02.0", False),
        ("app-2026-12-02.log", "app.log", "2026-12-02", False),
        ("app-2026-12-02.log.xz", "app.log", "2026-12-02", True),
        ("0.log.20261202-101500", "0.log", "20261202-101500", False),
        ("0.log.20261202-101500.gz", "0.log", "20261202-101500", True),
        ("x-json.log.3", "x-json.log", "3", False),
    ],
)
def test_rotation_names(name: str, base: str, tag: str, compressed: bool) -> None:
    assert rotation_tag(name, base) == (tag, compressed)


@pytest.mark.parametrize(
    "name",
    ["app.log", "other.log", "app-error.log", "app.log.bak", "app.log.", "app.log.1.bak",
     "app.logx", "xapp.log.1", "app.log..1x", "app.log.old", "app-2.log", "app_1.log",
     "app.log.1-", "app.log.1:", "app.log.gz.tmp"],
)  # fmt: skip
def test_other_names_are_not_rotations(name: str) -> None:
    assert rotation_tag(name, "app.log") is None


def _touch(path: Path, mtime_s: int, data: bytes = b"x\n") -> None:
    path.write_bytes(data)
    os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))


def _names(found: list[Rotated]) -> list[str]:
    return [os.path.basename(r.path) for r in found]


def test_without_birth_times_rotations_come_in_order_of_modification_ties_by_counter_or_date(
    tmp_path: Path,
) -> None:
    live = tmp_path / "app.log"
    _touch(live, 100)
    _touch(tmp_path / "app.log.4", 10)  # older than the file read last: not read again
    _touch(tmp_path / "app.log.3", 20)  # the file read last (excluded by its inode)
    _touch(tmp_path / "app.log.2", 30)
    _touch(tmp_path / "app.log.1", 30)  # the same tick: the counter says it is newer
    _touch(tmp_path / "app.log-20261203", 40)
    _touch(tmp_path / "app.log-20261202", 40)
    _touch(tmp_path / "unrelated.log", 50)
    found = [replace(r, born_ns=None) for r in rotations(str(live))]
    last = next(r for r in found if r.path.endswith(".3"))
    later, compressed = unread(found, Mark(None, last.st.st_mtime_ns), {last.inode})
    assert _names(later) == ["app.log.2", "app.log.1", "app.log-20261202", "app.log-20261203"]
    assert compressed == []


def test_birth_times_order_rotations_whatever_a_late_write_did(tmp_path: Path) -> None:
    live = tmp_path / "app.log"
    born = {"app.log.3": 10, "app.log.2": 20, "app.log.1": 30}
    for name in born:
        _touch(tmp_path / name, 0)
    _touch(live, 0)
    found = [replace(r, born_ns=born[os.path.basename(r.path)]) for r in rotations(str(live))]
    # app.log.3 was written to late (its modification time is the newest): it was still made
    # first, and is not read again after the file read last (app.log.2).
    os.utime(tmp_path / "app.log.3", ns=(99 * 10**9, 99 * 10**9))
    last = next(r for r in found if r.path.endswith(".2"))
    later, _ = unread(found, last.mark, {last.inode})
    assert _names(later) == ["app.log.1"]


def test_a_compressed_rotation_counts_as_unread_only_when_written_after_the_last_was_made(
    tmp_path: Path,
) -> None:
    live = tmp_path / "0.log"
    _touch(live, 100)
    _touch(tmp_path / "0.log.20261201-000000.gz", 40)  # compressed after it was read whole
    _touch(tmp_path / "0.log.20261202-000000.gz", 60)  # written after the last was made
    found = rotations(str(live))
    later, compressed = unread(found, Mark(50 * 10**9, 55 * 10**9), set())
    assert later == []
    assert _names(compressed) == ["0.log.20261202-000000.gz"]


def test_files_a_link_led_to_in_between(tmp_path: Path) -> None:
    for name in ("0.log", "1.log", "2.log", "3.log", "1.log.20261202", "x.log", "10.log"):
        _touch(tmp_path / name, 10)
    assert between(str(tmp_path / "0.log"), str(tmp_path / "3.log")) == [
        str(tmp_path / "1.log"),
        str(tmp_path / "2.log"),
    ]
    assert between(str(tmp_path / "0.log"), str(tmp_path / "0.log")) == []
    assert between(str(tmp_path / "0.log"), str(tmp_path / "x.log")) is None
    names = _names(candidates([str(tmp_path / "0.log"), str(tmp_path / "3.log")]))
    assert sorted(names) == ["1.log", "1.log.20261202", "2.log"]


def test_rotations_are_looked_for_where_links_lead(tmp_path: Path) -> None:
    pods = tmp_path / "pods"
    pods.mkdir()
    _touch(pods / "0.log", 10)
    _touch(pods / "0.log.20261202", 5)
    _touch(tmp_path / "0.log.1", 5)  # beside the link, not beside the file: not a rotation
    found = candidates([str(pods / "0.log"), str(pods / "0.log")])
    assert [r.path for r in found] == [str(pods / "0.log.20261202")]
