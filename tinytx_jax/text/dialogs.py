"""The dialog format: tags, the built-in dialogs, and how conversations and prompts render.

Training, chat, eval and serving all render text here, so a prompt is always exactly what
the model was trained to continue.
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


Turn = tuple[str, str]  # (user, assistant)


@dataclasses.dataclass(frozen=True)
class Conversation:
    """A system prompt and one or more user/assistant turns."""

    turns: tuple[Turn, ...]
    system: str = SYSTEM_PROMPT

    @property
    def users(self) -> tuple[str, ...]:
        """Its user turns, in order."""
        return tuple(user for user, _ in self.turns)

    def with_users(self, users: list[str]) -> Conversation:
        """This conversation with `users` as its user turns; the replies stay as they are."""
        turns = tuple(zip(users, (reply for _, reply in self.turns), strict=True))
        return Conversation(turns, self.system)


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
