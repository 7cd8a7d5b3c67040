"""Replacing a file so that a reader, a crash or a power cut sees the old file or the whole new one.

Every file charrnn replaces (run records, checkpoint files, downloads, standard-input copies, images)
goes through `replacing`: written under a temporary name in the same folder, fsynced, renamed over the
target, and the folder fsynced so that the rename itself survives a power cut.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary(path: Path) -> Path:
    """A fresh hidden name beside `path` for its next version (see `is_temporary`)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{secrets.token_hex(4)}")


def is_temporary(name: str) -> bool:
    """Whether a file name is one of `temporary`'s: a write in progress, or left by a crash."""
    return name.startswith(".") and ".tmp" in name


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in folder `path` durable, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse to sync a folder
        pass
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path) -> None:
    """Move the finished file `tmp` over `path`: fsync it, rename it, fsync the folder."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s new version to; it replaces `path` when the block
    ends normally and is removed when the block raises, leaving the old file as it was.

    A symbolic link keeps pointing where it did: the file it points at is replaced. A path that is not
    a regular file (/dev/stdout, /dev/full, a named pipe) is yielded itself and written in place."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and not path.is_file():
        yield path
        return
    tmp = temporary(path)
    try:
        yield tmp
        commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data` (str is written as UTF-8)."""
    with replacing(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def write_json(path: Path, data: dict) -> None:
    """Replace `path` with `data` as indented JSON."""
    atomic_write(path, json.dumps(data, indent=2) + "\n")
