"""A regular file as a source: resumed only when it is the same file, and, with --follow, read
as it grows, through rotations, indefinitely.

A followed file is the path the user names and the files rotated away from it: a run following
another path on the same output directory is refused, whatever its content. (Without --follow,
the file itself is the source: the same inode with the same first bytes, under any name.)

Identity: every batch carries the file's device, inode and a fingerprint of its first bytes
(see identity.py); the checkpoint keeps that of the last durable batch. At start the file must
be the same one, at least as long as what was stored from it; otherwise shovel refuses, or,
when following, looks for the old file among the rotations of the followed file (see
rotations.py: where its links lead, named as its rotations), reads its unread tail first, then
every rotation made after it, oldest first, then the new file from its start.

Following (like `tail -F`), checked every poll interval at the end of the file:
- the file grew: read on;
- the name now leads to another file, or to none (rename + create, replacement, deletion, a
  link pointed elsewhere): the old file, still open, is read until it has been quiet for
  `rotated_quiet_s` (a writer may still hold it), then finished; the rotations made after it,
  if any, are read in order, then the new file from its start;
- the file shrank below the read position, or its first bytes changed (copy + truncate; the
  first bytes are also checked after every read, so that new content written past the old
  position between two looks is not taken for the old file's rest): the rest of the old
  content is read from the copy if one is found among its rotations, then the new content from
  the start. Lines written between the copy and the truncate are lost: that
  is how copytruncate works, and it is logged.
A rotation that cannot be read (compressed, unreadable) and a file stored from that is gone
are each a WARNING naming it, and counted (`skipped` in FileProgress).

When a file is finished (the end of a finite run, or a rotated file) an unterminated last line
is stored as a record with a newline, and the checkpoint says so (`open_line`): if that file
later continues that line, the continuation, up to its newline, is set apart in rejected/
(with a WARNING) rather than stored as a record of its own, and reading goes on (a
continuation that starts with the newline is simply skipped). While following, an unterminated
line is not a record yet.

Pseudo filesystems (procfs, sysfs, ...) report sizes that are not their files' and make their
content up at each read: a path there is never followed (path.py), and is read without
--follow as a stream.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from shovel._native import Chunk, ReadFile
from shovel._threads import off_loop
from shovel.batches import Batch, Piece
from shovel.sources.api import FollowConfig, Source, SourceError, SourceMismatch, stored_origin
from shovel.sources.identity import (
    FINGERPRINT_MAX_BYTES,
    FileOrigin,
    encode,
    fingerprint,
    read_head,
)
from shovel.sources.records import RecordSplitter
from shovel.sources.rotations import (
    Mark,
    Rotated,
    between,
    candidates,
    is_rotation_name,
    regular_file,
    resolved,
    rotation_tag,
    unread,
)

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class FileProgress:
    """What metrics show of a file source; replaced whole, so another thread reads it safely."""

    path: str
    size: int
    position: int
    rotations: int
    # Files whose unread lines could not be read (compressed, unreadable, gone).
    skipped: int = 0


_NEW_DIR_HINT = "to store this file from its start, use a new --output-dir"
# How often a followed name that leads nowhere is said to, at WARNING.
STILL_ABSENT_EVERY_S = 60.0
# How many files finished in this run are remembered, so that none is read twice as a rotation.
_FINISHED_KEPT = 64
# How many times a planned file renamed under shovel (a numbered rotation's turn) is looked for
# again before giving up.
_RELOCATE_TRIES = 5


@dataclass(frozen=True, slots=True)
class _Step:
    """A file to read, from `pos`, whose byte 0 is at stream position `base` (None: wherever
    the stream is when it is opened)."""

    path: str
    pos: int
    base: int | None
    # An old file (rotated away): finish it at its end, then go on with the next one.
    retired: bool
    # (dev, ino) expected when it is opened; None to take whatever the name holds then.
    expect: tuple[int, int] | None
    # The stored stream ends with this file's unterminated last line, completed by shovel.
    open_line: bool = False
    # A rotated file with a newer rotation after it: its writer has moved on, so it is finished
    # at its end without waiting for it to be quiet.
    settled: bool = False
    # For a rotated file: the resolved path of the live file it was rotated from.
    live: str = ""


class _Gone:
    """A file planned was gone when its turn came (skipped, with a WARNING)."""


_GONE = _Gone()


@dataclass(frozen=True, slots=True)
class _Finished:
    """The file finished last: what tells the files made after it."""

    inode: tuple[int, int]
    mark: Mark
    # The resolved path of the live file it is or was.
    live: str


@dataclass(slots=True)
class _Plan:
    """Where reading starts, decided by `resume`."""

    committed_offset: int
    steps: deque[_Step]


class _Open:
    """One open file being read."""

    def __init__(
        self,
        number: int,
        step: _Step,
        *,
        real: str,
        base: int,
        file: ReadFile,
        st: os.stat_result,
        head: bytes,
        born_ns: int | None,
    ) -> None:
        self.number = number
        # Its path as found (links resolved), and that of the live file it is or was.
        self.path = real
        self.live = step.live or real
        self.file = file
        self.dev, self.ino = st.st_dev, st.st_ino
        self.mtime_ns = st.st_mtime_ns
        self.born_ns = born_ns
        self.base = base
        self.read_pos = step.pos
        self.size = st.st_size
        self.head = head
        self.retired = step.retired
        self.settled = step.settled
        self.open_line = step.open_line
        # Loop time when the name was first seen to point elsewhere, and of the last growth.
        self.rotated_at: float | None = None
        self.grew_at = 0.0

    def origin(self, name: str, end_offset: int, open_line: bool) -> FileOrigin:
        fp_len = min(FINGERPRINT_MAX_BYTES, end_offset - self.base)
        return FileOrigin(
            path=self.path,
            dev=self.dev,
            ino=self.ino,
            fp_len=fp_len,
            fp=fingerprint(self.head[:fp_len]),
            base=self.base,
            open_line=open_line,
            name=name,
            target=self.live,
            mtime_ns=self.mtime_ns,
            born_ns=self.born_ns or 0,
        )


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _find_stored(
    origin: FileOrigin, min_size: int, lives: list[str], exclude: tuple[int, int] | None
) -> Rotated | None:
    """`origin`'s file, at least `min_size` bytes with its fingerprint: where it was read, if it
    is still there, else among the files that may hold the followed file's lines (`lives`: see
    rotations.candidates); the same inode first (a rename), else the newest (a copy). Never the
    file `exclude` (the live one). Blocking."""
    found: list[tuple[bool, int, Rotated]] = []
    at_path = regular_file(origin.path)
    for r in [*([at_path] if at_path else []), *candidates(lives)]:
        if r.compressed or r.inode == exclude or r.st.st_size < min_size:
            continue
        try:
            head = read_head(r.path)
        except OSError:
            continue
        if origin.matches_head(head):
            found.append((origin.same_inode(r.st), r.st.st_mtime_ns, r))
    if not found:
        return None
    return max(found, key=lambda f: (f[0], f[1]))[2]


def _tag_of(path: str, live: str) -> str:
    """The rotation tag of the file at `path`, a rotation of `live` ("" when it is not one)."""
    tagged = rotation_tag(os.path.basename(path), os.path.basename(live))
    return tagged[0] if tagged is not None else ""


def _locate(inode: tuple[int, int], lives: list[str]) -> Rotated | None:
    """Where the file `inode` is now among the files that may hold the followed file's lines
    (a numbered rotation renames every rotated file at each turn). Blocking."""
    return next((r for r in candidates(lives) if r.inode == inode), None)


@dataclass(frozen=True, slots=True)
class _Opened:
    """A file just opened, with what `_open` checks of it."""

    real: str
    file: ReadFile
    st: os.stat_result
    born_ns: int | None
    head: bytes
    # The pseudo filesystem it lives on, if any (asked while following only).
    pseudo: str | None


def _open_file(path: str, live: bool, follow: bool) -> _Opened:
    """Opens `path` (the followed name, `live`: its links resolved first, and, following,
    refused unless it leads to a regular file: a named pipe would block the open). Blocking."""
    real = resolved(path) if live else path
    if live and follow:
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode):
            kind = "a named pipe" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
            raise SourceError(f"{path} now leads to {real}, {kind}: --follow reads regular files")
    file = ReadFile(real)
    try:
        st = os.fstat(file.fileno())
        born = file.birth_time_ns()
        head = os.pread(file.fileno(), FINGERPRINT_MAX_BYTES, 0)
        pseudo = file.pseudo_filesystem() if follow else None
    except BaseException:
        file.close()
        raise
    return _Opened(real, file, st, born, head, pseudo)


def _read_then_head(file: ReadFile, max_bytes: int, known: int) -> tuple[Chunk, bytes]:
    """A chunk from the read position, then the file's first `known` bytes as they are now."""
    chunk = file.read(max_bytes)
    return chunk, os.pread(file.fileno(), known, 0) if known else b""


