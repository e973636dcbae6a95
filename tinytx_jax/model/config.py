"""The model's architecture: one frozen dataclass that the transformer and its layers read."""

from __future__ import annotations

import dataclasses


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
