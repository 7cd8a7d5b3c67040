"""Text in, symbol ids out: decoding policy, vocabulary and the cached, memory-mapped id file.

Input is read in chunks (through an incremental decoder for text), so memory does not grow with the
corpus: pass 1 collects the set of characters, pass 2 writes ids to a flat file that training reads
through `numpy.memmap`. Both passes work on whole chunks with numpy (no per-character Python loop).
In byte-level mode (`--bytes`) there is no decoding and the vocabulary is all 256 byte values.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import gzip
import hashlib
import io
import itertools
import json
import os
import shutil
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from charrnn.data import cache, catalog
from charrnn.data.catalog import Progress, builtin_text
from charrnn.errors import CharRNNError, InputError, UnknownCharacters, UsageError
from charrnn.storage import files

CHUNK_BYTES = 1 << 20  # 1 MiB of input per chunk: numpy's temporaries stay in cache, and memory stays flat
BUILTIN = "builtin"  # the name of the offline corpus assembled from the Python standard library
STDIN = "-"
CACHE_FORMAT = 2


def _cache_folder(name: str) -> Path:
    """A folder of the cache, made if need be; one line that names the cache when it cannot be."""
    folder = cache_dir() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharRNNError(
            f"cannot use the cache folder {cache_dir()} ({e.strerror or e}); set CHARRNN_CACHE to a writable folder"
        ) from None
    return folder


def cache_dir() -> Path:
    """Where encoded corpora (and downloads) are kept: $CHARRNN_CACHE, else the platform's cache folder."""
    return cache.root()


@dataclass(frozen=True)
class TextOptions:
    """How bytes become characters. Part of the cache key and stored with every run."""

    encoding: str = "utf-8"
    errors: str = "strict"  # strict | replace | ignore
    keep_newlines: bool = False  # False: "\r\n" and "\r" become "\n"
    bytes: bool = False  # byte-level: no decoding, 256 symbols, any file

    def __post_init__(self) -> None:
        if self.errors not in ("strict", "replace", "ignore"):
            raise UsageError(f"--errors {self.errors}: use strict, replace or ignore")
        try:
            text_encoding = codecs.lookup(self.encoding)._is_text_encoding
        except (LookupError, TypeError):
            raise UsageError(f"unknown encoding {self.encoding!r}; use e.g. --encoding latin-1") from None
        if not text_encoding:  # rot13, base64, zlib: codecs Python has that do not turn bytes into text
            raise UsageError(f"--encoding {self.encoding}: not a text encoding; use e.g. utf-8, latin-1 or cp1252")


