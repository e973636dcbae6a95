"""Token arrays into model rows: validation chunks, grouped rows, windows, and grouped
rows placed over the devices.

The rows are built in plain numpy on the host; `rows_on_devices` moves them to the
devices once, each device holding its share of every group.
"""

from __future__ import annotations

import jax
import numpy as np

from tinytx_jax import parallel


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


# Positions scored per forward pass: groups small enough to stay in cache (docs/measured.md).
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


def rows_on_devices(
    chunks: tuple[np.ndarray, ...], mesh: jax.sharding.Mesh
) -> tuple[jax.Array, ...]:
    """Evaluation rows (validation, exact match) in groups, split over the devices: each
    scores its share."""
    grouped = grouped_rows(chunks, mesh.size)
    sharding = parallel.rows_sharded(mesh, axis=1)
    return tuple(parallel.to_global(a, sharding) for a in grouped)
