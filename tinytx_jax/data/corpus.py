"""Training data from a file: dialogs as JSON Lines, or plain UTF-8 text.

Dialog lines are either `{"system": "...", "turns": [{"user": "...", "assistant": "..."}]}`
(`system` optional) or the one-turn shorthand `{"user": "...", "assistant": "..."}`; they
are rendered with the seed's tags and `<eot>` separator, exactly as the built-in corpus.
A `.txt` file is trained on as it is, as a character language model. Any problem stops
before training with one line naming the file, the line and what is wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import numpy as np

from tinytx_jax.configuration import DIALOGS, TEXT, TEXT_SUFFIXES, DataConfig
from tinytx_jax.data import token_cache, typed_variants
from tinytx_jax.text import dialogs, user_text, vocabulary
from tinytx_jax.text.known_questions import KnownTurns

DIALOG_SUFFIXES = (".jsonl", ".json")


class DataError(ValueError):
    """Unusable training data; the message names the file, line and problem."""


@dataclasses.dataclass(frozen=True)
class UserTyping:
    """How user turns reach the model: normalised (`steps`), and in training retyped
    (`augment_rate` of the user turns of every repetition after the first, drawn from
    `seed`)."""

    steps: tuple[str, ...] = ()
    augment_rate: float = 0.0
    seed: int = 0

    @classmethod
    def of(cls, data: DataConfig, seed: int) -> UserTyping:
        """A run's: its data section, and its seed for the retyping draws."""
        return cls(data.user_steps, float(data.augment_user), seed)

    def normalize(self, text: str, known: KnownTurns | None = None) -> str:
        """As chat normalises, given the `known` turns (the training text itself is never
        matched: its turns are the known ones)."""
        return user_text.normalize(text, self.steps, known)

    def render(
        self, conversations: tuple[dialogs.Conversation, ...], repeat: int
    ) -> tuple[str, np.ndarray, np.ndarray]:
        """Text, reply mask and conversation starts of `repeat` passes over `conversations`
        (normalised already): the first pass as written, the others retyped."""
        if self.augment_rate:
            conversations = typed_variants.retyped_passes(
                conversations, repeat, self.augment_rate, self.seed, self.steps
            )
            repeat = 1
        text, mask = dialogs.render_conversations(conversations, repeat)
        return text, mask, dialogs.conversation_offsets(conversations, repeat)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The training text, which characters are reply text, and where it came from.

    Dialogs are held as rendered text; plain text only as its encoding (`encoded`), which
    may come from the token cache without the file being read.
    """

    text: str  # the rendered dialogs ("" for plain text)
    reply_mask: np.ndarray  # uint8 per character: 1 for assistant replies and their end tag
    kind: str  # DIALOGS or TEXT
    source: str
    conversations: tuple[dialogs.Conversation, ...]  # normalised; empty for plain text
    encoded: token_cache.EncodedText | None = None  # plain text: tokens, vocabulary, hash
    from_cache: bool = False
    starts: np.ndarray | None = None  # where each rendered conversation starts (dialogs)
    typing: UserTyping = UserTyping()

    @property
    def length(self) -> int:
        """Characters (tokens) in the corpus."""
        return len(self.encoded.tokens) if self.encoded else len(self.text)

    @functools.cached_property
    def vocabulary(self) -> vocabulary.Vocabulary:
        """Its distinct characters, sorted (no more than uint16 tokens can name)."""
        chars = self.encoded.chars if self.encoded else "".join(sorted(set(self.text)))
        check_vocabulary_size(len(chars), self.source)
        return vocabulary.Vocabulary(chars)

    @property
    def longest_conversation(self) -> int:
        """Characters of its longest rendered conversation (retyped ones included)."""
        return int(np.diff(np.append(self.starts, len(self.text))).max())

    @functools.cached_property
    def fingerprint(self) -> str:
        """The text's hash, computed once per run (checkpoints and resume compare it)."""
        return self.encoded.fingerprint if self.encoded else dialogs.corpus_fingerprint(self.text)


BUILTIN = (dialogs.BUILTIN_CONVERSATIONS, "builtin dialogs")

# Peak host memory per corpus character while a run is built: the text, its UTF-32 copy
# and search indices while encoding, tokens, reply mask and loss weights, the split copies.
BYTES_PER_CHARACTER = 40


