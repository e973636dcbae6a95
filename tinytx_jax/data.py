"""Input pipeline: dialog rendering, the built-in corpus, the character vocabulary, the split.

Everything here is plain numpy on the host; the training loop moves the token arrays
to the device once and samples windows there.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

SYSTEM_PROMPT = "You are helpful."
END_OF_TURN = "<eot>\n"
ASSISTANT_END = "</assistant>"
# Every tag the rendering uses. A reply ends at the first one the model produces (normally
# `</assistant>`): a weakly trained model that runs on into `<eot>` or `<user>` is cut there.
TAGS = ("<system>", "</system>", "<user>", "</user>", "<assistant>", ASSISTANT_END, "<eot>")
BUILTIN_DIALOGS: tuple[tuple[str, str], ...] = (
    ("hi", "hello!"),
    ("what is 2+2?", "4"),
    ("color of sky?", "blue"),
)
BUILTIN_REPEAT = 300
MAX_VOCABULARY = 65_535  # tokens are stored as uint16
ENCODE_PIECE = 1 << 22  # characters encoded at a time
VALIDATION_FRACTION = 0.1


Turn = tuple[str, str]  # (user, assistant)


@dataclasses.dataclass(frozen=True)
class Conversation:
    """A system prompt and one or more user/assistant turns."""

    turns: tuple[Turn, ...]
    system: str = SYSTEM_PROMPT


BUILTIN_CONVERSATIONS = tuple(Conversation((dialog,)) for dialog in BUILTIN_DIALOGS)


def system_prefix(system: str = SYSTEM_PROMPT) -> str:
    """The start every chat prompt shares, whatever the history and the user line."""
    return f"<system>{system}</system>\n<user>"


def render_prompt(user: str, system: str = SYSTEM_PROMPT, history: tuple[Turn, ...] = ()) -> str:
    """The text the model continues to answer `user` after `history`: up to `<assistant>`."""
    context = "".join(f"<user>{u}</user>\n<assistant>{a}{ASSISTANT_END}\n" for u, a in history)
    return f"<system>{system}</system>\n{context}<user>{user}</user>\n<assistant>"


def conversation_segments(conversation: Conversation) -> list[tuple[str, bool]]:
    """The rendered text in pieces, each flagged True if it is reply text or its end tag."""
    segments = [(f"<system>{conversation.system}</system>\n", False)]
    for user, assistant in conversation.turns:
        segments.append((f"<user>{user}</user>\n<assistant>", False))
        segments.append((assistant + ASSISTANT_END, True))
        segments.append(("\n", False))
    segments.append((END_OF_TURN, False))
    return segments


def cut_at_tag(text: str, tags: tuple[str, ...] = TAGS) -> str:
    """`text` up to the first of `tags` in it: what a reply shows of the model's output."""
    cut = min((i for i in (text.find(tag) for tag in tags) if i >= 0), default=len(text))
    return text[:cut]


def conversation_length(conversation: Conversation) -> int:
    """Characters of the rendered conversation, `<system>` to its `<eot>` line."""
    return sum(len(piece) for piece, _ in conversation_segments(conversation))


def conversation_offsets(conversations: tuple[Conversation, ...], repeat: int = 1) -> np.ndarray:
    """The character offset at which each conversation of the repeated text starts."""
    lengths = [conversation_length(c) for c in conversations]
    starts = np.cumsum([0, *lengths])
    return np.concatenate([starts[:-1] + k * starts[-1] for k in range(repeat)]).astype(np.int64)


def render_conversations(
    conversations: tuple[Conversation, ...], repeat: int = 1
) -> tuple[str, np.ndarray]:
    """Training text exactly as the seed rendered dialogs, and its per-character reply mask."""
    segments = [piece for c in conversations for piece in conversation_segments(c)]
    text = "".join(piece for piece, _ in segments)
    mask = np.concatenate([np.full(len(piece), flag, np.uint8) for piece, flag in segments])
    return text * repeat, np.tile(mask, repeat)


def builtin_corpus(repeat: int = BUILTIN_REPEAT) -> str:
    """The seed's corpus: its three dialogs in order, the pass repeated `repeat` times."""
    return render_conversations(BUILTIN_CONVERSATIONS, repeat)[0]


