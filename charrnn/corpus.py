"""Text in, character ids out: decoding policy, vocabulary and the cached, memory-mapped id file.

Text is read in chunks through an incremental decoder, so memory does not grow with the corpus:
pass 1 collects the set of characters, pass 2 writes ids to a flat file that training reads through
`numpy.memmap`. Both passes work on whole chunks with numpy (no per-character Python loop).
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from charrnn.errors import CharRNNError

CHUNK_BYTES = 1 << 22  # 4 MiB of input per chunk: large enough for numpy, small enough for memory
BUILTIN = "builtin"  # the name of the offline corpus assembled from the Python standard library
CACHE_FORMAT = 1


def cache_dir() -> Path:
    """Where encoded corpora (and downloads) are kept: $CHARRNN_CACHE, else the XDG cache."""
    if env := os.environ.get("CHARRNN_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "charrnn"


@dataclass(frozen=True)
class TextOptions:
    """How bytes become characters. Part of the cache key and stored with every run."""

    encoding: str = "utf-8"
    errors: str = "strict"  # strict | replace | ignore
    keep_newlines: bool = False  # False: "\r\n" and "\r" become "\n"


class Vocab:
    """The model's alphabet: characters sorted by code point, id = position."""

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary characters must be unique")
        self.chars = "".join(sorted(chars))
        self.index = {c: i for i, c in enumerate(self.chars)}
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and other.chars == self.chars

    @property
    def dtype(self) -> type:
        """The smallest unsigned integer type that holds every id."""
        return np.uint8 if len(self) <= 256 else np.uint16 if len(self) <= 65536 else np.uint32

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` that are not in the vocabulary, in order of first appearance."""
        return list(dict.fromkeys(c for c in text if c not in self.index))

    def encode(self, text: str, unknown: str = "error", source: str = "text") -> np.ndarray:
        """Ids of `text`. Unknown characters raise, or are dropped (`skip`) or mapped to a space-like
        replacement (`replace`: the most common whitespace in the vocabulary, else id 0)."""
        cps = codepoints(text)
        ids = np.searchsorted(self._codepoints, cps).clip(max=len(self) - 1)
        known = self._codepoints[ids] == cps
        if not known.all():
            if unknown == "skip":
                ids = ids[known]
            elif unknown == "replace":
                ids = np.where(known, ids, self.replacement_id)
            else:
                missing = list(dict.fromkeys(chr(c) for c in cps[~known]))
                raise CharRNNError(
                    f"{source}: {len(missing)} character(s) not in the model's vocabulary: "
                    f"{preview_chars(missing)}; use --unknown skip or --unknown replace to proceed"
                )
        return ids.astype(self.dtype)

    @property
    def replacement_id(self) -> int:
        for c in " \n":
            if c in self.index:
                return self.index[c]
        return 0

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> dict:
        return {"chars": self.chars}

    @classmethod
    def from_json(cls, data: dict) -> Vocab:
        return cls(data["chars"])


def codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def preview_chars(chars: list[str], limit: int = 8) -> str:
    shown = " ".join(repr(c) for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


# ---------------------------------------------------------------------------------------------
# Sources: where text comes from
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One input: a file on disk (plain or .gz), or the built-in corpus."""

    path: str

    @property
    def is_builtin(self) -> bool:
        return self.path == BUILTIN

    def fingerprint(self) -> dict:
        if self.is_builtin:
            return {"path": BUILTIN, "python": sys.version.split()[0]}
        st = os.stat(self.path)
        return {"path": os.path.abspath(self.path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def open_bytes(self):
        if self.is_builtin:
            import io

            return io.BytesIO(builtin_text().encode("utf-8"))
        if self.path.endswith(".gz"):
            return gzip.open(self.path, "rb")
        return open(self.path, "rb")


def builtin_text() -> str:
    """The offline corpus: the prose of Python's own help topics (pydoc_data), ~460k characters.

    Every CPython installation carries it, so `charrnn train` with no arguments works anywhere.
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip("\n") for key in sorted(topics)) + "\n"


def resolve_sources(paths: list[str], glob: str = "*") -> list[Source]:
    """Turn command-line arguments into a list of files: directories are walked (sorted, filtered
    by `glob`), the name `builtin` is the built-in corpus."""
    if not paths:
        return [Source(BUILTIN)]
    sources = []
    for p in paths:
        if p == BUILTIN and not os.path.exists(p):
            sources.append(Source(BUILTIN))
            continue
        path = Path(p)
        if path.is_dir():
            files = sorted(f for f in path.rglob(glob) if f.is_file() and not f.name.startswith("."))
            if not files:
                raise CharRNNError(f"{p}: directory has no files matching '{glob}'; check the path or --glob")
            sources.extend(Source(str(f)) for f in files)
        elif path.is_file():
            sources.append(Source(str(path)))
        elif path.exists():
            raise CharRNNError(f"{p}: not a regular file or directory")
        else:
            raise CharRNNError(f"{p}: no such file or directory; pass a text file, a directory or 'builtin'")
    return sources


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def read_text_chunks(source: Source, options: TextOptions, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """Decoded text of one source, chunk by chunk, with the decoding policy applied.

    A character split across chunk borders decodes correctly (incremental decoder); a leading BOM
    is dropped; "\r\n" split across a border still becomes one "\n"; a NUL byte means binary.
    """
    try:
        decoder = codecs.getincrementaldecoder(options.encoding)(errors=options.errors)
    except LookupError:
        raise CharRNNError(f"unknown encoding '{options.encoding}'; see --encoding (e.g. utf-8, latin-1)", 2)
    consumed = 0  # bytes read before the current chunk, for error offsets
    pending_cr = ""
    first = True
    try:
        f = source.open_bytes()
    except OSError as e:
        raise CharRNNError(f"{source.path}: cannot read: {e.strerror or e}")
    with f:
        while True:
            try:
                data = f.read(chunk_bytes)
            except (OSError, EOFError) as e:  # gzip raises these for corrupt or truncated files
                raise CharRNNError(f"{source.path}: cannot read: {e}")
            final = not data
            held = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final=final)
            except UnicodeDecodeError as e:
                offset = consumed - held + e.start
                raise CharRNNError(
                    f"{source.path}: invalid {options.encoding} at byte offset {offset}; "
                    "pass --encoding (e.g. latin-1) or --errors replace|ignore"
                )
            if "\x00" in text:
                raise CharRNNError(
                    f"{source.path}: contains a NUL byte near byte offset {consumed}, so it looks binary; "
                    "train on text files only"
                )
            consumed += len(data)
            if first and text:
                text = text.removeprefix("\ufeff")
                first = False
            if not options.keep_newlines:
                text = pending_cr + text
                pending_cr = ""
                if text.endswith("\r") and not final:
                    text, pending_cr = text[:-1], "\r"
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            if text:
                yield text
            if final:
                return


# ---------------------------------------------------------------------------------------------
# Encoding to a memory-mapped id file, cached
# ---------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """Encoded text: `ids` (a read-only memmap of character ids) and the vocabulary they index."""

    ids: np.ndarray
    vocab: Vocab
    sources: list[dict] = field(default_factory=list)
    sha256: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def describe(self) -> dict:
        """What was trained on, for the run record."""
        return {"sources": self.sources, "characters": len(self), "sha256": self.sha256}


Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def load_corpus(
    paths: list[str],
    options: TextOptions = TextOptions(),
    vocab: Vocab | None = None,
    unknown: str = "error",
    glob: str = "*",
    progress: Progress | None = None,
) -> Corpus:
    """Encode `paths` (or fetch them from the cache) into a memory-mapped Corpus.

    With `vocab` given (fine-tuning, eval), text is encoded with that vocabulary and the `unknown`
    policy; otherwise the vocabulary is built from the text.
    """
    sources = resolve_sources(paths, glob)
    key_data = {
        "format": CACHE_FORMAT,
        "sources": [s.fingerprint() for s in sources],
        "options": asdict(options),
        "vocab": vocab.chars if vocab else None,
        "unknown": unknown if vocab else None,
    }
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:24]
    folder = cache_dir() / "encoded" / key
    meta_path = folder / "meta.json"
    if meta_path.exists():
        try:
            return _open_cached(folder)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt below
    folder.mkdir(parents=True, exist_ok=True)
    total = sum(_size(s) for s in sources)
    done = 0

    def chunks(report: bool) -> Iterator[tuple[Source, str]]:
        nonlocal done
        for s in sources:
            for text in read_text_chunks(s, options):
                yield s, text
                if report and progress:
                    done += len(text)  # characters: equals bytes for ASCII, close enough for a bar
                    progress(min(done, total), total)

    if vocab is None:
        seen: set[int] = set()
        for _, text in chunks(report=False):
            seen.update(np.unique(codepoints(text)).tolist())
        if not seen:
            raise CharRNNError(f"{', '.join(s.path for s in sources)}: no text to train on (empty input)")
        vocab = Vocab("".join(chr(c) for c in seen))

    tmp = folder / f"ids.bin.tmp{os.getpid()}"
    digest = hashlib.sha256()
    count = 0
    with open(tmp, "wb") as out:
        for s, text in chunks(report=True):
            ids = vocab.encode(text, unknown, source=s.path)
            out.write(ids.tobytes())
            digest.update(text.encode("utf-8", "surrogatepass"))
            count += len(ids)
    if count == 0:
        tmp.unlink()
        raise CharRNNError(f"{', '.join(s.path for s in sources)}: no text to train on (empty input)")
    os.replace(tmp, folder / "ids.bin")
    meta = {
        "vocab": vocab.to_json(),
        "dtype": np.dtype(vocab.dtype).name,
        "characters": count,
        "sha256": digest.hexdigest(),
        "sources": [{"path": s.path, "size": _size(s)} for s in sources],
    }
    tmp_meta = folder / f"meta.json.tmp{os.getpid()}"
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, meta_path)
    return _open_cached(folder)


def _size(source: Source) -> int:
    return len(builtin_text()) if source.is_builtin else os.path.getsize(source.path)


def _open_cached(folder: Path) -> Corpus:
    meta = json.loads((folder / "meta.json").read_text())
    ids = np.memmap(folder / "ids.bin", dtype=meta["dtype"], mode="r", shape=(meta["characters"],))
    return Corpus(ids, Vocab.from_json(meta["vocab"]), meta["sources"], meta["sha256"])


def corpus_from_text(text: str, vocab: Vocab | None = None) -> Corpus:
    """An in-memory corpus, for tests and short inputs such as a prime."""
    vocab = vocab or Vocab("".join(set(text)))
    return Corpus(vocab.encode(text), vocab, [{"path": "<text>", "size": len(text)}])
