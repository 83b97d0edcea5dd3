"""A path as a source (`PATH` or `file:PATH`): a regular file (followed or not), or, for a
named pipe, a device or a file on a pseudo filesystem, a stream read once."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from shovel._native import ReadFile
from shovel.oserrors import reason
from shovel.sources.api import FollowConfig, Source, SourceError, SourceOptions
from shovel.sources.file import FileSource
from shovel.sources.stream import stream_of


@dataclass(frozen=True, slots=True)
class FileSpec:
    """`PATH` or `file:PATH`."""

    path: Path
    followable: ClassVar[bool] = True
    reads_stdin: ClassVar[bool] = False

    def open(self, options: SourceOptions) -> Source:
        """The file (followed with `options.follow`), or a stream; raises SourceError when
        it cannot be used."""
        return _open_path(self.path, options.chunk_bytes, options.max_record_bytes, options.follow)


def parse_file(text: str) -> FileSpec:
    """Any other text is a path; raises ValueError when it is empty."""
    path = text.removeprefix("file:")
    if not path:
        raise ValueError("empty file path")
    return FileSpec(Path(path))


def _open_path(
    path: Path, chunk_bytes: int, max_record_bytes: int, follow: FollowConfig | None
) -> Source:
    """A path as a source: a file (followed or not), or a stream. A SourceError says what
    is wrong with the path, without naming it (the caller names it as the user typed it)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if follow is not None and path.parent.is_dir():
            # Like tail -F: wait for it to appear.
            return FileSource(path, chunk_bytes, max_record_bytes, follow)
        raise SourceError("no such file or directory") from None
    except OSError as e:
        raise SourceError(f"cannot read it: {reason(e)}") from e
    if stat.S_ISDIR(mode):
        raise SourceError("is a directory, not a file")
    if not stat.S_ISREG(mode):
        if follow is not None:
            kind = "a named pipe" if stat.S_ISFIFO(mode) else "a device or a socket"
            raise SourceError(
                f"is {kind}, and --follow reads a regular file: without --follow it is read "
                "as a stream"
            )
        return stream_of(path, chunk_bytes, max_record_bytes)
    if not os.access(path, os.R_OK):
        raise SourceError("cannot read it: permission denied")
    pseudo = _pseudo_filesystem(path)
    if pseudo is None:
        return FileSource(path, chunk_bytes, max_record_bytes, follow)
    if follow is not None:
        raise SourceError(
            f"--follow cannot follow it: it is on {pseudo}, a pseudo filesystem whose files "
            "report no true size and make their content up at each read; without --follow it "
            "is read once, as a stream"
        )
    # Read once to its end, as a stream: its size and first bytes say nothing a restart could
    # resume from.
    return stream_of(path, chunk_bytes, max_record_bytes)


def _pseudo_filesystem(path: Path) -> str | None:
    """The pseudo filesystem `path` is on (procfs, sysfs, ...), or None."""
    try:
        file = ReadFile(path)
    except OSError as e:
        raise SourceError(f"cannot open it: {reason(e)}") from e
    try:
        return file.pseudo_filesystem()
    except OSError as e:
        raise SourceError(f"cannot tell which filesystem it is on: {reason(e)}") from e
    finally:
        file.close()
