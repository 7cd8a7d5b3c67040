"""Text in, symbol ids out: decoding policy, vocabulary and the cached, memory-mapped id file.

Input is read in chunks (through an incremental decoder for text), so memory does not grow with the
corpus: pass 1 collects the set of characters, pass 2 writes ids to a flat file that training reads
through `numpy.memmap`. Both passes work on whole chunks with numpy (no per-character Python loop).
In byte-level mode (`--bytes`) there is no decoding and the vocabulary is all 256 byte values.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from charrnn.data import cache
from charrnn.data.catalog import Progress
from charrnn.data.sources import (
    Source,
    TextOptions,
    _cache_folder,
    cache_dir,
    content_sha256,
    resolve_sources,
    symbol_chunks,
)
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError, InputError

CACHE_FORMAT = 2


# ---------------------------------------------------------------------------------------------
# Sources: where text comes from
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


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


def corpus_from_text(text: str, vocab: Vocab | None = None) -> Corpus:
    """An in-memory corpus, for tests and short inputs such as a prime."""
    vocab = vocab or Vocab("".join(set(text)))
    return Corpus(vocab.encode(text), vocab, [{"path": "<text>", "size": len(text)}])