class Vocab:
    """The model's alphabet: characters sorted by code point, id = position.

    A byte-level vocabulary (`kind` "bytes") holds the 256 characters chr(0)..chr(255), one per byte
    value, so the same code serves both: byte b is character chr(b) (the latin-1 mapping)."""

    def __init__(self, chars: str, kind: str = "chars"):
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary characters must be unique")
        if kind not in ("chars", "bytes"):
            raise ValueError(f"unknown vocabulary kind '{kind}'")
        self.kind = kind
        self.chars = "".join(sorted(chars))
        self.index = {c: i for i, c in enumerate(self.chars)}
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    @classmethod
    def byte_level(cls) -> Vocab:
        return cls("".join(map(chr, range(256))), kind="bytes")

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and other.chars == self.chars and other.kind == self.kind

    @property
    def dtype(self) -> type:
        """The smallest unsigned integer type that holds every id."""
        return np.uint8 if len(self) <= 256 else np.uint16 if len(self) <= 65536 else np.uint32

    @functools.cached_property
    def _table(self) -> np.ndarray:
        """Code point -> id, -1 outside the vocabulary; the last entry stands for every larger code point."""
        top = int(self._codepoints[-1]) if len(self) else 0
        table = np.full(top + 2, -1, dtype=np.int32)
        table[self._codepoints] = np.arange(len(self), dtype=np.int32)
        return table

    def encode(self, text: str, unknown: str = "error", source: str = "text") -> np.ndarray:
        return self.encode_codepoints(codepoints(text), unknown, source)

    def encode_codepoints(self, cps: np.ndarray, unknown: str = "error", source: str = "text") -> np.ndarray:
        """Ids of code points `cps`. Unknown characters raise, or are dropped (`skip`) or mapped to a
        space-like replacement (`replace`: the most common whitespace in the vocabulary, else id 0)."""
        return self.encode_counting(cps, unknown, source)[0]

    def encode_counting(self, cps: np.ndarray, unknown: str = "error", source: str = "text") -> tuple[np.ndarray, int]:
        """`encode_codepoints`, and how many of the code points were outside the vocabulary."""
        ids = np.take(self._table, cps, mode="clip")
        known = ids >= 0
        outside = 0 if known.all() else len(known) - int(known.sum())
        if outside:
            if unknown == "skip":
                ids = ids[known]
            elif unknown == "replace":
                ids = np.where(known, ids, self.replacement_id)
            else:
                missing = list(dict.fromkeys(chr(c) for c in cps[~known][:10_000].tolist()))
                raise UnknownCharacters(
                    f"{source}: characters not in the model's vocabulary: {preview_chars(missing)}; "
                    "use --unknown skip or --unknown replace to proceed"
                )
        return ids.astype(self.dtype), outside

    @property
    def replacement_id(self) -> int:
        for c in " \n":
            if c in self.index:
                return self.index[c]
        return 0

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def from_user(self, text: str) -> str:
        """Text typed by a user (a prime) as symbols: unchanged for characters, its UTF-8 bytes for bytes."""
        return text.encode("utf-8").decode("latin-1") if self.kind == "bytes" else text

    def to_bytes(self, symbols: str) -> bytes:
        """Generated symbols as the bytes to write out: UTF-8 for characters, the raw bytes for bytes."""
        return symbols.encode("latin-1") if self.kind == "bytes" else symbols.encode("utf-8", "surrogatepass")

    def to_json(self) -> dict:
        return {"kind": "bytes"} if self.kind == "bytes" else {"kind": "chars", "chars": self.chars}

    @classmethod
    def from_json(cls, data: dict) -> Vocab:
        kind = data.get("kind", "chars")  # checkpoints from before byte-level mode have no kind
        return cls.byte_level() if kind == "bytes" else cls(data["chars"], kind)


