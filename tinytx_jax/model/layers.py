"""The model's building blocks: its weight initialisations, a linear layer and the MLP.

Tensor names carry their shapes: N rows, D model width, F features.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from tinytx_jax.model.config import ModelConfig

INIT_RANGE = 0.02


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
