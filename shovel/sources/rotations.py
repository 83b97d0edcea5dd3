"""The files a followed file was rotated into: which names count as its rotations, and which of
them hold lines shovel has not read.

A followed file is the path the user names plus the files rotated away from it. Where it really
lives is where the name resolves to (a chain of symbolic links, as Kubernetes' `/var/log/
containers/*.log -> /var/log/pods/...` is, ends in the directory its rotations are made in),
so every search here is given the resolved path of the live file, never the name as typed.

Names. A rotation of `NAME` sits in NAME's directory and is named `NAME`, a separator (`.`,
`-` or `_`) and a rotation tag: a number or a date and time, digits first and last
(`app.log.1`, `app.log-20261202`, `app.log.20261202-101500`, `app.log.2026-12-02_10:15`); or,
for `STEM.EXT`, `STEM.N.EXT` (a counter) or `STEM`, a separator and a date (`app.1.log`,
`app-2026-12-02.log`). `STEM-N.EXT` is not one: tools name live files so (`worker-1.log` beside
`worker.log`). Any of them may end in a compression suffix (`app.log.2.gz`): shovel cannot read
those, and says so. Other files in the directory (`app-error.log`, `app.log.bak`, `other.log`),
however alike their content, are not rotations: a run never takes another file's lines for the
followed file's.

A link pointed at another file (Kubernetes points `containers/x.log` at `N.log` for the N-th
start of a container, cronolog at `access_log.DATE`): when the two names differ only in one
number, the files named alike with a number in between are files the link led to meanwhile.

Order. The rotations that hold lines not read are those born after the file shovel read last,
in the order they were born: a rotated file is made (renamed away or copied) before the next
one, and its birth time, unlike its modification time, does not move when a writer that has not
reopened yet writes to it late. Where the filesystem keeps no birth time, modification times
stand in. A compressed file is born when it is compressed, so whether it holds unread lines is
told by its tag, newer than the tag of the file read last (when both are counters, or dates
written alike), or else by its modification time, later than the birth of the file read last
(gzip keeps the original's; a compressor that does not can make a file read whole look
unread: said, never lost).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from shovel._native import birth_time_ns

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
# A rotation tag: a number, or a date and time, digits first and last.
_TAG = re.compile(r"[0-9](?:[0-9._:T-]*[0-9])?")
# A tag of at most this many digits is a counter (logrotate's, a RotatingFileHandler's); one of
# more, or with separators, is a date.
_COUNTER_DIGITS = 5
# Runs of digits, and what lies between them.
_RUNS = re.compile(r"([0-9]+)")


@dataclass(frozen=True, slots=True)
class Mark:
    """When a file was born and last modified (nanoseconds since the epoch; born is None where
    the filesystem does not say), and its rotation tag if it has one: what tells the files made
    after it."""

    born_ns: int | None
    mtime_ns: int
    tag: str = ""


@dataclass(frozen=True, slots=True)
class Rotated:
    """A file that may hold lines of the followed file: a rotation, or a file a link led to."""

    path: str
    st: os.stat_result
    # Named as compressed: shovel cannot read its lines.
    compressed: bool
    # What its name adds to the live file's ("1", "20261202"; "" when it is not named so).
    tag: str = ""
    # When it was born; None where the filesystem does not say.
    born_ns: int | None = None

    @property
    def inode(self) -> tuple[int, int]:
        """(device, inode)."""
        return self.st.st_dev, self.st.st_ino

    @property
    def mark(self) -> Mark:
        """When it was born and last modified, and its tag."""
        return Mark(self.born_ns, self.st.st_mtime_ns, self.tag)

    @property
    def age_order(self) -> tuple[int, int, str, str]:
        """A sort key that puts files of the same moment oldest first: a counter counts up
        with age (`app.log.2` is older than `app.log.1`), a date counts down."""
        kind, counter, date = _tag_age(self.tag) if self.tag else (2, 0, "")
        return kind, counter, date, self.path


def _tag_age(tag: str) -> tuple[int, int, str]:
    """A tag's place in time, oldest first: counters count up with age, dates down."""
    if tag.isdigit() and len(tag) <= _COUNTER_DIGITS:
        return 0, -int(tag), ""
    return 1, 0, tag


def newer_by_tag(tag: str, than: str) -> bool | None:
    """Whether rotation tag `tag` is newer than `than`; None when the two cannot be compared
    (not both counters, nor two dates written alike)."""
    a, b = _tag_age(tag), _tag_age(than)
    if not tag or not than or a[0] != b[0]:
        return None
    if a[0] == 1 and [c.isdigit() for c in tag] != [c.isdigit() for c in than]:
        return None
    return a > b


def _compression(name: str) -> str:
    lower = name.lower()
    return next((s for s in COMPRESSED_SUFFIXES if lower.endswith(s)), "")


def _is_date(tag: str) -> bool:
    return sum(c.isdigit() for c in tag) > _COUNTER_DIGITS


def rotation_tag(name: str, base: str) -> tuple[str, bool] | None:
    """When a file called `name` is named as a rotation of `base` (both bare names), its tag
    and whether it is named as compressed; else None."""
    suffix = _compression(name)
    plain = name[: len(name) - len(suffix)] if suffix else name
    for sep in SEPARATORS:
        tag = plain[len(base) + 1 :]
        if plain.startswith(base + sep) and _TAG.fullmatch(tag):
            return tag, bool(suffix)
    stem, ext = os.path.splitext(base)
    if stem and ext and plain.endswith(ext):
        middle = plain[: len(plain) - len(ext)]
        for sep in SEPARATORS:
            tag = middle[len(stem) + 1 :]
            if (
                middle.startswith(stem + sep)
                and _TAG.fullmatch(tag)
                and (_is_date(tag) or (sep == "." and tag.isdigit()))
            ):
                return tag, bool(suffix)
    return None


