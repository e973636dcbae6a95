"""The train/validation split of a corpus: the seed's tail, or whole held-out conversations.

`tail` (the seed's): the last `validation_fraction` of the repeated token stream. With
`data_repeat`, that tail is copies of training conversations, so it measures memorisation.
`conversations`: that fraction of the conversations (at least one) is held out before
repetition, chosen by a fixed permutation, so every run on the same file holds out the same
ones and validation measures dialogs the model never saw.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tinytx_jax.configuration import ConfigError
from tinytx_jax.data import windows
from tinytx_jax.data.corpus import DIALOGS, Corpus
from tinytx_jax.text import dialogs, vocabulary

HELDOUT_PERMUTATION_SEED = 0
VALIDATION_FRACTION = 0.1


def seed_cutoff(length: int, validation_fraction: float = VALIDATION_FRACTION) -> int:
    """Where the seed's split cuts `length` tokens: `max(floor(n * 0.9), 2)`."""
    return max(int(np.floor(length * (1.0 - validation_fraction))), 2)


@dataclasses.dataclass(frozen=True)
class Split:
    """Token streams of both sides, and which conversations each side holds."""

    train_tokens: np.ndarray  # [N] int32
    train_mask: np.ndarray  # [N] uint8: 1 on reply characters and their end tag
    train_starts: np.ndarray  # [S] where conversations start in train_tokens (dialogs only)
    val_tokens: np.ndarray  # [M] int32
    val_mask: np.ndarray  # [M] uint8
    val_starts: np.ndarray  # where whole conversations start in val_tokens (dialogs only)
    train_conversations: tuple[dialogs.Conversation, ...]  # distinct, before repetition
    heldout_conversations: tuple[dialogs.Conversation, ...]  # empty for the tail split

    def validation_chunks(
        self, block_size: int, replies_only: bool, aligned: bool
    ) -> tuple[np.ndarray, ...]:
        """`inputs, targets, weights` of the validation side, each `[C, block_size]`.

        `aligned`: one row per conversation from its start (training with
        window_start=conversation only ever sees conversations there, as chat does);
        otherwise the seed's consecutive chunks. `replies_only` weights only reply targets.
        """
        mask = self.val_mask if replies_only else None
        if aligned:
            return windows.conversation_chunks(self.val_tokens, self.val_starts, block_size, mask)
        return windows.validation_chunks(self.val_tokens, block_size, mask)


def heldout_indices(count: int, validation_fraction: float) -> np.ndarray:
    """Sorted indices of the conversations held out of `count` (at least one, never all)."""
    held = min(max(1, round(count * validation_fraction)), count - 1)
    order = np.random.default_rng(HELDOUT_PERMUTATION_SEED).permutation(count)
    return np.sort(order[:held])


def split_corpus(
    corpus: Corpus,
    vocab: vocabulary.Vocabulary,
    validation_split: str,
    validation_fraction: float,
    repeat: int,
) -> Split:
    """Split `corpus` (already rendered with `repeat`) as `validation_split` says."""
    if validation_split == "conversations":
        if corpus.kind != DIALOGS:
            raise ConfigError(
                "config.validation_split='conversations' needs dialog data, and "
                f"{corpus.source} is plain text: use validation_split='tail'"
            )
        count = len(corpus.conversations)
        if count < 2:
            raise ConfigError(
                f"{corpus.source}: config.validation_split='conversations' needs at least 2 "
                f"conversations, found {count}: add dialogs or use validation_split='tail'"
            )
        held = set(heldout_indices(count, validation_fraction).tolist())
        train = tuple(c for i, c in enumerate(corpus.conversations) if i not in held)
        heldout = tuple(c for i, c in enumerate(corpus.conversations) if i in held)
        train_text, train_mask, train_starts = corpus.typing.render(train, repeat)
        val_text, val_mask = dialogs.render_conversations(heldout)
        val_starts = dialogs.conversation_offsets(heldout)
        return Split(
            vocab.encode(train_text),
            train_mask,
            train_starts,
            vocab.encode(val_text),
            val_mask,
            val_starts,
            train,
            heldout,
        )
    cutoff = seed_cutoff(corpus.length, validation_fraction)
    tokens = corpus.encoded.tokens if corpus.encoded else vocab.encode(corpus.text)
    if corpus.encoded and corpus.encoded.chars != vocab.chars:  # a grown vocabulary
        tokens = vocab.encode(corpus.encoded.chars)[tokens]
    starts = corpus.starts if corpus.starts is not None else np.zeros(0, np.int64)
    if corpus.kind == DIALOGS and not (starts >= cutoff).any():
        # A few short dialogs: the tail holds no conversation's start, so validation
        # starts at the last one (chat and exact match see conversations from there).
        if len(starts) < 2:
            raise ConfigError(
                f"{corpus.source}: one conversation, not repeated, cannot be split into "
                "training and validation: add dialogs or raise config.data_repeat"
            )
        cutoff = int(starts[-1])
    return Split(
        tokens[:cutoff],
        corpus.reply_mask[:cutoff],
        starts[starts < cutoff],
        tokens[cutoff:],
        corpus.reply_mask[cutoff:],
        starts[starts >= cutoff] - cutoff,
        corpus.conversations,
        (),
    )
