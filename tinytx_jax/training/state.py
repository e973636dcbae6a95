"""The train state: one pytree holding everything a run needs to continue exactly."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from tinytx_jax.model.transformer import TinyTransformer


class TrainState(struct.PyTreeNode):
    """Parameters, optimizer and plateau state, PRNG key, counters and early-stop figures.

    `rng` holds raw key data (`jax.random.key_data`), so orbax saves it as a plain array;
    the steps wrap it back with `jax.random.wrap_key_data`.
    """

    step: jax.Array
    epoch: jax.Array
    params: Any
    opt_state: optax.OptState
    plateau_state: Any
    rng: jax.Array
    best_val_loss: jax.Array
    epochs_since_best: jax.Array


def init_train_state(
    model: TinyTransformer,
    tx: optax.GradientTransformation,
    plateau: optax.GradientTransformationExtraArgs,
    seed: int | jax.Array,
) -> TrainState:
    """Fresh parameters and optimizer state, all derived from `seed`."""
    params_key, train_key = jax.random.split(jax.random.key(seed))
    dummy_1xL = jnp.zeros((1, model.config.max_len), jnp.int32)
    params = model.init(params_key, dummy_1xL)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        epoch=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        plateau_state=plateau.init(params),
        rng=jax.random.key_data(train_key),
        best_val_loss=jnp.array(jnp.inf, jnp.float32),
        epochs_since_best=jnp.zeros((), jnp.int32),
    )


def count_params(params: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
