"""Exact match of the greedy replies to every turn, in one batched forward pass.

Greedy decoding gives back a reply exactly if and only if, at each of its characters and at
its `</assistant>`, the most likely next character after the conversation so far is the
right one: up to the first wrong character the decoder feeds the model exactly what
teacher forcing feeds it. So one forward pass over each whole conversation scores all its
turns at once, each in the context of the turns before it, as chat with history presents
it. A turn the decoder cannot give back (its reply holds a tag, it needs more than
`max_new_tokens`, or it ends past `max_len`) counts as a miss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tinytx_jax.model.transformer import TinyTransformer
from tinytx_jax.text import dialogs, vocabulary


@dataclasses.dataclass(frozen=True)
class TurnBatch:
    """Conversations as padded rows; each reply target names the turn it belongs to."""

    inputs_CxL: np.ndarray  # int32, one row per conversation
    targets_CxL: np.ndarray  # int32
    turn_ids_CxL: np.ndarray  # int32: turn index + 1 where a reply is scored, else 0
    possible_K: np.ndarray  # bool per turn: the decoder can give this reply back at all

    @property
    def num_turns(self) -> int:
        return len(self.possible_K)

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows `make_turn_check`'s function takes after the parameters, once grouped
        (`windows.grouped_rows`: its zero padding is "no reply" here too)."""
        return self.inputs_CxL, self.targets_CxL, self.turn_ids_CxL


def turn_batch(
    conversations: tuple[dialogs.Conversation, ...],
    vocab: vocabulary.Vocabulary,
    max_len: int,
    max_new_tokens: int,
) -> TurnBatch:
    """Every assistant turn of `conversations`, laid out for `make_turn_check`."""
    rows, row_turns, possible = [], [], []
    for conversation in conversations:
        tokens, turns = [], []
        for piece, is_reply in dialogs.conversation_segments(conversation):
            encoded = vocab.encode(piece)
            tokens.extend(encoded.tolist())
            turns.extend([len(possible) + 1 if is_reply else 0] * len(encoded))
            if is_reply:
                reply = piece[: -len(dialogs.ASSISTANT_END)]
                possible.append(
                    dialogs.cut_at_tag(reply) == reply
                    and len(encoded) <= max_new_tokens
                    and len(tokens) - 1 <= max_len  # the end tag's position is still predicted
                )
        rows.append(np.asarray(tokens[: max_len + 1], np.int32))
        row_turns.append(np.asarray(turns[: max_len + 1], np.int32))
    shape = (len(rows), max(len(row) for row in rows) - 1)
    inputs, targets, turn_ids = (np.zeros(shape, np.int32) for _ in range(3))
    for r, (row, turns) in enumerate(zip(rows, row_turns, strict=True)):
        inputs[r, : len(row) - 1] = row[:-1]
        targets[r, : len(row) - 1] = row[1:]
        turn_ids[r, : len(row) - 1] = turns[1:]
    return TurnBatch(inputs, targets, turn_ids, np.asarray(possible, bool))


def make_turn_check(model: TinyTransformer, num_turns: int) -> Callable[..., jax.Array]:
    """A jitted `(params, inputs_GxRxL, targets_GxRxL, turn_ids_GxRxL) -> correct_K` (bool)."""

    def check(params, inputs_GxRxL, targets_GxRxL, turn_ids_GxRxL):
        def group_correct(group):
            inputs_RxL, targets_RxL = group
            logits_RxLxV = model.apply({"params": params}, inputs_RxL)
            return jnp.argmax(logits_RxLxV, axis=-1) == targets_RxL

        correct_GxRxL = jax.lax.map(group_correct, (inputs_GxRxL, targets_GxRxL))
        # A turn is right when its least right target is: min over its positions.
        per_turn = jax.ops.segment_min(
            correct_GxRxL.reshape(-1).astype(jnp.int32),
            turn_ids_GxRxL.reshape(-1),
            num_segments=num_turns + 1,
        )
        return per_turn[1:] > 0  # segment 0 gathers every position that is not a reply

    return jax.jit(check)


def count_matches(correct_K: jax.Array, batch: TurnBatch) -> int:
    """Turns the greedy decoder would give back exactly."""
    return int(np.sum(np.asarray(correct_K) & batch.possible_K))
