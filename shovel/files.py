"""A regular file as a source: resumed only when it is the same file, and, with --follow, read
as it grows, through rotations, indefinitely.

Identity: every batch carries the file's device, inode and a fingerprint of its first bytes
(see identity.py); the checkpoint keeps that of the last durable batch. At start the file must
be the same one, at least as long as what was stored from it; otherwise shovel refuses, or,
when following, looks for the old file in the same directory (a rename rotation leaves it
there, e.g. `app.log.1`), reads its unread tail first and then the new file from its start.

Following (like `tail -F`), checked every poll interval at the end of the file:
- the file grew: read on;
- the name now points to another file, or to none (rename + create, replacement, deletion):
  the old file, still open, is read until it has been quiet for `rotated_quiet_s` (a writer
  may still hold it), then finished and the new file is read from its start;
- the file shrank below the read position, or its first bytes changed (copy + truncate; the
  first bytes are also checked after every read, so that new content written past the old
  position between two looks is not taken for the old file's rest): the rest of the old
  content is read from the copy if one is found in the directory, then the new content from
  the start. Lines written between the copy and the truncate are lost: that
  is how copytruncate works, and it is logged.
When a file is finished (the end of a finite run, or a rotated file) an unterminated last line
is stored as a record with a newline, and the checkpoint says so (`open_line`): if that file
later continues that line, shovel refuses rather than store the rest as a record of its own
(a continuation that starts with the newline is simply skipped). While following, an
unterminated line is not a record yet.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from shovel._native import Chunk, ReadFile
from shovel.batches import Batch, Piece
from shovel.identity import (
    FINGERPRINT_MAX_BYTES,
    DescriptorError,
    FileOrigin,
    decode,
    encode,
    fingerprint,
    kind_of,
    read_head,
)
from shovel.records import RecordSplitter
from shovel.source_api import DaemonThreads, SourceError, SourceMismatch

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_DAEMON = DaemonThreads()

_NEW_DIR_HINT = "to store this file from its start, use a new --output-dir"


@dataclass(frozen=True, slots=True)
class FollowConfig:
    """How --follow waits and decides."""

    poll_s: float
    rotated_quiet_s: float


@dataclass(frozen=True, slots=True)
class FileProgress:
    """What metrics show of a file source; replaced whole, so another thread reads it safely."""

    path: str
    size: int
    position: int
    rotations: int


@dataclass(frozen=True, slots=True)
class _Step:
    """A file to read, from `pos`, whose byte 0 is at stream position `base`."""

    path: str
    pos: int
    base: int
    # An old file (rotated away): finish it once quiet, then go on with the followed path.
    retired: bool
    # (dev, ino) expected when it is opened; None to take whatever the name holds then.
    expect: tuple[int, int] | None
    # The stored stream ends with this file's unterminated last line, completed by shovel.
    open_line: bool = False


@dataclass(slots=True)
class _Plan:
    """Where reading starts, decided by `resume`."""

    committed_offset: int
    steps: deque[_Step]


class _Open:
    """One open file being read."""

    def __init__(
        self, number: int, step: _Step, file: ReadFile, st: os.stat_result, head: bytes
    ) -> None:
        self.number = number
        self.path = step.path
        self.file = file
        self.dev, self.ino = st.st_dev, st.st_ino
        self.base = step.base
        self.read_pos = step.pos
        self.size = st.st_size
        self.head = head
        self.retired = step.retired
        self.open_line = step.open_line
        # Loop time when the name was first seen to point elsewhere, and of the last growth.
        self.rotated_at: float | None = None
        self.grew_at = 0.0

    def origin(self, end_offset: int, open_line: bool) -> FileOrigin:
        fp_len = min(FINGERPRINT_MAX_BYTES, end_offset - self.base)
        return FileOrigin(
            path=self.path,
            dev=self.dev,
            ino=self.ino,
            fp_len=fp_len,
            fp=fingerprint(self.head[:fp_len]),
            base=self.base,
            open_line=open_line,
        )


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _find_old_file(
    directory: Path, origin: FileOrigin, min_size: int, exclude: str
) -> tuple[str, os.stat_result] | None:
    """A regular file in `directory` (other than `exclude`) that is `origin`'s file: at least
    `min_size` bytes with its fingerprint; the same inode first (a rename), else the newest
    (a copy)."""
    found: list[tuple[bool, float, str, os.stat_result]] = []
    try:
        entries = list(os.scandir(directory))
    except OSError as e:
        log.warning("cannot list %s to look for a rotated file: %s", directory, e.strerror)
        return None
    for entry in entries:
        if entry.name == exclude:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_size < min_size:
                continue
            head = read_head(entry.path)
        except OSError:
            continue
        if origin.matches_head(head):
            found.append((origin.same_inode(st), st.st_mtime, entry.path, st))
    if not found:
        return None
    _, _, path, st = max(found, key=lambda f: (f[0], f[1]))
    return path, st


def _read_then_head(file: ReadFile, max_bytes: int, known: int) -> tuple[Chunk, bytes]:
    """A chunk from the read position, then the file's first `known` bytes as they are now."""
    chunk = file.read(max_bytes)
    return chunk, os.pread(file.fileno(), known, 0) if known else b""


