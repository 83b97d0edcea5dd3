"""How the Python side creates files in the output directory, as the native store does (see
native/src/store/perm.rs): for the owner and the group only (files 0640, directories 0750,
before the umask), never through a symbolic link planted there, and made durable with an
fsync of the directory that names them."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import BinaryIO

# The native store's own values: one definition for both languages.
from shovel._native import DIR_MODE, FILE_MODE, LOCK_FILE

__all__ = ["DIR_MODE", "FILE_MODE", "LOCK_FILE", "create_file", "fsync_dir", "link_refused"]

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def link_refused(path: Path) -> OSError:
    """The error for a symbolic link found where shovel writes."""
    return OSError(
        errno.ELOOP,
        f"{path} is a symbolic link, which shovel never follows; remove it, or use another "
        "output directory",
    )


def create_file(path: Path, *, exclusive: bool = False, buffering: int = -1) -> BinaryIO:
    """Opens `path` for writing: created with FILE_MODE, or emptied (or, `exclusive`, refused
    with FileExistsError when it exists). A symbolic link there is refused, never followed.
    `buffering` as for open() (0: every write goes straight to the file)."""
    flags = _CREATE | (os.O_EXCL if exclusive else os.O_TRUNC)
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise link_refused(path) from None
        raise
    return os.fdopen(fd, "wb", buffering=buffering)


def fsync_dir(path: Path) -> None:
    """fsyncs directory `path`, so that the names made or changed in it survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