def available_memory() -> int:
    """Bytes the kernel says a new allocation can still get (MemAvailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits_in_memory(characters: int, repeat: int, source: str) -> None:
    """Stop before building a corpus that cannot fit, saying what would."""
    need, available = characters * repeat * BYTES_PER_CHARACTER, available_memory()
    if need <= available:
        return
    most = available // max(characters * BYTES_PER_CHARACTER, 1)
    fix = (
        f"lower config.data_repeat to at most {most}"
        if most >= 1
        else "use a smaller file or a machine with more memory"
    )
    raise DataError(
        f"{source}: {repeat:,} x {characters:,} characters would need about "
        f"{need / 1e9:.1f} GB of memory, {available / 1e9:.1f} GB are available: {fix}"
    )


def _dialog_corpus(
    conversations: tuple[dialogs.Conversation, ...], repeat: int, source: str, typing: UserTyping
) -> Corpus:
    check_fits_in_memory(sum(map(dialogs.conversation_length, conversations)), repeat, source)
    normalized = [[typing.normalize(u) for u in c.users] for c in conversations]
    conversations = tuple(c.with_users(u) for c, u in zip(conversations, normalized, strict=True))
    text, mask, starts = typing.render(conversations, repeat)
    return Corpus(
        text, mask, DIALOGS, f"{source} x {repeat}", conversations, starts=starts, typing=typing
    )


def load_corpus(data_path: str, repeat: int, typing: UserTyping = UserTyping()) -> Corpus:
    """The built-in dialogs (empty path) or a file's; dialogs are repeated `repeat` times,
    their user turns as `typing` says."""
    path = Path(data_path)
    if data_path and path.exists() and not path.is_file():  # a directory, a FIFO: never opened
        raise DataError(f"{path} is not a regular file: give the path of a .jsonl or .txt file")
    if data_path and path.suffix not in DIALOG_SUFFIXES + TEXT_SUFFIXES:
        raise DataError(
            f"{path}: unknown data format {path.suffix!r}: use .jsonl for dialogs or .txt "
            "for plain text"
        )
    if data_path and path.suffix in TEXT_SUFFIXES:
        return load_text(path)
    conversations, source = read_dialogs(path) if data_path else BUILTIN
    return _dialog_corpus(conversations, repeat, source, typing)


def read_dialogs(path: Path) -> tuple[tuple[dialogs.Conversation, ...], str]:
    """A dialog file's conversations, and the file's name."""
    content = read_utf8(path)
    if not content.strip():
        raise DataError(f"{path}: the file is empty")
    return parse_dialogs(content, path), str(path)


def load_text(path: Path) -> Corpus:
    """A plain-text corpus, encoded, from the token cache when the file is unchanged."""
    encoded = cached = token_cache.load(path)
    if cached is None:
        content = read_utf8(path)
        if not content.strip():
            raise DataError(f"{path}: the file is empty")
        check_fits_in_memory(len(content), 1, str(path))
        chars = token_cache.distinct_chars(content)
        check_vocabulary_size(len(chars), str(path))  # before the tokens become uint16
        encoded = token_cache.encode_text(content, chars)
        token_cache.save(path, encoded)
    ones = np.ones(len(encoded.tokens), np.uint8)
    return Corpus("", ones, TEXT, str(path), (), encoded, from_cache=cached is not None)


def check_vocabulary_size(size: int, source: str) -> None:
    """Stop on more distinct characters than uint16 tokens can name."""
    if size > vocabulary.MAX_VOCABULARY:
        raise DataError(
            f"{source}: {size:,} distinct characters, more than the "
            f"{vocabulary.MAX_VOCABULARY:,} a character model here takes: is it really text?"
        )


def read_utf8(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 ({error.reason} at byte {error.start})"
        ) from None


def _string(record: dict, key: str, where: str) -> str:
    if key not in record:
        raise DataError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _turn(record: object, where: str) -> dialogs.Turn:
    if not isinstance(record, dict):
        raise DataError(f"{where}: a turn must be an object with 'user' and 'assistant'")
    return _string(record, "user", where), _string(record, "assistant", where)


def parse_dialogs(content: str, path: Path) -> tuple[dialogs.Conversation, ...]:
    """One conversation per non-blank line."""
    conversations = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        system = _string(record, "system", where) if "system" in record else dialogs.SYSTEM_PROMPT
        if "turns" in record:
            turns = record["turns"]
            if not isinstance(turns, list) or not turns:
                raise DataError(f"{where}: field 'turns' must be a non-empty list")
            parsed = tuple(_turn(turn, f"{where} (turn {i})") for i, turn in enumerate(turns, 1))
        elif "user" in record or "assistant" in record:
            parsed = (_turn(record, where),)
        else:
            raise DataError(f"{where}: missing field 'turns' (or 'user' and 'assistant')")
        conversations.append(dialogs.Conversation(parsed, system))
    return tuple(conversations)
