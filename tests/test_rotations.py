"""Which files count as rotations of a followed file, and in which order they are read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shovel.rotations import newer_than, rotation_tag, rotations, rotations_of_all


@pytest.mark.parametrize(
    ("name", "base", "tag", "compressed"),
    [
        ("app.log.1", "app.log", "1", False),
        ("app.log.2.gz", "app.log", "2", True),
        ("app.log-20261202", "app.log", "20261202", False),
        ("app.log.20261202", "app.log", "20261202", False),
        ("app.log_2026-12-02T10:15", "app.log", "2026-12-02T10:15", False),
        ("app.1.log", "app.log", "1", False),
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
     "app.logx", "xapp.log.1", "app.log..1x", "app.log.old"],
)  # fmt: skip
def test_other_names_are_not_rotations(name: str) -> None:
    assert rotation_tag(name, "app.log") is None


def _touch(path: Path, mtime_s: int, data: bytes = b"x\n") -> None:
    path.write_bytes(data)
    os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))


def test_newer_rotations_oldest_first_and_ties_by_counter_or_date(tmp_path: Path) -> None:
    live = tmp_path / "app.log"
    _touch(live, 100)
    _touch(tmp_path / "app.log.4", 10)  # older than the file read last: not read again
    _touch(tmp_path / "app.log.3", 20)  # the file read last (excluded by its inode)
    _touch(tmp_path / "app.log.2", 30)
    _touch(tmp_path / "app.log.1", 30)  # the same tick: the counter says it is newer
    _touch(tmp_path / "app.log-20261203", 40)
    _touch(tmp_path / "app.log-20261202", 40)
    _touch(tmp_path / "unrelated.log", 50)
    found = rotations(str(live))
    last = next(r for r in found if r.path.endswith(".3"))
    newer = newer_than(found, last.st.st_mtime_ns, {last.inode})
    assert [os.path.basename(r.path) for r in newer] == [
        "app.log.2",
        "app.log.1",
        "app.log-20261202",
        "app.log-20261203",
    ]


def test_rotations_are_looked_for_where_links_lead(tmp_path: Path) -> None:
    pods = tmp_path / "pods"
    pods.mkdir()
    _touch(pods / "0.log", 10)
    _touch(pods / "0.log.20261202", 5)
    _touch(tmp_path / "0.log.1", 5)  # beside the link, not beside the file: not a rotation
    found = rotations_of_all([str(pods / "0.log"), str(pods / "0.log")])
    assert [r.path for r in found] == [str(pods / "0.log.20261202")]
