"""The seed's tiny causal transformer as a Flax linen module.

Defaults reproduce the original exactly: one block, one head, no MLP, post-norm
`LayerNorm(h + attn(h))` with eps 1e-5, learned positions, every weight drawn
uniform in [-0.02, 0.02], output bias zero. Heads, blocks, an MLP, pre-norm and
dropout are opt-in extras for experiments.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

INIT_RANGE = 0.02
LAYER_NORM_EPS = 1e-5  # LibTorch's default; Flax's is 1e-6.
MASK_VALUE = -1e9  # The seed's additive causal mask value.


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


def grouped_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """`a @ b` over a leading group axis; a group of one runs as a plain 2-D matmul,
    which XLA:CPU executes markedly faster than a batched dot of batch size one."""
    if a.shape[0] == 1:
        return (a[0] @ b[0])[None]
    return jnp.matmul(a, b)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention over `[B*T, d]` rows; with one head it is the seed's.

    Rows stay flattened for the projections, and heads are split into groups `[B*H, T, dh]`
    only for the two attention matmuls (no transpose at all when there is one head).
    With `decode_start` set, keys and values are written into a `cache` collection of
    `max_len` positions starting there, and the queries attend over that cache: a
    KV-cached forward for generation that masks exactly as the full forward does.
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        h: jax.Array,
        batch: int,
        deterministic: bool,
        decode_start: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        heads = cfg.n_heads
        length = h.shape[0] // batch
        head_dim = cfg.d_model // heads

        def project(name: str, x: jax.Array) -> jax.Array:
            return nn.Dense(
                cfg.d_model,
                use_bias=False,
                kernel_init=symmetric_uniform(),
                dtype=cfg.dtype,
                name=name,
            )(x)

        def to_groups(x: jax.Array) -> jax.Array:
            x = x.reshape(batch, -1, heads, head_dim)
            if heads > 1:
                x = x.swapaxes(1, 2)
            return x.reshape(batch * heads, -1, head_dim)

        q, k, v = (project(name, h) for name in ("query", "key", "value"))
        query_pos = jnp.arange(length)
        if decode_start is not None:
            k, v = self.update_cache(k, v, batch, decode_start)
            query_pos = query_pos + decode_start
        q, k, v = to_groups(q), to_groups(k), to_groups(v)
        scores = grouped_matmul(q, k.swapaxes(1, 2)) / jnp.sqrt(head_dim).astype(q.dtype)
        causal = jnp.arange(k.shape[1])[None, :] <= query_pos[:, None]
        scores = jnp.where(causal, scores.astype(jnp.float32), MASK_VALUE)
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        weights = nn.Dropout(cfg.dropout)(weights, deterministic=deterministic)
        attended = grouped_matmul(weights, v).reshape(batch, heads, length, head_dim)
        if heads > 1:
            attended = attended.swapaxes(1, 2)
        return project("out", attended.reshape(batch * length, cfg.d_model))

    def update_cache(
        self, k: jax.Array, v: jax.Array, batch: int, start: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Write this call's keys/values at `start`; return all `max_len` cached rows."""
        cfg = self.config
        shape = (batch, cfg.max_len, cfg.d_model)
        rows = (batch * cfg.max_len, cfg.d_model)
        cached = []
        for name, new in (("cached_key", k), ("cached_value", v)):
            variable = self.variable("cache", name, jnp.zeros, shape, new.dtype)
            update = new.reshape(batch, -1, cfg.d_model)
            variable.value = jax.lax.dynamic_update_slice(variable.value, update, (0, start, 0))
            cached.append(variable.value.reshape(rows))
        return cached[0], cached[1]


class MLP(nn.Module):
    """Position-wise feed-forward layer (an extra; the seed has none)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.config
        h = nn.Dense(
            cfg.mlp_ratio * cfg.d_model,
            kernel_init=symmetric_uniform(),
            dtype=cfg.dtype,
            name="fc_in",
        )(h)
        h = nn.gelu(h)
        h = nn.Dense(cfg.d_model, kernel_init=symmetric_uniform(), dtype=cfg.dtype, name="fc_out")(
            h
        )
        return nn.Dropout(cfg.dropout)(h, deterministic=deterministic)


class Block(nn.Module):
    """Attention (and optionally an MLP), each with a residual and a LayerNorm."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        h: jax.Array,
        batch: int,
        deterministic: bool,
        decode_start: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        attention = CausalSelfAttention(cfg, name="attention")
        sublayers = [lambda x, det: attention(x, batch, det, decode_start)]
        if cfg.mlp:
            sublayers.append(MLP(cfg, name="mlp"))
        for i, sublayer in enumerate(sublayers):
            norm = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=jnp.float32, name=f"norm_{i}")
            if cfg.pre_norm:
                h = h + sublayer(norm(h).astype(cfg.dtype), deterministic)
            else:
                h = norm(h + sublayer(h, deterministic)).astype(cfg.dtype)
        return h


class TinyTransformer(nn.Module):
    """Character-level causal LM: tokens `[T]` or `[B, T]` to logits `[..., T, vocab]`.

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
        if unbatched:
            tokens = tokens[None, :]
        tokens = tokens[:, -cfg.max_len :]
        batch, length = tokens.shape

        token_embed = self.param("token_embed", symmetric_uniform(), (cfg.vocab_size, cfg.d_model))
        pos_embed = self.param("pos_embed", symmetric_uniform(), (cfg.max_len, cfg.d_model))
        if decode_start is None:
            positions = pos_embed[:length]
        else:
            positions = jax.lax.dynamic_slice_in_dim(pos_embed, decode_start, length)
        h = jnp.take(token_embed, tokens, axis=0) + positions
        h = h.reshape(batch * length, cfg.d_model).astype(cfg.dtype)  # rows: [B*T, d]
        h = nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
        for i in range(cfg.n_layers):
            h = Block(cfg, name=f"block_{i}")(h, batch, deterministic, decode_start)
        if cfg.pre_norm:
            h = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=jnp.float32, name="final_norm")(h)
        logits = nn.Dense(
            cfg.vocab_size,
            kernel_init=symmetric_uniform(),
            bias_init=nn.initializers.zeros,
            dtype=cfg.dtype,
            name="head",
        )(h)
        logits = logits.astype(jnp.float32).reshape(batch, length, cfg.vocab_size)
        return logits[0] if unbatched else logits