def is_rotation_name(name: str, base: str) -> bool:
    """Whether a file called `name` is named as a rotation of `base` (both bare names)."""
    return rotation_tag(name, base) is not None


def regular_file(path: str, tag: str = "", compressed: bool = False) -> Rotated | None:
    """The regular file at `path` (not followed if a link), or None. Blocking."""
    try:
        st = os.stat(path, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return None
        born = birth_time_ns(path)
    except OSError:
        return None
    return Rotated(path, st, compressed=compressed, tag=tag, born_ns=born)


def _listing(directory: str) -> list[str]:
    try:
        return os.listdir(directory or ".")
    except OSError as e:
        log.warning("cannot list %s to look for rotated files: %s", directory, e.strerror)
        return []


def rotations(live: str) -> list[Rotated]:
    """The regular files beside `live` (the resolved path of the followed file) named as its
    rotations; blocking. A directory that cannot be listed gives none, with a WARNING."""
    directory, base = os.path.split(live)
    found = []
    for name in _listing(directory):
        tagged = rotation_tag(name, base)
        if tagged is not None:
            r = regular_file(os.path.join(directory, name), *tagged)
            if r is not None:
                found.append(r)
    return found


def between(old: str, new: str) -> list[str] | None:
    """The files a link led to between `old` and `new` (resolved paths): in the same directory,
    named as both are but for one number, which lies between theirs, in the order of that
    number. None when the two names do not differ so (nothing can be said of what lay between);
    [] when they are the same file name. Blocking."""
    directory, old_name = os.path.split(old)
    new_dir, new_name = os.path.split(new)
    if old_name == new_name and directory == new_dir:
        return []
    old_runs, new_runs = _RUNS.split(old_name), _RUNS.split(new_name)
    differ = [i for i, (a, b) in enumerate(zip(old_runs, new_runs, strict=False)) if a != b]
    if directory != new_dir or len(old_runs) != len(new_runs) or len(differ) != 1:
        return None
    at = differ[0]
    if at % 2 == 0:  # the differing part is not a number
        return None
    low, high = sorted((int(old_runs[at]), int(new_runs[at])))
    found = []
    for name in _listing(directory):
        runs = _RUNS.split(name)
        if (
            len(runs) == len(old_runs)
            and all(r == o for i, (r, o) in enumerate(zip(runs, old_runs, strict=True)) if i != at)
            and low < int(runs[at]) < high
        ):
            found.append((int(runs[at]), os.path.join(directory, name)))
    return [path for _, path in sorted(found)]


def candidates(lives: list[str]) -> list[Rotated]:
    """Every file that may hold lines of the followed file, given the resolved paths it led to
    (`lives`, oldest first): the rotations of each, and the files a link led to between two of
    them, with their rotations; each file once. Blocking."""
    lives = list(dict.fromkeys(lives))
    led_to: list[str] = []
    for old, new in itertools.pairwise(lives):
        led_to += between(old, new) or []
    seen: set[tuple[int, int]] = set()
    found = []
    for r in [
        *(r for r in (regular_file(p, "", compressed=False) for p in led_to) if r is not None),
        *(r for live in [*lives, *led_to] for r in rotations(live)),
    ]:
        if r.inode not in seen:
            seen.add(r.inode)
            found.append(r)
    return found


def unread(
    found: list[Rotated], after: Mark, exclude: set[tuple[int, int]]
) -> tuple[list[Rotated], list[Rotated]]:
    """Of `found`, other than the files `exclude`: those made after the file marked `after`
    (born after it, or where birth times are missing, modified at or after it), oldest first;
    and apart, those named as compressed that were written after it was born."""
    readable, compressed = [], []
    for r in found:
        if r.inode in exclude:
            continue
        if r.compressed:
            # Its birth is when it was compressed; its tag, or else its modification time
            # (which some compressors keep, others do not), says when its lines were written.
            newer = newer_by_tag(r.tag, after.tag)
            since = after.born_ns if after.born_ns is not None else after.mtime_ns
            if newer or (newer is None and r.st.st_mtime_ns > since):
                compressed.append(r)
        elif r.born_ns is not None and after.born_ns is not None:
            if r.born_ns > after.born_ns:
                readable.append(r)
        elif r.st.st_mtime_ns >= after.mtime_ns:
            readable.append(r)
    readable.sort(key=lambda r: (r.born_ns or r.st.st_mtime_ns, r.age_order))
    compressed.sort(key=lambda r: (r.st.st_mtime_ns, r.age_order))
    return readable, compressed


def resolved(path: Path | str) -> str:
    """Where `path` leads through its symbolic links now (the path itself when it leads
    nowhere: a dangling link resolves as far as it goes)."""
    return os.path.realpath(path)


__all__ = [
    "COMPRESSED_SUFFIXES",
    "Mark",
    "Rotated",
    "between",
    "candidates",
    "is_rotation_name",
    "newer_by_tag",
    "regular_file",
    "resolved",
    "rotation_tag",
    "rotations",
    "unread",
]