def _look(fd: int, path: str) -> tuple[int, os.stat_result | None, bytes]:
    """The open file's size, what its name holds now, and its first bytes."""
    return os.fstat(fd).st_size, _stat_or_none(path), os.pread(fd, FINGERPRINT_MAX_BYTES, 0)


class FileSource(Source):
    """A regular file; see the module docs."""

    replayable = True

    def __init__(
        self,
        path: Path,
        chunk_bytes: int,
        max_record_bytes: int,
        follow: FollowConfig | None = None,
    ) -> None:
        # Absolute, so that the checkpoint names the file whatever the working directory;
        # links are kept: the name is what the user follows, wherever it leads.
        self.path = Path(os.path.abspath(path))
        self.chunk_bytes = chunk_bytes
        self.max_record_bytes = max_record_bytes
        self.follow = follow
        self.description = f"file {path}" + (" (following)" if follow else "")
        self.progress: FileProgress | None = None
        self.rotations = 0
        self.skipped = 0
        self._plan: _Plan | None = None
        self._generation = 0
        self._stamped: tuple[int, int, bool] | None = None
        # The files finished in this run, latest last; never read again as rotations.
        self._finished: deque[tuple[int, int]] = deque(maxlen=_FINISHED_KEPT)
        # The file finished last, when the files made after it are still to be looked for.
        self._look_after: _Finished | None = None
        # Files already skipped with a WARNING in this run (said once each).
        self._warned: set[tuple[int, int]] = set()
        # While the followed name leads nowhere: since when, and when that was last said.
        self._absent_since: float | None = None
        self._absent_told = 0.0

    # -- resuming ---------------------------------------------------------------------------

    def cap_record_bytes(self, limit: int) -> None:
        """Lines over `limit` bytes go to rejected/ (a sink's largest message)."""
        self.max_record_bytes = min(self.max_record_bytes, limit)

    def resume(self, committed_offset: int, descriptor: str) -> str:
        path = str(self.path)
        origin = stored_origin(descriptor, FileOrigin, f"the file {path}", _NEW_DIR_HINT)
        if origin is None:
            return self._resume_unnamed(committed_offset)
        self._check_name(origin)
        pos = committed_offset - origin.base
        if pos < 0:
            raise SourceMismatch(
                f"the checkpoint is inconsistent: committed offset {committed_offset} lies "
                f"before the start of its file ({origin.base})"
            )
        st = _stat_or_none(path)
        problem = self._differs(origin, path, st, pos)
        if problem is None:
            assert st is not None
            self._plan = _Plan(
                committed_offset,
                deque([_Step(path, pos, origin.base, False, _inode(st), origin.open_line)]),
            )
            # The start line names the file already: say where in it only when that differs.
            within = f" (byte {pos} of the file)" if pos != committed_offset else ""
            return f"resuming at offset {committed_offset}{within}"
        if self.follow is None:
            raise SourceMismatch(
                f"{path} is not the file this output directory was storing: {problem}; "
                f"{_NEW_DIR_HINT}, or use --follow to read a rotated file"
            )
        return self._resume_rotated(committed_offset, origin, pos, problem, st)

    def _check_name(self, origin: FileOrigin) -> None:
        """Following, refuses a source named otherwise than the one the directory stores.
        (Without --follow the file itself is compared: the same inode with the same first
        bytes is the same file under any name, and anything else is refused.)"""
        if self.follow is None:
            return
        path = str(self.path)
        if origin.name:
            if origin.name == path:
                return
            stored = origin.name
        else:
            # Written before shovel kept the name: `path` is the file read, the followed name
            # itself or (following) one of its rotations beside it, or where its links led.
            if origin.path in (path, resolved(path)):
                return
            same_dir = os.path.dirname(origin.path) == os.path.dirname(path)
            if same_dir and is_rotation_name(os.path.basename(origin.path), self.path.name):
                return
            stored = origin.path
        raise SourceMismatch(
            f"this output directory stores the followed file {stored}, and the source now is "
            f"{path}: a followed file is the path it was named by and the files rotated away "
            f"from it, so another path is never taken for it; name {stored} again to go on, or "
            f"use a new --output-dir for {path}"
        )

    def _resume_rotated(
        self,
        committed_offset: int,
        origin: FileOrigin,
        pos: int,
        problem: str,
        st: os.stat_result | None,
    ) -> str:
        """Following, and the name holds another file than the one stored last: its tail, the
        files made after it (rotations.py), then the file at the name from its start."""
        path = str(self.path)
        lives = self._lives(origin.live)
        live_inode = _inode(st) if st is not None else None
        found = _find_stored(origin, pos, lives, live_inode)
        after: Mark | None
        if found is not None:
            self.rotations += 1
            after = replace(found.mark, tag=_tag_of(found.path, origin.live))
        else:
            self._skip(
                f"the file stored last, {origin.describe()}, is no longer where it was read nor "
                f"among the rotations beside {origin.live} (deleted, or compressed): lines "
                f"written to it after byte {pos}, if any, were not stored"
            )
            after = Mark(origin.born_ns or None, origin.mtime_ns) if origin.mtime_ns else None
        exclude = {i for i in (live_inode, found.inode if found else None) if i is not None}
        if after is not None:
            later = self._readable(*unread(candidates(lives), after, exclude))
        else:
            later = []
            self._unknown_order(lives, exclude)
        steps: deque[_Step] = deque()
        if found is not None:
            steps.append(
                _Step(
                    found.path,
                    pos,
                    origin.base,
                    True,
                    found.inode,
                    origin.open_line,
                    settled=bool(later),
                    live=origin.live,
                )
            )
        steps += self._rotation_steps(later, lives[-1])
        # The file at the name from its start: where the stream is then, or, with nothing of
        # the stored file left to read, right after what was stored.
        steps.append(_Step(path, 0, None if steps else committed_offset, False, None))
        self._plan = _Plan(committed_offset, steps)
        then = "".join(f"{r.path}, " for r in later)
        if found is not None:
            return (
                f"{path} was rotated while shovel was stopped ({problem}): reading the rest of "
                f"{found.path} from byte {pos}, then {then}{path} from its start"
            )
        return f"reading {then}then {path} from its start" if then else "reading from its start"

    def _lives(self, before: str) -> list[str]:
        """Where the followed name led when `before` was taken, and where it leads now; a link
        moved in between in a way that says nothing of what it led to meanwhile is a WARNING."""
        now = resolved(self.path)
        if between(before, now) is None:
            log.warning(
                "%s led to %s and leads to %s now: the files it may have led to in between "
                "cannot be told, and any lines in them were not read",
                self.path,
                before,
                now,
            )
        return [before, now]

    def _unknown_order(self, lives: list[str], exclude: set[tuple[int, int]]) -> None:
        """A checkpoint of an older shovel, whose file is gone: it does not say when that file
        was made, so which rotations came after it cannot be told. Each is named (WARNING)."""
        for r in candidates(lives):
            if r.inode not in exclude:
                self._skip(
                    f"{r.path} may hold lines written after the file stored last (the checkpoint, "
                    "written by an older shovel, does not say when that file was made, and it is "
                    "gone): it was not read"
                )

    def _readable(self, later: list[Rotated], compressed: list[Rotated]) -> list[Rotated]:
        """The files of `later` shovel can read; each other one, and each of `compressed`, is
        skipped with a WARNING (once per file in a run)."""
        for r in compressed:
            if r.inode not in self._warned:
                self._warned.add(r.inode)
                self._skip(
                    f"{r.path} is named as a compressed rotation of {self.path} and was written "
                    "after the file read last was made: shovel cannot read it, and the lines in "
                    "it were not stored"
                )
        readable = []
        for r in later:
            if os.access(r.path, os.R_OK):
                readable.append(r)
            elif r.inode not in self._warned:
                self._warned.add(r.inode)
                self._skip(
                    f"{r.path}, a rotation of {self.path}, cannot be read (permission denied): "
                    "the lines in it were not stored"
                )
        return readable

    def _skip(self, why: str) -> None:
        self.skipped += 1
        log.warning("%s", why)
        if self.progress is not None:
            self.progress = replace(self.progress, skipped=self.skipped)

    @staticmethod
    def _rotation_steps(later: list[Rotated], live: str) -> list[_Step]:
        """Steps reading each of `later` whole; each but the last has a newer file after it, so
        it is finished at its end without waiting."""
        return [
            _Step(r.path, 0, None, True, r.inode, settled=i < len(later) - 1, live=live)
            for i, r in enumerate(later)
        ]

    def _resume_unnamed(self, committed_offset: int) -> str:
        """A new output directory, or one whose checkpoint does not name its source."""
        path = str(self.path)
        self._plan = _Plan(committed_offset, deque([_Step(path, committed_offset, 0, False, None)]))
        if committed_offset == 0:
            return "reading from its start"
        st = _stat_or_none(path)
        size = st.st_size if st is not None else 0
        if size < committed_offset:
            raise SourceMismatch(
                f"{path} holds {size} bytes but the committed offset is {committed_offset}: the "
                f"file was truncated or replaced since the last run ({_NEW_DIR_HINT})"
            )
        log.warning(
            "the checkpoint does not say which file it belongs to (written by an older shovel): "
            "trusting that %s is the same file; its identity is recorded from now on",
            path,
        )
        return f"resuming at offset {committed_offset}"

    @staticmethod
    def _differs(origin: FileOrigin, path: str, st: os.stat_result | None, pos: int) -> str | None:
        """Why the file at `path` (`st`) is not origin's file, or None when it is."""
        if st is None:
            return "it does not exist"
        if not origin.same_inode(st):
            return (
                f"it is another file than the one stored before (inode {st.st_ino}, "
                f"was {origin.ino}): replaced or rotated"
            )
        if st.st_size < pos:
            return (
                f"it holds {st.st_size} bytes but {pos} were already stored from it: it was "
                "truncated"
            )
        try:
            head = read_head(path)
        except OSError as e:
            return f"it cannot be read ({e.strerror})"
        if not origin.matches_head(head):
            return f"its first {origin.fp_len} bytes are not the ones stored: it was rewritten"
        return None

    # -- reading ----------------------------------------------------------------------------

    async def pieces(self, start_offset: int) -> AsyncGenerator[Piece, None]:
        plan = self._plan
        if plan is None or plan.committed_offset != start_offset:
            raise RuntimeError("FileSource.resume() must be called with the same offset first")
        splitter = RecordSplitter(start_offset, self.max_record_bytes)
        cur: _Open | None = None
        try:
            while True:
                if cur is None:
                    step = plan.steps.popleft() if plan.steps else None
                    if step is None:
                        # The followed name, from its start (after a rotation, or once it
                        # appears).
                        step = _Step(str(self.path), 0, None, False, None)
                    if not step.retired and self._look_after is not None:
                        # Files made since the one finished last come before the new one.
                        later = await self._run(self._made_since, self._look_after)
                        self._look_after = None
                        if later:
                            plan.steps.appendleft(step)
                            plan.steps.extendleft(reversed(later))
                            continue
                    opened = await self._open(step, splitter.offset)
                    if opened is None:
                        plan.steps.appendleft(step)
                        await self._idle()
                        continue
                    if opened is _GONE:
                        continue
                    assert isinstance(opened, _Open)
                    cur = opened
                read = await self._read(cur, splitter)
                if read is not None:
                    done, pieces = read
                    for piece in pieces:
                        yield piece
                    if done:
                        await self._close(cur)
                        cur = None
                    continue
                # At the end of what the file holds now.
                if self.follow is None:
                    for piece in self._finish(cur, splitter):
                        yield piece
                    return
                done, pieces = await self._at_end(cur, splitter)
                for piece in pieces:
                    yield piece
                if done:
                    await self._close(cur)
                    cur = None
        finally:
            if cur is not None:
                cur.file.close()

    async def _close(self, cur: _Open) -> None:
        """Done with `cur`: the files made after it are looked for before the next file at the
        name is read."""
        try:
            mtime_ns = (await self._run(os.fstat, cur.file.fileno())).st_mtime_ns
        except OSError:
            mtime_ns = cur.mtime_ns
        self._finished.append((cur.dev, cur.ino))
        self._look_after = _Finished((cur.dev, cur.ino), Mark(cur.born_ns, mtime_ns), cur.live)
        cur.file.close()

    def _made_since(self, finished: _Finished) -> list[_Step]:
        """Steps for the files made after the one finished last (blocking): none when that is
        still the file at the name (a copy + truncate without a copy found)."""
        named = _stat_or_none(str(self.path))
        if named is not None and _inode(named) == finished.inode:
            return []
        lives = self._lives(finished.live)
        exclude = {*self._finished}
        if named is not None:
            exclude.add(_inode(named))
        found = candidates(lives)
        # Its name now (a rotation's, with its tag), if it is still there.
        now = next((r for r in found if r.inode == finished.inode), None)
        mark = replace(finished.mark, tag=now.tag if now is not None else "")
        later = self._readable(*unread(found, mark, exclude))
        if later:
            self.rotations += len(later)
            log.warning(
                "%s was rotated more than once since %s was read: reading %s first",
                self.path,
                finished.live,
                ", ".join(r.path for r in later),
            )
        return self._rotation_steps(later, lives[-1])

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await off_loop(fn, *args)

    async def _idle(self) -> None:
        assert self.follow is not None
        # Polling, not synchronisation: nothing tells us when a file grows on every
        # filesystem (inotify misses NFS and some overlays), so look again shortly.
        await asyncio.sleep(self.follow.poll_s)

    def _still_absent(self, path: str) -> None:
        """Says at WARNING, every STILL_ABSENT_EVERY_S, that the followed name still leads
        nowhere: a mistyped path would otherwise wait forever in silence."""
        now = time.monotonic()
        if self._absent_since is None:
            self._absent_since = self._absent_told = now
        elif now - self._absent_told >= STILL_ABSENT_EVERY_S:
            self._absent_told = now
            log.warning(
                "%s has not appeared in %.0f s: still waiting for it (is the path right?)",
                path,
                now - self._absent_since,
            )

    async def _open(self, step: _Step, stream_offset: int) -> _Open | _Gone | None:
        """Opens `step`'s file at its position; None when following and the name leads nowhere
        (yet); _GONE when a file planned is gone (skipped, with a WARNING)."""
        for _ in range(_RELOCATE_TRIES):
            try:
                opened = await self._run(
                    _open_file, step.path, not step.retired, self.follow is not None
                )
            except FileNotFoundError:
                if step.expect is None:
                    if self.follow is None:
                        raise SourceError(
                            f"{step.path} disappeared before it could be read"
                        ) from None
                    if self.progress is None or self.progress.path != step.path:
                        log.info("waiting for %s to appear", step.path)
                        self.progress = FileProgress(step.path, 0, 0, self.rotations, self.skipped)
                    self._still_absent(step.path)
                    return None
                opened = None
            except OSError as e:
                raise SourceError(f"cannot open {step.path}: {e.strerror}") from e
            if opened is not None and (step.expect is None or _inode(opened.st) == step.expect):
                self._absent_since = None
                return self._opened(step, opened, stream_offset)
            if opened is not None:
                opened.file.close()
            moved = await self._moved(step)
            if moved is None:
                return _GONE
            step = moved
        raise SourceError(f"{step.path} keeps being renamed under shovel; start again")

    async def _moved(self, step: _Step) -> _Step | None:
        """The file `step` expects is not at its path any more: where it is now (renamed by a
        rotation), or None, with a WARNING, when it is gone."""
        assert step.expect is not None
        if self.follow is None:
            raise SourceError(f"{step.path} was replaced while shovel was starting; start again")
        lives = [step.live or resolved(self.path), resolved(self.path)]
        found = await self._run(_locate, step.expect, lives)
        if found is not None:
            if not step.retired:
                # Rotated between the start's look and this open: its tail, then the name.
                assert self._plan is not None
                self._plan.steps.appendleft(_Step(str(self.path), 0, None, False, None))
                self.rotations += 1
            return replace(step, path=found.path, retired=True, live=lives[-1])
        self._skip(
            f"{step.path}, a file of {self.path} not read to its end yet, was removed before "
            f"shovel could read it: its lines from byte {step.pos} were not stored"
        )
        if not step.retired:
            assert self._plan is not None
            self._plan.steps.appendleft(_Step(str(self.path), 0, None, False, None))
        return None

    def _opened(self, step: _Step, opened: _Opened, stream_offset: int) -> _Open:
        """`opened` as the file being read, once checked."""
        try:
            if not stat.S_ISREG(opened.st.st_mode):
                raise SourceError(f"{step.path} is not a regular file")
            if opened.pseudo is not None:
                raise SourceError(
                    f"{step.path} now leads to {opened.real}, on {opened.pseudo}, a pseudo "
                    "filesystem: --follow cannot follow it"
                )
            opened.file.seek(step.pos)
        except BaseException:
            opened.file.close()
            raise
        self._generation += 1
        base = stream_offset if step.base is None else step.base
        cur = _Open(
            self._generation,
            step,
            real=opened.real,
            base=base,
            file=opened.file,
            st=opened.st,
            head=opened.head,
            born_ns=opened.born_ns,
        )
        cur.grew_at = asyncio.get_running_loop().time()
        self._show(cur)
        return cur

    def _show(self, cur: _Open) -> None:
        self.progress = FileProgress(
            cur.path, max(cur.size, cur.read_pos), cur.read_pos, self.rotations, self.skipped
        )

    async def _read(self, cur: _Open, splitter: RecordSplitter) -> tuple[bool, list[Piece]] | None:
        """The pieces the next chunk completes, and whether `cur` is done with (its content
        was replaced under the read position); None at the end of the file."""
        # A read cancelled mid-way still completes in its thread and moves the file position;
        # harmless, because a cancelled reader never reads again. The chunk stays in native
        # memory: only its first bytes are ever copied out, and only while they are needed.
        start = cur.read_pos
        # While following, the file's first bytes (as many as were consumed) are read again
        # after each chunk, in the same trip to the thread: a truncate that came before the
        # read completed is then seen before its chunk is used.
        known = min(len(cur.head), start) if self.follow is not None else 0
        chunk, head = await self._run(_read_then_head, cur.file, self.chunk_bytes, known)
        if not chunk:
            return None
        if head != cur.head[:known]:
            # Copy + truncate, then new writes past the position, since the last look: the
            # chunk is new content read from the middle, not the rest of the old.
            return True, await self._truncated(
                cur, splitter, f"was truncated and rewritten past the read position {start}"
            )
        cur.read_pos += len(chunk)
        cur.grew_at = asyncio.get_running_loop().time()
        if start <= len(cur.head) < min(FINGERPRINT_MAX_BYTES, cur.read_pos):
            # The first bytes grow from what was read, not from a new look at the file: a
            # look could see content that replaced the file since, and take it for the old.
            cur.head += chunk.bytes_at(len(cur.head) - start, FINGERPRINT_MAX_BYTES - start)
        skip = 0
        if cur.open_line:
            # The stored stream ends with this file's last line, which had no newline then and
            # was stored whole, as a record.
            cur.open_line = False
            if chunk.bytes_at(0, 1) == b"\n":
                skip = 1
            else:
                # Its writer wrote the rest of that line later. Storing the rest as a record
                # would split one line in two, and refusing would stop shovel for good: the
                # rest is set apart in rejected/, and reading goes on after it.
                log.warning(
                    "%s continued its last line after shovel had finished the file and stored "
                    "that line (ending at byte %d) as a record: the continuation, up to its "
                    "newline, is set apart in rejected/ instead of stored",
                    cur.path,
                    start,
                )
                splitter.set_aside_line()
        cur.size = max(cur.size, cur.read_pos)
        self._show(cur)
        return False, [self._stamp(cur, p) for p in splitter.feed(chunk, skip)]

    def _stamp(self, cur: _Open, piece: Piece, open_line: bool = False) -> Piece:
        """Attaches the file's identity to a batch when it differs from the last one sent."""
        if not isinstance(piece, Batch):
            return piece
        fp_len = min(FINGERPRINT_MAX_BYTES, piece.end_offset - cur.base)
        key = (cur.number, fp_len, open_line)
        if key == self._stamped:
            return piece
        self._stamped = key
        return replace(
            piece, source=encode(cur.origin(str(self.path), piece.end_offset, open_line))
        )

    def _finish(self, cur: _Open, splitter: RecordSplitter) -> list[Piece]:
        """The end of a file: an unterminated last line becomes a record."""
        # The stored stream ends inside a line: its last part stored as a record, or set apart
        # (an over-long line, the late end of one): a continuation is set apart in turn.
        open_line = splitter.carried > 0 or splitter.rejecting_line
        pieces = splitter.finish()
        return [self._stamp(cur, p, open_line and p is pieces[-1]) for p in pieces]

    async def _at_end(self, cur: _Open, splitter: RecordSplitter) -> tuple[bool, list[Piece]]:
        """Following, at the end of `cur`: waits or decides. Returns whether `cur` is done
        (go on with the next file) and the pieces to yield."""
        assert self.follow is not None
        loop = asyncio.get_running_loop()
        size, named, head = await self._run(_look, cur.file.fileno(), str(self.path))
        cur.size = size
        self._show(cur)
        known = min(len(cur.head), cur.read_pos)
        if size < cur.read_pos:
            what = f"shrank to {size} bytes, below the read position {cur.read_pos}"
            return True, await self._truncated(cur, splitter, what)
        if head[:known] != cur.head[:known]:
            what = f"has other first bytes than before, at read position {cur.read_pos}"
            return True, await self._truncated(cur, splitter, what)
        if size > cur.read_pos:
            return False, []
        if not cur.retired and named is not None and _inode(named) == (cur.dev, cur.ino):
            await self._idle()
            return False, []
        if cur.rotated_at is None:
            cur.rotated_at = loop.time()
            if not cur.retired:
                self.rotations += 1
            if not cur.settled:
                log.info(
                    "%s now %s: finishing %s once it has been quiet for %.1fs",
                    self.path,
                    "leads to another file" if named is not None else "is gone",
                    cur.path,
                    self.follow.rotated_quiet_s,
                )
        quiet_s = 0.0 if cur.settled else self.follow.rotated_quiet_s
        if loop.time() - max(cur.rotated_at, cur.grew_at) < quiet_s:
            await self._idle()
            return False, []
        pieces = self._finish(cur, splitter)
        log.info("rotation: finished %s at byte %d", cur.path, cur.read_pos)
        return True, pieces

    async def _truncated(self, cur: _Open, splitter: RecordSplitter, what: str) -> list[Piece]:
        """Copy + truncate. With a copy of the old content among the rotations, its rest is
        read from there (the partial line in hand continues in it), then the new content from
        the start; without one, the old content ends here. Returns the pieces that end it."""
        self.rotations += 1
        origin = cur.origin(str(self.path), cur.read_pos + cur.base, False)
        lives = [cur.live, resolved(self.path)]
        found = await self._run(_find_stored, origin, cur.read_pos, lives, (cur.dev, cur.ino))
        log.warning(
            "%s %s (copytruncate): %s; lines written between the copy and the truncate cannot "
            "be read by anyone and may be lost",
            cur.path,
            what,
            f"reading the rest of the old content from {found.path}"
            if found
            else "no copy of the old content was found among its rotations",
        )
        assert self._plan is not None
        if found is None:
            return self._finish(cur, splitter)
        self._plan.steps.appendleft(_Step(str(self.path), 0, None, False, None))
        self._plan.steps.appendleft(
            _Step(
                found.path,
                cur.read_pos,
                cur.base,
                True,
                found.inode,
                cur.open_line,
                live=cur.live,
            )
        )
        return []

    def collectors(self) -> list[Collector]:
        from shovel.sources.filemetrics import FileProgressCollector  # noqa: PLC0415

        return [FileProgressCollector(lambda: self.progress)]


def _inode(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino
