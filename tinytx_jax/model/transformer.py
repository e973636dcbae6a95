"""The seed's tiny causal transformer as a Flax linen module, on `[B, T, H, Dh]` tensors.

Defaults reproduce the original exactly: one block, one head, no MLP, post-norm
`LayerNorm(h + attn(h))` with eps 1e-5, learned positions, every weight drawn
uniform in [-0.02, 0.02], output bias zero. Heads, blocks, an MLP, pre-norm and
dropout are opt-in extras for experiments, and so is the modern recipe of the nanoGPT
speedrun (modded-nanogpt): rotary positions, QK-norm, ReLU² MLP, zero-initialised
output projections and logit soft-capping.

Tensor names carry their shapes: B batch, T query positions, S key positions, D model
width, H heads, Dh head width, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tinytx_jax.model.attention import (
    attend,
    attend_cached,
    attention_weights,
    cached_attention_weights,
    rms_normalize,
    rotate,
)
from tinytx_jax.model.config import ModelConfig
from tinytx_jax.model.layers import MLP, Dense, weight_init

LAYER_NORM_EPS = 1e-5  # LibTorch's default; Flax's is 1e-6.


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention; with one head it is the seed's.

    With `decode_start` set, keys and values are written into a `cache` collection of
    `max_len` positions starting there, and the queries attend over that cache: a
    KV-cached forward for generation that masks exactly as the full forward does. A
    `decode_start` of shape `[B]` gives each row its own start (the slots of a server's
    decode step, each at its own position).
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self, x_BxTxD: jax.Array, deterministic: bool, decode_start: jax.Array | None = None
    ) -> jax.Array:
        cfg = self.config
        B, T, D = x_BxTxD.shape
        H = cfg.n_heads
        Dh = D // H

        def project(name: str, x_BxTxD: jax.Array) -> jax.Array:
            init = weight_init(cfg, residual_output=name == "out")
            return Dense(D, use_bias=False, dtype=cfg.dtype, kernel_init=init, name=name)(x_BxTxD)

        q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh = (
            project(name, x_BxTxD).reshape(B, T, H, Dh) for name in ("query", "key", "value")
        )
        query_pos_BxT = query_positions(T, decode_start)  # B is 1 for a shared start
        if cfg.qk_norm:
            q_BxTxHxDh, k_BxSxHxDh = rms_normalize(q_BxTxHxDh), rms_normalize(k_BxSxHxDh)
        if cfg.position == "rope":  # keys are cached turned: each new one at its position
            q_BxTxHxDh, k_BxSxHxDh = (
                rotate(q_BxTxHxDh, query_pos_BxT),
                rotate(k_BxSxHxDh, query_pos_BxT),
            )
        if decode_start is not None:
            out_BxTxHxDh = self.attend_cache(q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh, query_pos_BxT)
            return project("out", out_BxTxHxDh.reshape(B, T, D))
        use_dropout = cfg.dropout > 0 and not deterministic
        dropout = nn.Dropout(cfg.dropout, deterministic=False) if use_dropout else None
        if self.is_mutable_collection("intermediates"):  # asked for (inspect): else no cost
            self.sow("intermediates", "attention", attention_weights(q_BxTxHxDh, k_BxSxHxDh))
        out_BxTxHxDh = attend(q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh, dropout)
        return project("out", out_BxTxHxDh.reshape(B, T, D))

    def attend_cache(
        self,
        q_BxTxHxDh: jax.Array,
        k_BxTxHxDh: jax.Array,
        v_BxTxHxDh: jax.Array,
        query_pos_BxT: jax.Array,
    ) -> jax.Array:
        """Write the new keys and values into the cache at their positions (`[1, T]` for
        every row, or `[B, T]`: a row's own), and attend to every cached one up to each
        query."""
        k_BxHxSxDh = self.cached("cached_key", k_BxTxHxDh, query_pos_BxT)
        v_BxHxSxDh = self.cached("cached_value", v_BxTxHxDh, query_pos_BxT)
        key_pos_1x1xS = jnp.arange(self.config.max_len)[None, None]
        mask = key_pos_1x1xS <= query_pos_BxT[..., None]  # [B, T, S], B 1 if shared
        if self.is_mutable_collection("intermediates"):
            weights_BxHxTxS = cached_attention_weights(q_BxTxHxDh, k_BxHxSxDh, mask)
            self.sow("intermediates", "attention", weights_BxHxTxS)
        return attend_cached(q_BxTxHxDh, k_BxHxSxDh, v_BxHxSxDh, mask)

    def cached(self, name: str, new_BxTxHxDh: jax.Array, query_pos_BxT: jax.Array) -> jax.Array:
        """The cache `name` (`[B, H, max_len, Dh]`) with this call's keys or values
        written at their positions. A cache given with more rows than B (a server's
        slots, of which the first B are busy) is written in place and its first B read."""
        B, _, H, Dh = new_BxTxHxDh.shape
        shape = (B, H, self.config.max_len, Dh)
        variable = self.variable("cache", name, jnp.zeros, shape, new_BxTxHxDh.dtype)
        if query_pos_BxT.shape[0] == 1:  # one start for every row
            new_BxHxTxDh = new_BxTxHxDh.transpose(0, 2, 1, 3)
            start = (0, 0, query_pos_BxT[0, 0], 0)
            variable.value = jax.lax.dynamic_update_slice(variable.value, new_BxHxTxDh, start)
        else:  # the indexed axes go first: the update is [B, T, H, Dh]
            rows_Bx1 = jnp.arange(B)[:, None]
            variable.value = variable.value.at[rows_Bx1, :, query_pos_BxT].set(new_BxTxHxDh)
        return variable.value[:B]


def query_positions(T: int, decode_start: jax.Array | int | None) -> jax.Array:
    """The positions of `T` new tokens: `[1, T]` from 0 or from a start shared by every
    row, `[B, T]` from each row's own start (`decode_start` of shape `[B]`)."""
    start_Bx1 = jnp.zeros((1, 1), jnp.int32) if decode_start is None else decode_start
    return jnp.reshape(start_Bx1, (-1, 1)) + jnp.arange(T)[None]


class Block(nn.Module):
    """Attention (and optionally an MLP), each with a residual and a LayerNorm."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self, x_BxTxD: jax.Array, deterministic: bool, decode_start: jax.Array | None
    ) -> jax.Array:
        """Only attention sees `decode_start` (it keeps the KV cache); the MLP is per position."""
        cfg = self.config
        attention = CausalSelfAttention(cfg, name="attention")
        sublayers = [lambda x, det: attention(x, det, decode_start)]
        if cfg.mlp:
            sublayers.append(MLP(cfg, name="mlp"))
        for i, sublayer in enumerate(sublayers):
            norm = nn.LayerNorm(
                epsilon=LAYER_NORM_EPS, dtype=jnp.float32, use_bias=cfg.bias, name=f"norm_{i}"
            )
            if cfg.pre_norm:
                x_BxTxD = x_BxTxD + sublayer(norm(x_BxTxD).astype(cfg.dtype), deterministic)
            else:
                x_BxTxD = norm(x_BxTxD + sublayer(x_BxTxD, deterministic)).astype(cfg.dtype)
        return x_BxTxD


class TinyTransformer(nn.Module):
    """Character-level causal LM: tokens `[T]` or `[B, T]` to logits `[..., T, V]`.

    Only the last `max_len` tokens of a longer input are used, as in the seed. With
    `decode_start` (call with `mutable=["cache"]`), the tokens sit at positions
    `decode_start...` and attend over a KV cache of the earlier positions.
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        deterministic: bool = True,
        decode_start: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        unbatched = tokens.ndim == 1
        tokens_BxT = (tokens[None, :] if unbatched else tokens)[:, -cfg.max_len :]
        T = tokens_BxT.shape[1]

        V, D, L = cfg.vocab_size, cfg.d_model, cfg.max_len
        token_embed_VxD = self.param("token_embed", weight_init(cfg), (V, D))
        x_BxTxD = jnp.take(token_embed_VxD, tokens_BxT, axis=0)
        if cfg.position == "learned":
            pos_embed_LxD = self.param("pos_embed", weight_init(cfg), (L, D))
            if decode_start is None:
                x_BxTxD = x_BxTxD + pos_embed_LxD[:T][None]
            else:  # callers keep every position below max_len
                x_BxTxD = x_BxTxD + pos_embed_LxD[query_positions(T, decode_start)]  # [B|1, T, D]
        x_BxTxD = x_BxTxD.astype(cfg.dtype)
        x_BxTxD = nn.Dropout(cfg.dropout)(x_BxTxD, deterministic=deterministic)
        residuals = []
        for i in range(cfg.n_layers):
            x_BxTxD = Block(cfg, name=f"block_{i}")(x_BxTxD, deterministic, decode_start)
            residuals.append(x_BxTxD)
        final_norm = (
            nn.LayerNorm(
                epsilon=LAYER_NORM_EPS, dtype=jnp.float32, use_bias=cfg.bias, name="final_norm"
            )
            if cfg.pre_norm
            else None
        )
        head = (
            None
            if cfg.tie_embeddings
            else Dense(V, cfg.bias, cfg.dtype, weight_init(cfg), name="head")
        )

        def readout(x_BxTxD: jax.Array) -> jax.Array:
            if final_norm is not None:
                x_BxTxD = final_norm(x_BxTxD)
            if head is None:
                rows_RxD = x_BxTxD.reshape(-1, D).astype(cfg.dtype)
                logits_RxV = rows_RxD @ token_embed_VxD.T.astype(cfg.dtype)
                logits_BxTxV = logits_RxV.reshape(*x_BxTxD.shape[:-1], V).astype(jnp.float32)
            else:
                logits_BxTxV = head(x_BxTxD).astype(jnp.float32)
            if cfg.logit_softcap:
                logits_BxTxV = cfg.logit_softcap * jnp.tanh(logits_BxTxV / cfg.logit_softcap)
            return logits_BxTxV

        logits_BxTxV = readout(x_BxTxD)
        if self.is_mutable_collection("intermediates") and cfg.n_layers > 1:
            # The logit lens: what each earlier block's residual stream would predict.
            for i, residual_BxTxD in enumerate(residuals[:-1]):
                self.sow("intermediates", f"lens_{i}", readout(residual_BxTxD))
        return logits_BxTxV[0] if unbatched else logits_BxTxV


def empty_kv_cache(model: TinyTransformer, params: Any, rows: int = 1) -> Any:
    """Zeros for the model's KV cache of `rows` sequences, from shapes alone: running the
    model eagerly to get them would compile each of its operations on its own, seconds
    at every start."""
    variables = jax.eval_shape(
        lambda p: model.apply(
            {"params": p}, jnp.zeros((rows, 1), jnp.int32), decode_start=0, mutable=["cache"]
        )[1],
        params,
    )
    return jax.tree.map(lambda c: jax.device_put(np.zeros(c.shape, c.dtype)), variables["cache"])
