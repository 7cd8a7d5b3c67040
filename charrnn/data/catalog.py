"""Named corpora: well-known public-domain texts, downloaded once and verified by checksum.

`charrnn train tinyshakespeare` fetches the file into the cache on first use. Offline machines set
CHARRNN_MIRROR to a directory holding the files (named as `Entry.file`) or to a base URL.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from charrnn.errors import CharRNNError
from charrnn.files import replacing

Progress = Callable[[str, int, int], None]  # (what, bytes done, bytes total)


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    file: str = ""  # the file's name in the cache and in a mirror; "" for the built-in corpus
    url: str = ""
    size: int = 0
    sha256: str = ""


CATALOG = {
    e.name: e
    for e in [
        Entry("builtin", "Python's own help topics (pydoc_data), assembled offline; ~465k characters"),
        Entry(
            "tinyshakespeare",
            "40,000 lines of Shakespeare's plays, from karpathy/char-rnn; 1.1M characters",
            file="tinyshakespeare.txt",
            url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            size=1115394,
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        ),
    ]
}


def builtin_text() -> str:
    """The offline corpus: the prose of Python's own help topics (pydoc_data).

    Every CPython installation carries it, so `charrnn train` with no arguments works anywhere.
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip("\n") for key in sorted(topics)) + "\n"


def mirror_location(entry: Entry) -> str:
    """Where `entry` is downloaded from: $CHARRNN_MIRROR (a directory or base URL) if set, else its URL."""
    mirror = os.environ.get("CHARRNN_MIRROR", "")
    if not mirror:
        return entry.url
    if "://" in mirror:
        return mirror.rstrip("/") + "/" + entry.file
    return str(Path(mirror) / entry.file)


def fetch(entry: Entry, folder: Path, progress: Progress | None = None) -> Path:
    """The local copy of `entry` in `folder`, downloaded and checked against its sha256 if absent.

    The download goes to a temporary name and replaces `target` only once verified, so a failed or
    corrupted download never leaves a file that looks complete."""
    target = folder / entry.file
    if target.is_file():
        return target
    from urllib.request import urlopen  # here, not at the top: it costs every command a few ms to start

    location = mirror_location(entry)
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    done = 0
    with replacing(target) as tmp:
        try:
            src = urlopen(location, timeout=30) if "://" in location else open(location, "rb")
            with src, open(tmp, "wb") as out:
                if progress:
                    progress(f"downloading {entry.name}", 0, entry.size)
                while data := src.read(1 << 16):
                    out.write(data)
                    digest.update(data)
                    done += len(data)
                    if progress:
                        progress(f"downloading {entry.name}", done, entry.size)
        except OSError as e:  # urllib's URLError and HTTPError are OSErrors too
            if os.environ.get("CHARRNN_MIRROR"):
                hint = f"check that the mirror in CHARRNN_MIRROR holds {entry.file}"
            else:
                hint = f"check the connection, or set CHARRNN_MIRROR to a directory holding {entry.file}"
            reason = getattr(e, "reason", None) or e.strerror or e
            raise CharRNNError(f"{entry.name}: cannot download {location} ({reason}); {hint}") from None
        if digest.hexdigest() != entry.sha256:
            raise CharRNNError(
                f"{entry.name}: download from {location} is damaged ({done:,} bytes, sha256 "
                f"{digest.hexdigest()[:16]}..., expected {entry.size:,} bytes, "
                f"sha256 {entry.sha256[:16]}...); "
                "nothing was kept: try again or check the mirror"
            )
    return target


def catalog_rows() -> list[dict]:
    """Every named corpus as `charrnn corpus list --json` shows it: what it is and whether it is here."""
    from charrnn.data import cache

    rows = []
    for e in CATALOG.values():
        builtin = not e.file
        local = cache.root() / "corpora" / e.file if e.file else None
        rows.append(
            {
                "name": e.name,
                "description": e.description,
                "builtin": builtin,
                "size": len(builtin_text().encode("utf-8")) if builtin else e.size,
                "url": e.url or None,
                "sha256": e.sha256 or None,
                "downloaded": builtin or local.is_file(),
                "path": str(local) if local and local.is_file() else None,
            }
        )
    return rows
