"""Where text comes from and how its bytes become characters: files, directories, standard input and
named corpora, read in chunks through an incremental decoder so that memory does not grow with the text."""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import itertools
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn import choices, files
from charrnn.data import cache, catalog
from charrnn.data.catalog import Progress, builtin_text
from charrnn.data.vocab import SURROGATE, codepoints
from charrnn.errors import CharRNNError, InputError, UsageError

CHUNK_BYTES = 1 << 20  # 1 MiB of input per chunk: numpy's temporaries stay in cache, and memory stays flat


BUILTIN = "builtin"  # the name of the offline corpus assembled from the Python standard library


STDIN = "-"


@dataclass(frozen=True)
class TextOptions:
    """How bytes become characters. Part of the cache key and stored with every run."""

    encoding: str = "utf-8"
    errors: str = "strict"  # strict | replace | ignore
    keep_newlines: bool = False  # False: "\r\n" and "\r" become "\n"
    bytes: bool = False  # byte-level: no decoding, 256 symbols, any file

    def __post_init__(self) -> None:
        choices.check(self.errors, choices.DecodingErrors, "--errors")
        try:
            text_encoding = codecs.lookup(self.encoding)._is_text_encoding
        except (LookupError, TypeError):
            raise UsageError(f"unknown encoding {self.encoding!r}; use e.g. --encoding latin-1") from None
        if not text_encoding:  # rot13, base64, zlib: codecs Python has that do not turn bytes into text
            raise UsageError(f"--encoding {self.encoding}: not a text encoding; use e.g. utf-8, latin-1 or cp1252")


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
    # Only a codec outside UTF-8/16/32 (unicode_escape, raw_unicode_escape) can decode to a lone
    # surrogate: half a character, which no model, file or terminal can take afterwards.
    surrogates_possible = not codecs.lookup(options.encoding).name.startswith("utf")
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
        if surrogates_possible and (found := SURROGATE.search(text)):
            raise InputError(
                f"{label}: decoded with {options.encoding}, it holds U+{ord(found.group()):04X}, half of a UTF-16 "
                "surrogate pair and not a character; pass the text's real --encoding"
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


def unify_newlines(text: str) -> str:
    """ "\r\n" and "\r" as "\n": how text is read unless --keep-newlines."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def content_sha256(source: Source) -> str:
    """The sha256 of the bytes of `source` as read for training (decompressed for .gz)."""
    digest = hashlib.sha256()
    for data in read_chunks(source):
        digest.update(data)
    return digest.hexdigest()


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
