"""Files in the spool that only this user made: no link is followed, nothing is written that
this process did not create, directories are 0700 and files 0600.

A spool directory may sit on a shared file system: a name planted in it (a symbolic link to
another file, a hard link, a FIFO, another user's file) must never make this process write,
truncate or append to a file elsewhere, nor read a foreign file as spool data.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

__all__ = [
    "NOFOLLOW",
    "SAFE_OPEN",
    "UnsafeSpoolFile",
    "create_private",
    "is_plain_file",
    "open_private",
    "private_dir",
    "read_private",
    "replace_private",
]

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# O_NONBLOCK: a FIFO planted under a spool name must not hang the open (it is then refused).
SAFE_OPEN = NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | os.O_CLOEXEC


class UnsafeSpoolFile(OSError):
    """A name in the spool is a link, not a regular file, another user's file or a file with
    more than one link: it is left alone, never written, appended to or read as spool data."""


def _check_own(fd: int, path: Path) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeSpoolFile(errno.EPERM, f"{path} is not a regular file; left alone")
    if info.st_uid != os.geteuid():
        raise UnsafeSpoolFile(errno.EPERM, f"{path} belongs to another user; left alone")
    if info.st_nlink != 1:
        raise UnsafeSpoolFile(errno.EPERM, f"{path} has {info.st_nlink} links; left alone")


def open_private(path: Path, flags: int, *, exclusive: bool = False) -> int:
    """Open a spool file without following a link, creating it (0600) when ``flags`` hold
    ``O_CREAT``; raise :class:`UnsafeSpoolFile` unless it is a regular file of this user with
    one link (so a planted link or hard link can never make this process write elsewhere)."""
    if exclusive:
        flags |= os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags | SAFE_OPEN, 0o600)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EMLINK):
            why = f"{path} is a link or not a file; left alone"
            raise UnsafeSpoolFile(exc.errno, why) from None
        raise
    try:
        _check_own(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private(path: Path) -> bytes:
    """The bytes of a spool file (see :func:`open_private`); FileNotFoundError when absent."""
    fd = open_private(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def create_private(path: Path, data: bytes) -> None:
    """Create ``path`` (0600, exclusively: never an existing file or a link) holding ``data``."""
    fd = open_private(path, os.O_WRONLY, exclusive=True)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def replace_private(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Replace ``path`` atomically by a new file (0600) holding ``data``: written under a fresh
    name created exclusively (never an existing file or a link), then renamed over ``path``
    (which replaces a link planted there, not its target)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = open_private(tmp, os.O_WRONLY, exclusive=True)
    try:
        try:
            os.write(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its missing parents) as directories only this user can enter
    (0700), and tighten ``path`` when this user made it before with wider permissions. A link
    is accepted only to a directory of this user."""
    missing: list[Path] = []
    parent = path
    while not os.path.lexists(parent) and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):  # parents made here are private too
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        # A spool moved to another disk by a link: followed only to this user's own directory.
        target = os.stat(path)
        if not stat.S_ISDIR(target.st_mode) or target.st_uid != os.geteuid():
            raise UnsafeSpoolFile(errno.ENOTDIR, f"{path} links to another user's directory")
        return path
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeSpoolFile(errno.ENOTDIR, f"{path} is not a directory")
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)
    return path


def is_plain_file(path: Path) -> bool:
    """A regular file, not a link (``lstat``), holding one link."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1
