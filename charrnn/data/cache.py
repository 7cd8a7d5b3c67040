"""The cache: encoded corpora, spooled standard input and downloaded corpora, kept under a size cap.

    $CHARRNN_CACHE (default: the platform's cache folder, see `root`)/
      encoded/KEY/      ids.bin + meta.json of one encoded text; .use is flock'd (shared) by every
                        process reading it, and its mtime is the entry's last use
      stdin/SHA256      standard input as piped in, named by its content
      corpora/FILE      named corpora, downloaded and checked against their sha256

After each new entry the least recently used encoded texts and stdin copies go until the total is
under $CHARRNN_CACHE_MAX_SIZE (default 10G). An entry a process is reading is never removed, nor a
stdin copy used in the last hour (it is read only while a command starts). Downloads are removed
only by `charrnn cache prune` or `clear`, since getting them again may need the network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; entries in use are then told by their age alone
    fcntl = None

from charrnn.errors import UsageError

DEFAULT_MAX_SIZE = "10G"
KINDS = ("encoded", "stdin", "corpora")
RECENT = 3600.0  # seconds: a stdin copy or a half-written entry this fresh may belong to a running command
USE = ".use"


def root() -> Path:
    """$CHARRNN_CACHE, else the platform's cache folder: ~/.cache/charrnn (or $XDG_CACHE_HOME/charrnn) on
    Linux, ~/Library/Caches/charrnn on macOS, %LOCALAPPDATA%\\charrnn\\Cache on Windows."""
    if env := os.environ.get("CHARRNN_CACHE"):
        return Path(env)
    from platformdirs import user_cache_path

    return user_cache_path("charrnn", appauthor=False)


def parse_size(text: str, source: str = "size") -> int:
    """Bytes from '500M', '10G', '2.5GB', '1T' or a plain number of bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise UsageError(f"{source} '{text}' is not a size; use e.g. 500M, 10G or a number of bytes")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def max_size() -> int:
    return parse_size(os.environ.get("CHARRNN_CACHE_MAX_SIZE", DEFAULT_MAX_SIZE), "CHARRNN_CACHE_MAX_SIZE")


def hold(folder: Path):
    """Mark an encoded entry as in use (a shared flock, released when the returned file is closed or
    collected, or the process ends) and as used now. Keep the file as long as the entry is read."""
    use = open(folder / USE, "a")  # noqa: SIM115 - its lifetime is the caller's
    os.utime(use.fileno())
    if fcntl is not None:
        fcntl.flock(use.fileno(), fcntl.LOCK_SH)
    return use


def in_use(path: Path) -> bool:
    """Whether a process holds this encoded entry (see `hold`)."""
    if fcntl is None or not (path / USE).exists():
        return False
    try:
        with open(path / USE, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


@dataclass
class Entry:
    path: Path
    kind: str  # encoded | stdin | corpora
    size: int  # bytes on disk
    last_used: float  # epoch seconds
    in_use: bool

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.path.name,
            "path": str(self.path),
            "size": self.size,
            "last_used": self.last_used,
            "in_use": self.in_use,
            "text": self.text(),
        }

    def text(self) -> str | None:
        """What an encoded entry holds, as its sources were named ("notes.txt and 3 more"); None if
        its record cannot be read."""
        if self.kind != "encoded":
            return None
        try:
            sources = json.loads((self.path / "meta.json").read_text(encoding="utf-8"))["sources"]
            names = [str(s["path"]) for s in sources]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not names:
            return None
        return names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _last_used(path: Path) -> float:
    marks = [path / USE, path / "meta.json", path] if path.is_dir() else [path]
    for mark in marks:
        if mark.exists():
            return mark.stat().st_mtime
    raise FileNotFoundError(path)  # gone meanwhile (another process pruned or replaced it): skipped


def _busy(path: Path, kind: str) -> bool:
    """In use: held by a process (encoded), or too fresh to tell (a stdin copy, a download or entry
    still being written)."""
    if kind == "encoded" and not path.name.startswith("."):
        return in_use(path)
    fresh_matters = kind == "stdin" or path.name.startswith(".")  # a temporary name (files.temporary)
    return fresh_matters and time.time() - path.stat().st_mtime < RECENT


def entries(kinds: tuple[str, ...] = KINDS) -> list[Entry]:
    """The cache's entries, least recently used first. Files that vanish meanwhile are skipped."""
    found = []
    for kind in kinds:
        folder = root() / kind
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            try:
                found.append(Entry(path, kind, _size(path), _last_used(path), _busy(path, kind)))
            except OSError:
                continue
    return sorted(found, key=lambda e: e.last_used)


def remove(entry: Entry) -> str | None:
    """Delete an entry; None when it is gone, else why it is not (a read-only cache, permissions)."""
    try:
        if entry.path.is_dir():
            shutil.rmtree(entry.path)
        else:
            entry.path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
    except OSError as e:
        return e.strerror or str(e)
    return None


def prune(
    older_than: float | None = None,
    max_bytes: int | None = None,
    kinds: tuple[str, ...] = KINDS,
    keep: Path | None = None,
) -> list[Entry]:
    """Remove entries not used for `older_than` seconds, then the least recently used until the rest
    fit in `max_bytes`. Entries in use and `keep` stay. Returns what was removed, and the entries
    that could not be, each with the reason."""
    now = time.time()
    present = entries(kinds)
    total = sum(e.size for e in present)
    removed, failed = [], []
    for e in present:
        old = older_than is not None and now - e.last_used > older_than
        over = max_bytes is not None and total > max_bytes
        if (old or over) and not e.in_use and e.path != keep:
            if reason := remove(e):
                failed.append((e, reason))
                continue
            removed.append(e)
            total -= e.size
    return removed, failed


def enforce_limit(keep: Path | None = None) -> list[Entry]:
    """After a new entry: the cap of $CHARRNN_CACHE_MAX_SIZE over encoded texts and stdin copies."""
    return prune(max_bytes=max_size(), kinds=("encoded", "stdin"), keep=keep)[0]
