"""Small checkpoint files, replaced atomically.

A checkpoint is written to ``<name>.tmp``, synced, renamed over ``<name>`` and
the directory is synced, so a crash leaves either the old or the new content,
never a mix. Readers treat an unreadable file as missing and fall back to
rebuilding what it would have told them (the log never trusts a checkpoint
that it cannot parse).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

TEMPORARY_SUFFIX = ".tmp"


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        data = text.encode("ascii")
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """fsync a directory so that renames and unlinks in it are durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_offset(path: Path) -> int | None:
    """Read a ``0\\n<offset>\\n`` checkpoint; None when missing or malformed."""
    try:
        lines = path.read_text("ascii").split("\n")
        if lines[0] != "0":
            raise ValueError(f"unknown checkpoint version {lines[0]!r}")
        offset = int(lines[1])
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        return offset
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError, UnicodeDecodeError) as error:
        logger.warning("ignoring unreadable checkpoint %s: %s", path, error)
        return None


def write_offset(path: Path, offset: int) -> None:
    write_atomically(path, f"0\n{offset}\n")
