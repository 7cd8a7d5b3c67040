"""The vocabulary: the symbols a model knows (characters, or the 256 byte values), and how text is encoded with it."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

import numpy as np

from charrnn import choices
from charrnn.errors import InputError, UnknownCharacters

SURROGATE = re.compile("[\ud800-\udfff]")


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
        choices.check(unknown, choices.Unknown, "--unknown")
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

    def from_user(self, text: str, source: str = "text") -> str:
        """Text typed by a user (a prime) as symbols: unchanged for characters, its UTF-8 bytes for bytes.
        A lone surrogate (what Python makes of bytes that are not UTF-8 on a command line) is no text:
        refused, naming `source`."""
        if not text.isascii() and (found := SURROGATE.search(text)):
            raise InputError(
                f"{source}: character {found.start() + 1} is U+{ord(found.group()):04X}, half of a UTF-16 surrogate "
                "pair (bytes that are not UTF-8?), not a character; pass UTF-8 text"
            )
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