def _look(fd: int, path: str) -> tuple[int, os.stat_result | None, bytes]:
    """The open file's size, what its name holds now, and its first bytes."""
    return os.fstat(fd).st_size, _stat_or_none(path), os.pread(fd, FINGERPRINT_MAX_BYTES, 0)


class FileSource:
    """A regular file; see the module docs."""

    replayable = True

    def __init__(
        self,
        path: Path,
        chunk_bytes: int,
        max_record_bytes: int,
        follow: FollowConfig | None = None,
    ) -> None:
        # Absolute, so that the checkpoint names the file whatever the working directory.
        self.path = Path(os.path.abspath(path))
        self.chunk_bytes = chunk_bytes
        self.max_record_bytes = max_record_bytes
        self.follow = follow
        self.description = f"file {path}" + (" (following)" if follow else "")
        self.progress: FileProgress | None = None
        self.rotations = 0
        self._plan: _Plan | None = None
        self._generation = 0
        self._stamped: tuple[int, int, bool] | None = None

    # -- resuming ---------------------------------------------------------------------------

    def resume(self, committed_offset: int, descriptor: str) -> str:
        path = str(self.path)
        try:
            origin = decode(descriptor)
        except DescriptorError as e:
            raise SourceMismatch(f"the checkpoint's record of its source is unreadable: {e}") from e
        if origin is None:
            return self._resume_unnamed(committed_offset)
        if not isinstance(origin, FileOrigin):
            raise SourceMismatch(
                f"this output directory holds records from {kind_of(origin)}, and the source "
                f"now is the file {path}: refusing to mix them ({_NEW_DIR_HINT})"
            )
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
            return f"resuming at offset {committed_offset} (byte {pos} of {path})"
        if self.follow is None:
            raise SourceMismatch(
                f"{path} is not the file this output directory was storing: {problem}; "
                f"{_NEW_DIR_HINT}, or use --follow to read a rotated file"
            )
        found = _find_old_file(self.path.parent, origin, pos, self.path.name)
        if found is not None:
            old_path, old_st = found
            self.rotations += 1
            self._plan = _Plan(
                committed_offset,
                deque(
                    [
                        _Step(old_path, pos, origin.base, True, _inode(old_st), origin.open_line),
                        _Step(path, 0, -1, False, None),
                    ]
                ),
            )
            return (
                f"{path} was rotated while shovel was stopped ({problem}): reading the rest of "
                f"{old_path} from byte {pos}, then {path} from its start"
            )
        log.warning(
            "%s: %s, and the file stored last, %s, is not in %s any more: lines written to it "
            "after byte %d, if any, were not stored",
            path,
            problem,
            origin.describe(),
            self.path.parent,
            pos,
        )
        self._plan = _Plan(committed_offset, deque([_Step(path, 0, committed_offset, False, None)]))
        return f"reading {path} from its start"

    def _resume_unnamed(self, committed_offset: int) -> str:
        """A new output directory, or one whose checkpoint does not name its source."""
        path = str(self.path)
        self._plan = _Plan(committed_offset, deque([_Step(path, committed_offset, 0, False, None)]))
        if committed_offset == 0:
            return f"reading {path} from its start"
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
        return f"resuming at offset {committed_offset} (byte {committed_offset} of {path})"

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
                    if step is None or step.base < 0:
                        # The followed name, from its start (after a rotation, or once it
                        # appears).
                        step = _Step(str(self.path), 0, splitter.offset, False, None)
                    cur = await self._open(step)
                    if cur is None:
                        plan.steps.appendleft(step)
                        await self._idle()
                        continue
                read = await self._read(cur, splitter)
                if read is not None:
                    done, pieces = read
                    for piece in pieces:
                        yield piece
                    if done:
                        cur.file.close()
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
                    cur.file.close()
                    cur = None
        finally:
            if cur is not None:
                cur.file.close()

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(_DAEMON, fn, *args)

    async def _idle(self) -> None:
        assert self.follow is not None
        # Polling, not synchronisation: nothing tells us when a file grows on every
        # filesystem (inotify misses NFS and some overlays), so look again shortly.
        await asyncio.sleep(self.follow.poll_s)

    async def _open(self, step: _Step) -> _Open | None:
        """Opens `step`'s file at its position; None when following and it is not there."""
        try:
            file = await self._run(ReadFile, step.path)
        except FileNotFoundError:
            if self.follow is None or step.retired:
                raise SourceError(f"{step.path} disappeared before it could be read") from None
            if self.progress is None or self.progress.path != step.path:
                log.info("waiting for %s to appear", step.path)
                self.progress = FileProgress(step.path, 0, 0, self.rotations)
            return None
        except OSError as e:
            raise SourceError(f"cannot open {step.path}: {e.strerror}") from e
        try:
            st = await self._run(os.fstat, file.fileno())
            if step.expect is not None and _inode(st) != step.expect:
                raise SourceError(
                    f"{step.path} was replaced while shovel was starting; start again"
                )
            if not stat.S_ISREG(st.st_mode):
                raise SourceError(f"{step.path} is not a regular file")
            head = await self._run(os.pread, file.fileno(), FINGERPRINT_MAX_BYTES, 0)
            file.seek(step.pos)
        except BaseException:
            file.close()
            raise
        self._generation += 1
        cur = _Open(self._generation, step, file, st, head)
        cur.grew_at = asyncio.get_running_loop().time()
        self._show(cur)
        return cur

    def _show(self, cur: _Open) -> None:
        self.progress = FileProgress(
            cur.path, max(cur.size, cur.read_pos), cur.read_pos, self.rotations
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
            # The stored stream ends with this file's last line, which had no newline then.
            cur.open_line = False
            if chunk.bytes_at(0, 1) == b"\n":
                skip = 1
            else:
                raise SourceMismatch(
                    f"{cur.path} grew from the middle of a line: its last line (ending at byte "
                    f"{start}) had no newline and was stored as a whole record, so storing the "
                    "rest would split that line in two; use a new --output-dir to store the "
                    "file from its start (with --follow an unfinished line waits for its newline)"
                )
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
        return replace(piece, source=encode(cur.origin(piece.end_offset, open_line)))

    def _finish(self, cur: _Open, splitter: RecordSplitter) -> list[Piece]:
        """The end of a file: an unterminated last line becomes a record."""
        open_line = splitter.carried > 0 and not splitter.rejecting_line
        pieces = splitter.finish()
        return [self._stamp(cur, p, open_line and p is pieces[-1]) for p in pieces]

    async def _at_end(self, cur: _Open, splitter: RecordSplitter) -> tuple[bool, list[Piece]]:
        """Following, at the end of `cur`: waits or decides. Returns whether `cur` is done
        (go on with the followed name) and the pieces to yield."""
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
            log.info(
                "%s now %s: finishing %s once it has been quiet for %.1fs",
                self.path,
                "names another file" if named is not None else "is gone",
                cur.path,
                self.follow.rotated_quiet_s,
            )
        if loop.time() - max(cur.rotated_at, cur.grew_at) < self.follow.rotated_quiet_s:
            await self._idle()
            return False, []
        pieces = self._finish(cur, splitter)
        log.info(
            "rotation: finished %s at byte %d; reading %s from its start",
            cur.path,
            cur.read_pos,
            self.path,
        )
        return True, pieces

    async def _truncated(self, cur: _Open, splitter: RecordSplitter, what: str) -> list[Piece]:
        """Copy + truncate. With a copy of the old content in the directory, its rest is read
        from there (the partial line in hand continues in it), then the new content from the
        start; without one, the old content ends here. Returns the pieces that end it."""
        self.rotations += 1
        origin = cur.origin(cur.read_pos + cur.base, False)
        found = await self._run(
            _find_old_file, self.path.parent, origin, cur.read_pos, self.path.name
        )
        log.warning(
            "%s %s (copytruncate): %s; lines written between the copy and the truncate cannot "
            "be read by anyone and may be lost",
            cur.path,
            what,
            f"reading the rest of the old content from {found[0]}"
            if found
            else "no copy of the old content was found in the directory",
        )
        assert self._plan is not None
        if found is None:
            return self._finish(cur, splitter)
        self._plan.steps.appendleft(_Step(str(self.path), 0, -1, False, None))
        self._plan.steps.appendleft(_Step(found[0], cur.read_pos, cur.base, True, _inode(found[1])))
        return []

    def stop_tail(self) -> list[Piece]:
        return []


def _inode(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino
