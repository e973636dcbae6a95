"""Plain-text corpora encoded once and kept on disk: a rerun on the same file skips the
UTF-8 decode, the vocabulary scan, the encoding and the hash (seconds for 200 MB).

An entry is keyed by the file's resolved path, size and modification time, and holds the
uint16 tokens, the vocabulary and the text's fingerprint. The cache lives in
`$TINYTX_CACHE_DIR` (default `~/.cache/tinytx_jax`); a cache that cannot be read or
written is skipped without a word, since it only saves time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from tinytx_jax.text import dialogs, vocabulary

FORMAT = 1
ENVIRONMENT_VARIABLE = "TINYTX_CACHE_DIR"


@dataclasses.dataclass(frozen=True)
class EncodedText:
    """A plain-text corpus as the model sees it."""

    tokens: np.ndarray  # [N] uint16
    chars: str  # the vocabulary, sorted
    fingerprint: str  # of the text, as dialogs.corpus_fingerprint computes it


def encode_text(text: str, chars: str) -> EncodedText:
    """Tokens and fingerprint of `text` over its vocabulary `chars` (at most 65,535)."""
    vocab = vocabulary.Vocabulary(chars)
    return EncodedText(
        vocab.encode(text).astype(np.uint16), vocab.chars, dialogs.corpus_fingerprint(text)
    )


def distinct_chars(text: str) -> str:
    """`"".join(sorted(set(text)))`, by numpy over the code points, piece by piece."""
    codes: set[int] = set()
    for i in range(0, len(text), vocabulary.ENCODE_PIECE):
        piece = text[i : i + vocabulary.ENCODE_PIECE].encode("utf-32-le", "surrogatepass")
        codes.update(np.unique(np.frombuffer(piece, np.uint32)).tolist())
    return "".join(map(chr, sorted(codes)))


def cache_file(path: Path) -> Path:
    status = path.stat()
    identity = f"{FORMAT}|{path.resolve()}|{status.st_size}|{status.st_mtime_ns}"
    name = hashlib.sha256(identity.encode()).hexdigest()[:32]
    return cache_root() / "tokens" / f"{name}.npz"


def cache_root() -> Path:
    """This user's tinytx-jax caches (encoded texts, compiled programs)."""
    return Path(os.environ.get(ENVIRONMENT_VARIABLE) or Path.home() / ".cache" / "tinytx_jax")


def load(path: Path) -> EncodedText | None:
    """The cached encoding of the file at `path`, if there is a readable one."""
    try:
        with np.load(cache_file(path), allow_pickle=False) as entry:
            chars = "".join(map(chr, entry["chars"].tolist()))
            return EncodedText(entry["tokens"], chars, str(entry["fingerprint"]))
    except (OSError, ValueError, KeyError):
        return None


def save(path: Path, encoded: EncodedText) -> None:
    """Keep `encoded` for the next run on the file at `path` (written whole, or not at all)."""
    try:
        target = cache_file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.partial")
        with open(partial, "wb") as file:
            np.savez(
                file,
                tokens=encoded.tokens,
                chars=np.array([ord(c) for c in encoded.chars], np.uint32),
                fingerprint=np.array(encoded.fingerprint),
            )
        os.replace(partial, target)
    except OSError:
        return
