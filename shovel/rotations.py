"""The files a followed file was rotated into: which names count as its rotations, and which of
them hold lines shovel has not read.

A followed file is the path the user names plus the files rotated away from it. Where it really
lives is where the name resolves to (a chain of symbolic links, as Kubernetes' `/var/log/
containers/*.log -> /var/log/pods/...` is, ends in the directory its rotations are made in),
so every search here is given the resolved path of the live file, never the name as typed.

A rotation of `NAME` sits in NAME's directory and is named `NAME`, a separator (`.`, `-` or
`_`) and a rotation tag: a number or a date and time, digits first (`app.log.1`,
`app.log-20261202`, `app.log.20261202-101500`, `app.log.2026-12-02_10:15`); or, for
`STEM.EXT`, `STEM`, a separator, a tag and `.EXT` (`app.1.log`, `app-2026-12-02.log`). Either
may end in a compression suffix (`app.log.2.gz`): shovel cannot read those, and says so. Any
other file in the directory (`app-error.log`, `app.log.bak`, `other.log`), however alike its
content, is not one: a run never takes another file's lines for the followed file's.

Rotations that hold lines not read are those made after the file shovel read last: newer
(by modification time) than it. Rename rotation and copy + truncate both give each rotated
file the time of the last write to it, so their order is the order in which they were written.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# What separates a rotated file's name from the name it was rotated from.
SEPARATORS = (".", "-", "_")
# Suffixes of compressed files (logrotate's `compress`, kubelet's, and the usual others).
COMPRESSED_SUFFIXES = (
    ".gz",
    ".bz2",
    ".xz",
    ".zst",
    ".lz4",
    ".lzma",
    ".lzo",
    ".z",
    ".zip",
    ".br",
)
# A rotation tag: a number, or a date and time, digits first.
_TAG = re.compile(r"[0-9][0-9._:T-]*")
# A tag of at most this many digits is a counter (logrotate's, a RotatingFileHandler's), not a
# date.
_COUNTER_DIGITS = 5


@dataclass(frozen=True, slots=True)
class Rotated:
    """A file in the live file's directory named as one of its rotations."""

    path: str
    st: os.stat_result
    # Named as compressed: shovel cannot read its lines.
    compressed: bool
    # What its name adds to the live file's ("1", "20261202"; "" when it is not named so).
    tag: str = ""

    @property
    def age_order(self) -> tuple[int, int, str]:
        """A sort key that puts rotations made at the same moment oldest first: a counter
        counts up with age (`app.log.2` is older than `app.log.1`), a date counts down."""
        if self.tag.isdigit() and len(self.tag) <= _COUNTER_DIGITS:
            return 0, -int(self.tag), self.path
        return 1, 0, self.tag or self.path

    @property
    def inode(self) -> tuple[int, int]:
        """(device, inode)."""
        return self.st.st_dev, self.st.st_ino


def _compression(name: str) -> str:
    lower = name.lower()
    return next((s for s in COMPRESSED_SUFFIXES if lower.endswith(s)), "")


def rotation_tag(name: str, base: str) -> tuple[str, bool] | None:
    """When a file called `name` is named as a rotation of `base` (both bare names), its tag
    and whether it is named as compressed; else None."""
    suffix = _compression(name)
    plain = name[: len(name) - len(suffix)] if suffix else name
    stem, ext = os.path.splitext(base)
    forms = [(base, plain)]
    if stem and ext and plain.endswith(ext):
        forms.append((stem, plain[: len(plain) - len(ext)]))
    for head, rest in forms:
        for sep in SEPARATORS:
            tag = rest[len(head) + 1 :]
            if rest.startswith(head + sep) and _TAG.fullmatch(tag):
                return tag, bool(suffix)
    return None


def is_rotation_name(name: str, base: str) -> bool:
    """Whether a file called `name` is named as a rotation of `base` (both bare names)."""
    return rotation_tag(name, base) is not None


def rotations(live: str) -> list[Rotated]:
    """The regular files beside `live` (the resolved path of the followed file) named as its
    rotations; blocking. A directory that cannot be listed gives none, with a WARNING."""
    directory, base = os.path.split(live)
    try:
        entries = list(os.scandir(directory or "."))
    except OSError as e:
        log.warning("cannot list %s to look for rotated files: %s", directory, e.strerror)
        return []
    found = []
    for entry in entries:
        tagged = rotation_tag(entry.name, base)
        if tagged is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.append(Rotated(entry.path, st, compressed=tagged[1], tag=tagged[0]))
    return found


def rotations_of_all(lives: list[str]) -> list[Rotated]:
    """`rotations` of each path in `lives` (the same file may have lived in several places
    through links), each file once."""
    seen: set[tuple[int, int]] = set()
    found = []
    for live in dict.fromkeys(lives):
        for r in rotations(live):
            if r.inode not in seen:
                seen.add(r.inode)
                found.append(r)
    return found


def newer_than(found: list[Rotated], after_ns: int, exclude: set[tuple[int, int]]) -> list[Rotated]:
    """The files of `found` modified at or after `after_ns` (nanoseconds since the epoch),
    other than those in `exclude`, oldest first: the rotations made since a file whose last
    write was at `after_ns`. The clock files are stamped with ticks in steps of milliseconds,
    so a file written just after another may bear its very time: such a file is taken (a
    missed file loses its lines), and the file itself is in `exclude`."""
    newer = [r for r in found if r.st.st_mtime_ns >= after_ns and r.inode not in exclude]
    return sorted(newer, key=lambda r: (r.st.st_mtime_ns, r.age_order))


def resolved(path: Path | str) -> str:
    """Where `path` leads through its symbolic links now (the path itself when it leads
    nowhere: a dangling link resolves as far as it goes)."""
    return os.path.realpath(path)


def describe(path: str, named: str) -> str:
    """`path` for a message, with the name the user gave when that is another (a link)."""
    return path if path == named else f"{path} (through {named})"


__all__ = [
    "COMPRESSED_SUFFIXES",
    "Rotated",
    "describe",
    "is_rotation_name",
    "newer_than",
    "resolved",
    "rotation_tag",
    "rotations",
    "rotations_of_all",
]
