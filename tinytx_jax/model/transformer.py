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

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tinytx_jax.model.attention import attend, attention_weights, rms_normalize, rotate

INIT_RANGE = 0.02
LAYER_NORM_EPS = 1e-5  # LibTorch's default; Flax's is 1e-6.


def weight_init(cfg: ModelConfig, residual_output: bool = False) -> nn.initializers.Initializer:
    """The seed's uniform [-0.02, 0.02], or GPT-2's normal(0, 0.02) with the layers that
    write into the residual stream scaled by 1/sqrt(2 * n_layers); zeros for those layers
    with `zero_init_outputs` (each block then starts as the identity)."""
    if residual_output and cfg.zero_init_outputs:
        return nn.initializers.zeros
    if cfg.init == "gpt2":
        scale = 1.0 / math.sqrt(2 * cfg.n_layers) if residual_output else 1.0
        return nn.initializers.normal(INIT_RANGE * scale)
    return symmetric_uniform()


def symmetric_uniform(scale: float = INIT_RANGE) -> nn.initializers.Initializer:
    """Uniform in [-scale, scale]; Flax's `uniform` only spans [0, scale)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters; the defaults are the seed's model."""

    vocab_size: int
    d_model: int = 64
    max_len: int = 512
    n_heads: int = 1
    n_layers: int = 1
    mlp: bool = False
    mlp_ratio: int = 4
    pre_norm: bool = False
    dropout: float = 0.0
    dtype: str = "float32"
    # GPT-style extras (nanoGPT's model), off by default:
    init: str = "seed"  # "gpt2": normal(0, 0.02), residual outputs / sqrt(2 * n_layers)
    tie_embeddings: bool = False  # the output layer reuses the token embedding
    bias: bool = True  # biases in the MLP, the output layer and the LayerNorms
    # The modern recipe, off by default:
    position: str = "learned"  # "rope": rotary query/key positions, no position table
    qk_norm: bool = False  # RMS-normalise each head's queries and keys
    mlp_activation: str = "gelu"  # "relu2": ReLU(x)^2
    zero_init_outputs: bool = False  # attention and MLP output projections start at zero
    logit_softcap: float = 0.0  # > 0: logits = cap * tanh(logits / cap)


class Dense(nn.Module):
    """A linear layer over the last axis, with `nn.Dense`'s parameter names.

    XLA:CPU special case: the input is multiplied as `[rows, D]`, all leading axes
    flattened. A 3-D `[B, T, D]` product makes XLA:CPU compute the kernel gradient as a
    dot contracting two axes, which is slower (docs/measured.md); on other platforms the
    reshape is free.
    """

    features: int
    use_bias: bool = True
    dtype: str = "float32"
    kernel_init: nn.initializers.Initializer = symmetric_uniform()

    @nn.compact
    def __call__(self, x_NxD: jax.Array) -> jax.Array:
        kernel_DxF = self.param("kernel", self.kernel_init, (x_NxD.shape[-1], self.features))
        rows_RxD = x_NxD.reshape(-1, x_NxD.shape[-1]).astype(self.dtype)
        out_RxF = rows_RxD @ kernel_DxF.astype(self.dtype)
        if self.use_bias:
            out_RxF = out_RxF + self.param("bias", nn.initializers.zeros, (self.features,))[None]
        return out_RxF.astype(self.dtype).reshape(*x_NxD.shape[:-1], self.features)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention; with one head it is the seed's.

    With `decode_start` set, keys and values are written into a `cache` collection of
    `max_len` positions starting there, and the queries attend over that cache: a
    KV-cached forward for generation that masks exactly as the full forward does.
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
        query_pos_T = jnp.arange(T) if decode_start is None else jnp.arange(T) + decode_start
        if cfg.qk_norm:
            q_BxTxHxDh, k_BxSxHxDh = rms_normalize(q_BxTxHxDh), rms_normalize(k_BxSxHxDh)
        if cfg.position == "rope":  # keys are cached turned: each new one at its position
            q_BxTxHxDh, k_BxSxHxDh = (
                rotate(q_BxTxHxDh, query_pos_T),
                rotate(k_BxSxHxDh, query_pos_T),
            )
        if decode_start is not None:
            k_BxSxHxDh = self.cached("cached_key", k_BxSxHxDh, decode_start)
            v_BxSxHxDh = self.cached("cached_value", v_BxSxHxDh, decode_start)
        S = k_BxSxHxDh.shape[1]
        mask_TxS = jnp.arange(S)[None, :] <= query_pos_T[:, None]
        use_dropout = cfg.dropout > 0 and not deterministic
        dropout = nn.Dropout(cfg.dropout, deterministic=False) if use_dropout else None
        causal = decode_start is None  # the full forward: the mask is the causal square
        if self.is_mutable_collection("intermediates"):  # asked for (inspect): else no cost
            self.sow(
                "intermediates", "attention", attention_weights(q_BxTxHxDh, k_BxSxHxDh, mask_TxS)
            )
        out_BxTxHxDh = attend(q_BxTxHxDh, k_BxSxHxDh, v_BxSxHxDh, mask_TxS, dropout, causal)
        return project("out", out_BxTxHxDh.reshape(B, T, D))

    def cached(self, name: str, new_BxTxHxDh: jax.Array, start: jax.Array) -> jax.Array:
        """Write this call's keys or values at `start`; return all `max_len` cached ones."""
        B, _, H, Dh = new_BxTxHxDh.shape
        shape = (B, self.config.max_len, H, Dh)
        variable = self.variable("cache", name, jnp.zeros, shape, new_BxTxHxDh.dtype)
        variable.value = jax.lax.dynamic_update_slice(
            variable.value, new_BxTxHxDh, (0, start, 0, 0)
        )
        return variable.value


class MLP(nn.Module):
    """Position-wise feed-forward layer (an extra; the seed has none)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.config
        fc_in = Dense(
            cfg.mlp_ratio * cfg.d_model, cfg.bias, cfg.dtype, weight_init(cfg), name="fc_in"
        )
        fc_out = Dense(cfg.d_model, cfg.bias, cfg.dtype, weight_init(cfg, True), name="fc_out")
        hidden_BxTxF = fc_in(x_BxTxD)
        relu2 = cfg.mlp_activation == "relu2"
        hidden_BxTxF = jnp.square(nn.relu(hidden_BxTxF)) if relu2 else nn.gelu(hidden_BxTxF)
        out_BxTxD = fc_out(hidden_BxTxF)
        return nn.Dropout(cfg.dropout)(out_BxTxD, deterministic=deterministic)


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
                positions_TxD = pos_embed_LxD[:T]
            else:
                # Callers keep decode_start + T <= max_len, so this slice is never clamped.
                positions_TxD = jax.lax.dynamic_slice_in_dim(pos_embed_LxD, decode_start, T)
            x_BxTxD = x_BxTxD + positions_TxD[None]
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


def empty_kv_cache(model: TinyTransformer, params: Any, rows: int | None = None) -> Any:
    """Zeros for the model's KV cache of one sequence (of `rows` sequences, stacked, when
    given), from shapes alone: running the model eagerly to get them would compile each
    of its operations on its own, seconds at every start."""
    variables = jax.eval_shape(
        lambda p: model.apply(
            {"params": p}, jnp.zeros((1, 1), jnp.int32), decode_start=0, mutable=["cache"]
        )[1],
        params,
    )
    leading = () if rows is None else (rows,)
    return jax.tree.map(
        lambda c: jax.device_put(np.zeros((*leading, *c.shape), c.dtype)), variables["cache"]
    )
