"""Attention's arithmetic: scaled dot-product attention, rotary positions, QK-norm.

Tensor names carry their shapes: B batch, T query positions, S key positions, H heads,
Dh head width.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

ROPE_BASE = 10_000.0
CAUSAL_BLOCK = 64  # queries per block of the CPU's causal attention


def rotate(x_BxTxHxDh: jax.Array, positions: jax.Array) -> jax.Array:
    """Rotary position embedding (RoFormer): pairs of channels turned by angles that grow
    with the position, so a query-key product depends only on their distance.
    `positions`: `[T]` or `[1, T]`, shared by every row, or `[B, T]`, a row's own."""
    Dh = x_BxTxHxDh.shape[-1]
    inverse_freq_F = ROPE_BASE ** (-jnp.arange(0, Dh // 2, dtype=jnp.float32) / (Dh // 2))
    positions_BxT = positions.reshape(-1, positions.shape[-1]).astype(jnp.float32)
    angles_BxTxF = positions_BxT[:, :, None] * inverse_freq_F[None, None]
    cos, sin = jnp.cos(angles_BxTxF)[:, :, None], jnp.sin(angles_BxTxF)[:, :, None]
    x1, x2 = jnp.split(x_BxTxHxDh.astype(jnp.float32), 2, axis=-1)
    turned = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
    return turned.astype(x_BxTxHxDh.dtype)


def rms_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """`x` scaled to unit root-mean-square over its last axis (no learned scale)."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def attention_weights(q_BxTxHxDh: jax.Array, k_BxTxHxDh: jax.Array) -> jax.Array:
    """`[B, H, T, T]` float32: how much each query attends to each earlier key, the
    softmax every path of `attend` computes (later keys get exactly 0)."""
    Dh = q_BxTxHxDh.shape[-1]
    mask_TxS = causal_mask(q_BxTxHxDh.shape[1])
    scores_BxHxTxS = jnp.einsum("bthd,bshd->bhts", q_BxTxHxDh, k_BxTxHxDh).astype(jnp.float32)
    scores_BxHxTxS = jnp.where(mask_TxS[None, None], scores_BxHxTxS / jnp.sqrt(Dh), -jnp.inf)
    return jax.nn.softmax(scores_BxHxTxS, axis=-1)


def cached_attention_weights(
    q_BxTxHxDh: jax.Array, k_BxHxSxDh: jax.Array, mask_BxTxS: jax.Array
) -> jax.Array:
    """`attention_weights` over a KV cache kept heads-major; `mask_BxTxS` is each row's own
    (the slots of a decode step), or `[1, T, S]` for every row. The product runs over
    rows and heads as one batch axis of `B * H` contiguous blocks: with a head axis of
    its own, XLA:CPU transposed a one-head cache at every step."""
    B, T, H, Dh = q_BxTxHxDh.shape
    q_NxTxDh = q_BxTxHxDh.transpose(0, 2, 1, 3).reshape(B * H, T, Dh)
    k_NxSxDh = k_BxHxSxDh.reshape(B * H, -1, Dh)
    scores_NxTxS = jnp.einsum("ntd,nsd->nts", q_NxTxDh, k_NxSxDh).astype(jnp.float32)
    scores_BxHxTxS = scores_NxTxS.reshape(B, H, T, -1)
    scores_BxHxTxS = jnp.where(mask_BxTxS[:, None], scores_BxHxTxS / jnp.sqrt(Dh), -jnp.inf)
    return jax.nn.softmax(scores_BxHxTxS, axis=-1)


def attend_cached(
    q_BxTxHxDh: jax.Array, k_BxHxSxDh: jax.Array, v_BxHxSxDh: jax.Array, mask_BxTxS: jax.Array
) -> jax.Array:
    """Attention of new queries over a KV cache kept heads-major, so that each (row,
    head) reads its keys and values as one contiguous block: a decode step's product
    then runs about 10x faster on a CPU than over a `[B, S, H, Dh]` cache
    (docs/measured.md). Returns `[B, T, H, Dh]`."""
    B, T, H, Dh = q_BxTxHxDh.shape
    if B * H == 1 and jax.default_backend() == "cpu":
        return _attend_one_sequence(q_BxTxHxDh, k_BxHxSxDh, v_BxHxSxDh, mask_BxTxS[0])
    weights_BxHxTxS = cached_attention_weights(q_BxTxHxDh, k_BxHxSxDh, mask_BxTxS)
    weights_NxTxS = weights_BxHxTxS.reshape(B * H, T, -1).astype(v_BxHxSxDh.dtype)
    out_NxTxDh = jnp.einsum("nts,nsd->ntd", weights_NxTxS, v_BxHxSxDh.reshape(B * H, -1, Dh))
    return out_NxTxDh.reshape(B, H, T, Dh).transpose(0, 2, 1, 3)


def causal_mask(T: int) -> jax.Array:
    """`[T, T]`: True where a query may attend to a key (the key is not after it)."""
    return jnp.arange(T)[None, :] <= jnp.arange(T)[:, None]


def attend(
    q_BxTxHxDh: jax.Array,
    k_BxSxHxDh: jax.Array,
    v_BxSxHxDh: jax.Array,
    dropout: nn.Dropout | None = None,
) -> jax.Array:
    """Causal scaled dot-product attention of T positions over themselves (S == T);
    returns `[B, T, H, Dh]`.

    Without dropout this is `jax.nn.dot_product_attention` (fused kernels where the
    platform has them), except on the CPU (see `_attend_heads_major`). Attention-weight
    dropout needs the weights, so it is spelled out.
    """
    B, T, H, Dh = q_BxTxHxDh.shape
    mask_TxS = causal_mask(T)
    on_cpu = jax.default_backend() == "cpu"
    if dropout is None and B * H == 1 and on_cpu:
        return _attend_one_sequence(q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh, mask_TxS)
    if dropout is None and on_cpu:
        return _attend_heads_major(q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh, mask_TxS)
    if dropout is None:
        return jax.nn.dot_product_attention(
            q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh, mask=mask_TxS[None, None]
        )
    scores_BxHxTxS = jnp.einsum("bthd,bshd->bhts", q_BxTxHxDh, k_BxSxHxDh) / jnp.sqrt(Dh)
    scores_BxHxTxS = jnp.where(mask_TxS[None, None], scores_BxHxTxS.astype(jnp.float32), -1e9)
    weights_BxHxTxS = dropout(jax.nn.softmax(scores_BxHxTxS, axis=-1).astype(v_BxSxHxDh.dtype))
    return jnp.einsum("bhts,bshd->bthd", weights_BxHxTxS, v_BxSxHxDh)


def _attend_one_sequence(
    q_1xTx1xDh: jax.Array, k_one: jax.Array, v_one: jax.Array, mask_TxS: jax.Array
) -> jax.Array:
    """The XLA:CPU special case: one sequence and one head (the seed's training step, the
    REPL's decode of a one-head model) as plain 2-D matmuls, which XLA:CPU runs faster
    than the 4-D batched form of size one (docs/measured.md). `k_one`, `v_one`: `S x Dh`
    values in any 4-D shape (`[1, S, 1, Dh]`, or a cache's `[1, 1, S, Dh]`)."""
    _, T, _, Dh = q_1xTx1xDh.shape
    q_TxDh, k_SxDh, v_SxDh = (x.reshape(-1, Dh) for x in (q_1xTx1xDh, k_one, v_one))
    scores_TxS = (q_TxDh @ k_SxDh.T) / jnp.sqrt(Dh).astype(q_TxDh.dtype)
    scores_TxS = jnp.where(mask_TxS, scores_TxS.astype(jnp.float32), -1e9)
    weights_TxS = jax.nn.softmax(scores_TxS, axis=-1).astype(v_SxDh.dtype)
    return (weights_TxS @ v_SxDh).reshape(1, T, 1, Dh)


def _attend_heads_major(
    q_BxTxHxDh: jax.Array,
    k_BxSxHxDh: jax.Array,
    v_BxSxHxDh: jax.Array,
    mask_TxS: jax.Array,
) -> jax.Array:
    """The XLA:CPU path: heads-major batched matmuls in blocks of CAUSAL_BLOCK queries
    that multiply only the keys up to their block's end, skipping the masked half of the
    products (about 2-3x faster than `jax.nn.dot_product_attention` there, forward and
    backward: docs/measured.md)."""
    _, T, _, Dh = q_BxTxHxDh.shape
    q_BxHxTxDh, k_BxHxSxDh, v_BxHxSxDh = (
        x.transpose(0, 2, 1, 3) for x in (q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh)
    )
    blocks = [(lo, min(lo + CAUSAL_BLOCK, T)) for lo in range(0, T, CAUSAL_BLOCK)]
    outs = []
    for lo, hi in blocks:  # the queries lo..hi see the keys up to hi
        scores_BxHxtxs = q_BxHxTxDh[:, :, lo:hi] @ k_BxHxSxDh[:, :, :hi].swapaxes(-1, -2)
        scores_BxHxtxs = scores_BxHxtxs / jnp.sqrt(Dh).astype(scores_BxHxtxs.dtype)
        scores_BxHxtxs = jnp.where(mask_TxS[lo:hi, :hi], scores_BxHxtxs.astype(jnp.float32), -1e9)
        weights_BxHxtxs = jax.nn.softmax(scores_BxHxtxs, axis=-1).astype(v_BxHxSxDh.dtype)
        outs.append(weights_BxHxtxs @ v_BxHxSxDh[:, :, :hi])
    return jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3)