def corpus_fingerprint(text: str) -> str:
    """Identifies the exact training text, so a checkpoint can tell if the data changed."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Sorted distinct characters; a token is a character's index in that order."""

    chars: str

    def __post_init__(self) -> None:
        index = {c: i for i, c in enumerate(self.chars)}
        object.__setattr__(self, "_index", index)
        code_points = np.frombuffer(self.chars.encode("utf-32-le"), np.uint32)
        object.__setattr__(self, "_code_points", code_points)  # sorted, as the chars are

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        return cls("".join(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    def unknown_chars(self, text: str) -> str:
        """The distinct characters of `text` the vocabulary lacks, in order of appearance."""
        return "".join(dict.fromkeys(c for c in text if c not in self._index))

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text`; characters outside the vocabulary are dropped.

        A binary search over the sorted code points, not a Python loop: a 200 MB corpus
        encodes in seconds, with a few bytes per character of memory.
        """
        pieces = [
            self._encode_piece(text[i : i + ENCODE_PIECE])
            for i in range(0, len(text), ENCODE_PIECE)
        ]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)

    def _encode_piece(self, text: str) -> np.ndarray:
        # In pieces: the temporaries (UTF-32 codes, int64 indices) stay small for any corpus.
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
        ids = np.searchsorted(self._code_points, codes)
        known = ids < len(self._code_points)
        known[known] = self._code_points[ids[known]] == codes[known]
        return ids[known].astype(np.int32)

    def decode(self, tokens) -> str:
        return "".join(self.chars[int(t)] for t in tokens)


def split_tokens(
    tokens: np.ndarray, validation_fraction: float = VALIDATION_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """The seed's split: `cutoff = max(floor(n * 0.9), 2)`, train before, validation after."""
    cutoff = max(int(np.floor(len(tokens) * (1.0 - validation_fraction))), 2)
    return tokens[:cutoff], tokens[cutoff:]


def validation_chunks(
    tokens: np.ndarray, chunk_len: int, loss_mask: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """Consecutive non-overlapping (input, target) chunks, padded to one fixed shape.

    Returns `inputs, targets, mask`, each `[num_chunks, chunk_len]`; the mask marks the
    real targets (and, with `loss_mask`, only those it selects) so a short last chunk
    costs no recompilation.
    """
    num_targets = len(tokens) - 1
    if num_targets < 1:
        raise ValueError("validation split needs at least 2 tokens")
    num_chunks = -(-num_targets // chunk_len)
    padded = num_chunks * chunk_len
    inputs = np.zeros(padded, np.int32)
    targets = np.zeros(padded, np.int32)
    mask = np.zeros(padded, np.float32)
    inputs[:num_targets] = tokens[:-1]
    targets[:num_targets] = tokens[1:]
    mask[:num_targets] = 1.0 if loss_mask is None else loss_mask[1:]
    shape = (num_chunks, chunk_len)
    return inputs.reshape(shape), targets.reshape(shape), mask.reshape(shape)


def conversation_chunks(
    tokens: np.ndarray, starts: np.ndarray, chunk_len: int, loss_mask: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """One (input, target) row per conversation, from its first character, as chat sees it.

    Same layout as `validation_chunks`; a conversation longer than `chunk_len` is scored
    on its first `chunk_len` targets (the positions training reaches).
    """
    ends = np.append(starts[1:], len(tokens))
    shape = (len(starts), chunk_len)
    inputs, targets = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    mask = np.zeros(shape, np.float32)
    for row, (start, end) in enumerate(zip(starts, ends, strict=True)):
        end = min(end, start + chunk_len + 1)
        count = end - start - 1
        inputs[row, :count] = tokens[start : end - 1]
        targets[row, :count] = tokens[start + 1 : end]
        mask[row, :count] = 1.0 if loss_mask is None else loss_mask[start + 1 : end]
    return inputs, targets, mask


# Positions scored per forward pass. Smaller groups stay in cache: against 32,768, the
# FAQ's exact-match check took 0.36 vs 0.51 s and char_lm's full validation 2.24 vs 2.48 s.
EVAL_TOKENS_PER_GROUP = 8_192


def grouped_rows(arrays: tuple[np.ndarray, ...], multiple: int = 1) -> tuple[np.ndarray, ...]:
    """`[C, T]` evaluation arrays as `[G, R, T]`, scored R rows at a time so that the
    logits' memory stays bounded whatever the split's size; zero rows (weight 0) pad the
    last group, and R is a multiple of `multiple` (the devices that share each group)."""
    count, length = arrays[0].shape
    rows = min(count, max(1, EVAL_TOKENS_PER_GROUP // length))
    rows = -(-rows // multiple) * multiple
    groups = -(-count // rows)
    padded = []
    for array in arrays:
        full = np.zeros((groups * rows, length), array.dtype)
        full[:count] = array
        padded.append(full.reshape(groups, rows, length))
    return tuple(padded)


def sampled_windows(
    tokens: np.ndarray, count: int, chunk_len: int, loss_mask: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """`count` windows of a big validation split, drawn once with a fixed seed, so that
    every epoch (and every run on the same data) scores the same ones (`eval_steps`)."""
    if len(tokens) - 1 <= count * chunk_len:  # a cap no smaller than the split: all of it
        return validation_chunks(tokens, chunk_len, loss_mask)
    starts = np.random.default_rng(0).integers(0, len(tokens) - chunk_len, count)
    offsets = starts[:, None] + np.arange(chunk_len + 1)[None, :]
    windows = tokens[offsets].astype(np.int32)
    mask = np.ones((count, chunk_len)) if loss_mask is None else loss_mask[offsets[:, 1:]]
    return windows[:, :-1], windows[:, 1:], mask.astype(np.float32)