def codepoints(text: str) -> np.ndarray:
    """The code points of `text` as a numpy array (uint8 when all ASCII: the common case, 4x less memory)."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def preview_chars(chars: list[str], limit: int = 8) -> str:
    shown = " ".join(repr(c) for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


# ---------------------------------------------------------------------------------------------
# Sources: where text comes from
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One input: a file on disk (plain or .gz) or the built-in corpus. Standard input and named
    corpora are files too (spooled or downloaded into the cache) that keep the name the user gave."""

    path: str
    name: str = ""  # what the user typed, when it is not the file: "-" or a catalog name
    sha256: str = ""  # known in advance for spooled stdin and verified downloads

    @property
    def is_builtin(self) -> bool:
        return self.path == BUILTIN

    @property
    def label(self) -> str:
        """How messages name this input."""
        return "standard input" if self.name == STDIN else self.name or self.path

    def fingerprint(self) -> dict:
        if self.is_builtin:
            return {"path": BUILTIN, "python": sys.version.split()[0]}
        if self.sha256:  # content-addressed: a new spool of the same text hits the same cache entry
            return {"sha256": self.sha256}
        st = os.stat(self.path)
        return {"path": os.path.abspath(self.path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def size(self) -> int:
        return len(builtin_text().encode("utf-8")) if self.is_builtin else os.path.getsize(self.path)

    def describe(self, sha256: str) -> dict:
        """For the run record: the name to train on again (resume), size and content hash."""
        record = {"path": self.name or self.path, "size": self.size(), "sha256": sha256}
        if self.name:
            record["file"] = self.path
        elif not self.is_builtin:  # a resume from another directory finds a path given relative
            record["absolute"] = os.path.abspath(self.path)
        return record

    def open_bytes(self):
        if self.is_builtin:
            return io.BytesIO(builtin_text().encode("utf-8"))
        if self.path.endswith(".gz"):
            return gzip.open(self.path, "rb")
        return open(self.path, "rb")


def _walk(directory: Path, glob: str) -> list[Path]:
    """The files under `directory` whose names match `glob`, sorted; hidden ones (a dot-file, or any
    file under a dot-directory: .git, .venv) are left out, and so is anything outside the directory.
    A file reached twice (through a symbolic link) is read once, where it comes first."""
    if Path(glob).is_absolute() or ".." in Path(glob).parts:
        raise UsageError(f"--glob {glob!r}: must be a pattern within the directory, such as '*.txt' or 'notes/*.md'")
    files, seen = [], set()
    for f in sorted(directory.rglob(glob)):
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(directory).parts):
            same = (status := f.stat()).st_dev, status.st_ino  # a link, symbolic or hard, to a file read already
            if same not in seen:
                files.append(f)
                seen.add(same)
    return files


def resolve_sources(paths: list[str | Source], glob: str = "*", progress: Progress | None = None) -> list[Source]:
    """Turn command-line arguments into a list of files: directories are walked (sorted, filtered
    by `glob`), `-` is standard input, `builtin` and other catalog names are named corpora (fetched on
    first use). A real file or directory of the same name wins over a catalog name."""
    if not paths:
        return [Source(BUILTIN)]
    if paths.count(STDIN) > 1:
        raise UsageError("'-' (standard input) can be given only once")
    sources = []
    for p in paths:
        if isinstance(p, Source):  # already resolved (standard input spooled once for several models)
            sources.append(p)
            continue
        path = Path(p)
        if p == STDIN:
            sources.append(spool_stdin())
        elif path.is_dir():
            files = _walk(path, glob)
            if not files:
                raise InputError(f"{p}: directory has no files matching '{glob}'; check the path or --glob")
            sources.extend(Source(str(f)) for f in files)
        elif path.is_file():
            sources.append(Source(str(path)))
        elif path.is_fifo():  # a named pipe or the shell's process substitution: <(zcat book.txt.gz)
            try:
                with open(path, "rb") as stream:
                    sources.append(spool(stream, str(p)))
            except OSError as e:
                raise InputError(f"{p}: cannot read it ({e.strerror or e})") from None
        elif path.exists():
            raise InputError(f"{p}: not a regular file, directory or pipe")
        elif p == BUILTIN:
            sources.append(Source(BUILTIN))
        elif p in catalog.CATALOG:
            entry = catalog.CATALOG[p]
            sources.append(Source(str(fetch_named(p, progress)), name=p, sha256=entry.sha256))
        else:
            raise InputError(
                f"{p}: no such file or directory; pass a text file, a directory, '-' for standard input "
                f"or a corpus name ({', '.join(catalog.CATALOG)}; see charrnn corpus list)"
            )
    return sources


def fetch_named(name: str, progress: Progress | None = None) -> Path:
    """The local file of catalog corpus `name`, downloaded into the cache if it is not there yet."""
    return catalog.fetch(catalog.CATALOG[name], cache_dir() / "corpora", progress)


def stdin_stream(flag: str = "'-'"):
    """The binary standard input, or a clear error when the shell closed it (`<&-`)."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise UsageError(f"{flag} reads standard input, which is closed; pipe text in, or pass a file instead")
    return stream


def spool_stdin() -> Source:
    """Copy standard input into the cache (see `spool`)."""
    stream = stdin_stream()
    if stream.isatty():
        raise UsageError("'-' reads standard input, which is a terminal; pipe text in: cat book.txt | charrnn train -")
    return spool(stream, STDIN)


def spool(stream, name: str) -> Source:
    """Copy a stream (standard input, a pipe) into the cache: it can be read only once, and twice is
    needed. Named by its sha256, so that the same text piped in again finds its encoded ids there."""
    what = "standard input" if name == STDIN else name
    folder = _cache_folder("stdin")
    tmp = files.temporary(folder / "spool")  # its final name, the sha256, is known only at the end
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            while data := stream.read(CHUNK_BYTES):
                out.write(data)
                digest.update(data)
        path = folder / digest.hexdigest()
        files.commit(tmp, path)
    except OSError as e:
        raise CharRNNError(
            f"{what}: cannot copy it to {folder} ({e.strerror or e}); check space or CHARRNN_CACHE"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return Source(str(path), name=name, sha256=digest.hexdigest())


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def read_chunks(
    source: Source, chunk_bytes: int | None = None, on_raw: Callable[[int], None] | None = None
) -> Iterator[bytes]:
    """The raw bytes of one source (decompressed if .gz), chunk by chunk (CHUNK_BYTES by default).
    `on_raw(position)` hears how far into the file on disk each chunk reaches (compressed bytes for
    .gz), which is what a progress bar over the file's size should count."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    try:
        f = source.open_bytes()
    except OSError as e:
        raise InputError(f"{source.label}: cannot read: {e.strerror or e}") from None
    compressed = getattr(f, "fileobj", None)  # a .gz: the file under the decompressor
    position = 0
    with f:
        while True:
            try:
                data = f.read(chunk_bytes)
                position = compressed.tell() if compressed is not None else position + len(data)
            except (OSError, EOFError, zlib.error) as e:  # gzip raises these for corrupt or truncated files
                hint = "; the compressed file is damaged, check it with gzip -t" if isinstance(e, zlib.error) else ""
                raise InputError(f"{source.label}: cannot read: {e}{hint}") from None
            if not data:
                return
            if on_raw:
                on_raw(position)
            yield data


def decode_chunks(chunks: Iterable[bytes], options: TextOptions, label: str) -> Iterator[str]:
    """Decoded text of a stream of byte chunks, with the decoding policy applied.

    A character split across chunk borders decodes correctly (incremental decoder); a leading BOM
    is dropped; "\r\n" split across a border still becomes one "\n"; a NUL byte means binary.
    """
    try:
        decoder = codecs.getincrementaldecoder(options.encoding)(errors=options.errors)
    except LookupError:
        raise UsageError(f"unknown encoding '{options.encoding}'; use e.g. --encoding latin-1") from None
    consumed = 0  # bytes read before the current chunk, for error offsets
    pending_cr = ""
    first = True
    head = b""  # the first bytes, to recognise a UTF-16/32 byte-order mark in an error
    for data in itertools.chain(chunks, [None]):  # None: the end, to flush the decoder
        final = data is None
        data = data or b""
        head = head or data[:4]
        held = len(decoder.getstate()[0])
        try:
            text = decoder.decode(data, final=final)
        except UnicodeError as e:  # UnicodeDecodeError, or a bare UnicodeError from the utf-16/32 BOM check
            offset = consumed - held + getattr(e, "start", 0)
            bom = utf16_or_32_bom(head)
            if bom and not codecs.lookup(options.encoding).name.startswith(bom):
                raise InputError(
                    f"{label}: starts with a {bom.upper()} byte-order mark, so it is {bom}, not {options.encoding}; "
                    f"pass --encoding {bom}"
                ) from None
            if b"\x00" in data and not bom:  # not text in another encoding: an image, an archive, a git object
                raise InputError(
                    f"{label}: not text (invalid {options.encoding} at byte offset {offset}, and NUL bytes); "
                    "leave it out (a directory: --glob '*.txt'), or train on any file with --bytes"
                ) from None
            if final and isinstance(e, UnicodeDecodeError) and e.end >= len(e.object):  # the last bytes
                raise InputError(
                    f"{label}: ends in the middle of a {options.encoding} character (byte offset {offset}): cut "
                    f"short, or not {options.encoding}; pass --errors replace|ignore, or another --encoding"
                ) from None
            raise InputError(
                f"{label}: invalid {options.encoding} at byte offset {offset}; "
                "pass --encoding (e.g. latin-1) or --errors replace|ignore"
            ) from None
        # A memchr on the raw bytes is far cheaper than searching the text, and enough: a NUL character
        # ends in a zero byte in UTF-8/16/32 and single-byte code pages.
        if b"\x00" in data and "\x00" in text:
            at = consumed + max(0, data.find(b"\x00"))
            raise InputError(
                f"{label}: contains a NUL byte near byte offset {at}, so it looks binary; "
                "train on text files, or on any file with --bytes"
            )
        consumed += len(data)
        if first and text:
            text = text.removeprefix("\ufeff")
            first = False
        if not options.keep_newlines:
            text = pending_cr + text
            pending_cr = ""
            if "\r" in text:  # a fast check: replace() scans the whole chunk even when there is nothing to do
                if text.endswith("\r") and not final:
                    text, pending_cr = text[:-1], "\r"
                text = unify_newlines(text)
        if text:
            yield text


def utf16_or_32_bom(head: bytes) -> str:
    """'utf-32' or 'utf-16' when `head` starts with that encoding's byte-order mark, else ''."""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    return "utf-16" if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else ""


def symbol_chunks(
    source: Source,
    options: TextOptions,
    chunk_bytes: int | None = None,
    on_bytes: Callable[[bytes], None] | None = None,
    on_raw: Callable[[int], None] | None = None,
) -> Iterator[np.ndarray]:
    """Code points of one source, chunk by chunk: characters, or byte values in byte-level mode.
    `on_bytes(data)` sees every raw chunk first (for hashing); `on_raw` as in read_chunks (for progress)."""
    raw = read_chunks(source, chunk_bytes, on_raw)
    if on_bytes:
        raw = _tap(raw, on_bytes)
    if options.bytes:
        return (np.frombuffer(data, dtype=np.uint8) for data in raw)
    return (codepoints(text) for text in decode_chunks(raw, options, source.label))


def _tap(chunks: Iterable[bytes], see: Callable[[bytes], None]) -> Iterator[bytes]:
    for data in chunks:
        see(data)
        yield data


# ---------------------------------------------------------------------------------------------
# Encoding to a memory-mapped id file, cached
# ---------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """Encoded text: `ids` (a read-only memmap of symbol ids) and the vocabulary they index."""

    ids: np.ndarray
    vocab: Vocab
    sources: list[dict] = field(default_factory=list)
    sha256: str = ""  # of the input bytes (see corpus_sha256)
    unknown: int = 0  # characters outside a given vocabulary, skipped or replaced (--unknown)

    def __len__(self) -> int:
        return len(self.ids)

    def require(self, need: int, label: str, purpose: str) -> None:
        """A clear error when the text is shorter than `need` symbols."""
        if len(self) < need:
            raise InputError(
                f"{label}: {len(self)} character(s) of text; {purpose} needs at least {need}: give a longer text"
            )

    def describe(self) -> dict:
        """What was trained on, for the run record."""
        return {"sources": self.sources, "characters": len(self), "sha256": self.sha256}


def unify_newlines(text: str) -> str:
    """ "\r\n" and "\r" as "\n": how text is read unless --keep-newlines."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_corpus(
    paths: list[str | Source],
    options: TextOptions = TextOptions(),
    vocab: Vocab | None = None,
    unknown: str = "error",
    glob: str = "*",
    progress: Progress | None = None,
) -> Corpus:
    """Encode `paths` (or fetch them from the cache) into a memory-mapped Corpus.

    With `vocab` given (fine-tuning, eval), text is encoded with that vocabulary and the `unknown`
    policy, byte-level or not as the vocabulary is; otherwise the vocabulary is built from the text.
    """
    if vocab is not None:
        options = replace(options, bytes=vocab.kind == "bytes")
    sources = resolve_sources(paths, glob, progress)
    key_data = {
        "format": CACHE_FORMAT,
        "sources": [s.fingerprint() for s in sources],
        "options": asdict(options),
        "vocab": vocab.to_json() if vocab else None,
        "unknown": unknown if vocab else None,
    }
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:24]
    folder = cache_dir() / "encoded" / key
    if (folder / "meta.json").exists() and (cached := _open_cached(folder, sources)) is not None:
        return cached
    names = ", ".join(s.label for s in sources)
    if vocab is None:
        vocab = Vocab.byte_level() if options.bytes else scan_vocab(sources, options)
        if not len(vocab):
            raise InputError(f"{names}: no text in it (empty input); give a file with some text in it")
        if not vocab.chars.strip():
            raise InputError(f"{names}: only whitespace, so there is nothing to learn; give some text")
    # Built under a temporary name and renamed into place: a failed or interrupted encode leaves nothing.
    tmp = _cache_folder("encoded") / f".tmp-{key}-{os.getpid()}"
    try:
        tmp.mkdir(exist_ok=True)
        try:
            _encode(sources, options, vocab, unknown, progress, tmp)
        except InputError:  # characters the first pass did not see: the file may have changed since
            _check_unchanged(sources, key_data["sources"])
            raise
        _check_unchanged(sources, key_data["sources"])
        _move_into_place(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cache.enforce_limit(keep=folder)
    if (encoded := _open_cached(folder)) is None:
        raise CharRNNError(f"{folder}: the cache entry just written cannot be read; check CHARRNN_CACHE and free space")
    return encoded


def _check_unchanged(sources: list[Source], fingerprints: list[dict]) -> None:
    """Refuse text read from a file that another program wrote to (or truncated) meanwhile."""
    for source, before in zip(sources, fingerprints):
        try:
            now = source.fingerprint()
        except OSError:
            now = None
        if now != before:
            raise InputError(f"{source.label}: changed while it was being read; try again once it is written")


def _encode(
    sources: list[Source], options: TextOptions, vocab: Vocab, unknown: str, progress: Progress | None, folder: Path
) -> None:
    """Pass 2: write ids.bin and meta.json of `sources` into `folder`."""
    total, finished, count, unknown_count = sum(s.size() for s in sources), 0, 0, 0
    described = []
    with open(folder / "ids.bin", "wb") as out:
        for s in sources:
            own = hashlib.sha256()

            def at(position: int, before: int = finished) -> None:
                if progress:
                    progress("encoding", min(before + position, total), total)

            for cps in symbol_chunks(s, options, on_bytes=own.update, on_raw=at):
                ids, outside = vocab.encode_counting(cps, unknown, source=s.label)
                unknown_count += outside
                out.write(ids.tobytes())
                count += len(ids)
            described.append(s.describe(own.hexdigest()))
            finished += s.size()
    if count == 0:
        names = ", ".join(s.label for s in sources)
        raise InputError(f"{names}: no text in it (empty input); give a file with some text in it")
    meta = {
        "vocab": vocab.to_json(),
        "dtype": np.dtype(vocab.dtype).name,
        "characters": count,
        "sha256": corpus_sha256([d["sha256"] for d in described]),
        "sources": described,
        "unknown": unknown_count,
    }
    (folder / "meta.json").write_text(json.dumps(meta))


def _move_into_place(tmp: Path, folder: Path) -> None:
    """Rename the finished entry `tmp` to `folder`, replacing a stale entry there (a process still
    reading the old one keeps its open files)."""
    try:
        os.replace(tmp, folder)
        return
    except OSError:  # folder exists and is not empty
        pass
    if _recorded(folder) == _recorded(tmp):
        return  # another process has just encoded the same text: keep its entry, which it may be reading
    old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
    os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def scan_vocab(sources: list[Source], options: TextOptions) -> Vocab:
    """Pass 1: the set of characters in `sources`. Most chunks hold no new character, which one
    lookup per character shows (faster than np.unique or np.bincount over the chunk)."""
    present = np.zeros(1, dtype=bool)  # code point -> seen; the last entry stays False and stands for
    for s in sources:  # every larger code point (mode="clip")
        for cps in symbol_chunks(s, options):
            known = np.take(present, cps, mode="clip")
            if not known.all():
                new = np.unique(cps[~known])
                if new[-1] + 2 > len(present):
                    present = np.concatenate([present, np.zeros(int(new[-1]) + 2 - len(present), dtype=bool)])
                present[new] = True
    return Vocab("".join(map(chr, np.flatnonzero(present).tolist())))


def corpus_sha256(hashes: list[str]) -> str:
    """One hash for all inputs: the input's own sha256 when there is one, else the sha256 of their
    sha256s in order (hashing each input once, not twice)."""
    return hashes[0] if len(hashes) == 1 else hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def _open_cached(folder: Path, sources: list[Source] | None = None) -> Corpus | None:
    """The cached Corpus in `folder`, or None when the entry is damaged or, given `sources`, when their
    content is no longer what was encoded (a file rewritten with its size and mtime kept): each file is
    hashed again, which also proves it is still readable."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        recorded = [d["sha256"] for d in meta["sources"]]
        if sources is not None and len(sources) != len(recorded):
            return None
        for source, sha in zip(sources or [], recorded):
            if not source.sha256 and not source.is_builtin and content_sha256(source) != sha:
                return None  # named by their content already: stdin copies and verified downloads
        ids = np.memmap(folder / "ids.bin", dtype=meta["dtype"], mode="r", shape=(meta["characters"],))
        corpus = Corpus(ids, Vocab.from_json(meta["vocab"]), meta["sources"], meta["sha256"], meta.get("unknown", 0))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # rebuilt by the caller
    with contextlib.suppress(OSError):  # a read-only cache cannot record its use
        ids.cache_hold = cache.hold(folder)  # in use for as long as the ids (or a view of them) live
    return corpus


def _recorded(folder: Path) -> list | None:
    """The sources an entry was encoded from (paths and sha256), or None if it is damaged."""
    try:
        return json.loads((folder / "meta.json").read_text())["sources"]
    except (OSError, ValueError, KeyError):
        return None


def content_sha256(source: Source) -> str:
    """The sha256 of the bytes of `source` as read for training (decompressed for .gz)."""
    digest = hashlib.sha256()
    for data in read_chunks(source):
        digest.update(data)
    return digest.hexdigest()


def corpus_from_text(text: str, vocab: Vocab | None = None) -> Corpus:
    """An in-memory corpus, for tests and short inputs such as a prime."""
    vocab = vocab or Vocab("".join(set(text)))
    return Corpus(vocab.encode(text), vocab, [{"path": "<text>", "size": len(text)}])
