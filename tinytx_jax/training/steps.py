"""The pure jitted functions of training: train step, epoch scan, end of epoch.

Shapes: B batch, T block (window) length, N tokens in the training split, C validation
chunks, V vocabulary. Nothing here touches files, flags or the host loop.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from tinytx_jax import parallel
from tinytx_jax.model.transformer import TinyTransformer
from tinytx_jax.scoring.loss import cross_entropy
from tinytx_jax.training.state import TrainState

StateUpdate = Callable[..., tuple[TrainState, jax.Array]]


def train_step(
    state: TrainState,
    inputs_BxT: jax.Array,
    targets_BxT: jax.Array,
    weights_BxT: jax.Array | None,
    dropout_key: jax.Array,
    model: TinyTransformer,
    tx: optax.GradientTransformation,
) -> tuple[TrainState, jax.Array]:
    """One optimizer update on one batch; returns the new state and the batch's loss.

    With `weights_BxT`, the loss averages only over the weighted targets (e.g. the
    assistant's replies). The plateau scale multiplies the update (see optim.py).
    """

    def loss_fn(params):
        logits_BxTxV = model.apply(
            {"params": params}, inputs_BxT, deterministic=False, rngs={"dropout": dropout_key}
        )
        losses_BxT = cross_entropy(logits_BxTxV, targets_BxT)
        if weights_BxT is None:
            return losses_BxT.mean()
        return (losses_BxT * weights_BxT).sum() / jnp.maximum(weights_BxT.sum(), 1.0)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    scale = state.plateau_state.scale
    updates = jax.tree.map(lambda u: scale * u, updates)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), loss


def draw_window_starts(
    key: jax.Array, batch_size: int, num_tokens: int, block_size: int, starts_S: jax.Array | None
) -> jax.Array:
    """`[B]` window starts: uniform over the split (the seed's), or drawn from `starts_S`."""
    if starts_S is None:
        return jax.random.randint(key, (batch_size,), 0, num_tokens - block_size)
    return starts_S[jax.random.randint(key, (batch_size,), 0, starts_S.shape[0])]


def make_step(
    model: TinyTransformer,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh | None,
    batch_size: int,
    block_size: int,
) -> Callable[..., tuple[TrainState, jax.Array]]:
    """`(state, step_key, tokens_N, weights_N | None, starts_S | None) -> (state, loss)`:
    one training step on windows drawn from `step_key`, anywhere or, given `starts_S`, at
    one of those positions (conversation starts)."""
    batch_sharding = parallel.rows_sharded(mesh) if mesh else None

    def windows_BxW(array_N: jax.Array, starts_B: jax.Array) -> jax.Array:
        # dynamic_slice clamps a start that would run past the end; the starts drawn
        # below never need it (each window of block_size + 1 fits in the split).
        return jax.vmap(lambda s: jax.lax.dynamic_slice(array_N, (s,), (block_size + 1,)))(starts_B)

    def step(state: TrainState, step_key: jax.Array, tokens_N, weights_N, starts_S):
        window_key, dropout_key = jax.random.split(step_key)
        starts_B = draw_window_starts(
            window_key, batch_size, tokens_N.shape[0], block_size, starts_S
        )
        if batch_sharding:  # (a population's member computes on one device: no constraint)
            starts_B = jax.lax.with_sharding_constraint(starts_B, batch_sharding)
        tokens_BxW = windows_BxW(tokens_N, starts_B).astype(jnp.int32)  # stored as uint16
        weights_BxT = None if weights_N is None else windows_BxW(weights_N, starts_B)[:, 1:]
        return train_step(
            state, tokens_BxW[:, :-1], tokens_BxW[:, 1:], weights_BxT, dropout_key, model, tx
        )

    return step


def epoch_keys(state: TrainState, steps_per_epoch: int) -> tuple[jax.Array, jax.Array]:
    """The key data the state carries after this epoch, and one key per step of it."""
    rng, epoch_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    return jax.random.key_data(rng), jax.random.split(epoch_key, steps_per_epoch)


def train_epoch_function(
    model: TinyTransformer,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh | None,
    steps_per_epoch: int,
    batch_size: int,
    block_size: int,
) -> StateUpdate:
    """`(state, tokens_N, weights_N | None, starts_S | None) -> (state, mean loss)`.

    One call runs a whole epoch as a `lax.scan` of `train_step`, drawing the window starts
    on the device from the state's key, so the host only hears back at the epoch's end.
    """
    step = make_step(model, tx, mesh, batch_size, block_size)

    def train_epoch(
        state: TrainState,
        tokens_N: jax.Array,
        weights_N: jax.Array | None = None,
        starts_S: jax.Array | None = None,
    ):
        rng, step_keys = epoch_keys(state, steps_per_epoch)
        state, losses = jax.lax.scan(
            lambda s, k: step(s, k, tokens_N, weights_N, starts_S), state, step_keys
        )
        return state.replace(rng=rng, epoch=state.epoch + 1), losses.mean()

    return train_epoch


def make_train_epoch(
    model: TinyTransformer,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    steps_per_epoch: int,
    batch_size: int,
    block_size: int,
) -> StateUpdate:
    """`train_epoch_function`, jitted. (The training loop runs the same steps in chunks,
    see chunks.py; this whole-epoch form serves the benchmarks and profiles.)"""
    epoch = train_epoch_function(model, tx, mesh, steps_per_epoch, batch_size, block_size)
    # The old state's buffers are donated: an epoch updates the state in place.
    return jax.jit(epoch, donate_argnums=0)


def end_epoch_update(
    state: TrainState,
    val_loss: jax.Array,
    plateau: optax.GradientTransformationExtraArgs,
    plateau_enabled: bool,
    schedule: optax.Schedule,
    min_delta: float,
    floor: jax.Array | None = None,
) -> tuple[TrainState, jax.Array]:
    """Plateau and early-stop bookkeeping; `floor`: the lowest plateau scale, where the
    plateau transform has none of its own (a population member's min_lr / lr)."""
    plateau_state = state.plateau_state
    if plateau_enabled:
        _, plateau_state = plateau.update({}, plateau_state, value=val_loss)
        if floor is not None:
            plateau_state = plateau_state._replace(scale=jnp.maximum(plateau_state.scale, floor))
    improved = val_loss + min_delta < state.best_val_loss
    state = state.replace(
        plateau_state=plateau_state,
        best_val_loss=jnp.where(improved, val_loss, state.best_val_loss),
        epochs_since_best=jnp.where(improved, 0, state.epochs_since_best + 1),
    )
    return state, schedule(state.step) * plateau_state.scale


def make_end_epoch(
    plateau: optax.GradientTransformationExtraArgs,
    plateau_enabled: bool,
    schedule: optax.Schedule,
    min_delta: float,
) -> StateUpdate:
    """A jitted `(state, val_loss) -> (state, next lr)`: `end_epoch_update`."""

    def end_epoch(state: TrainState, val_loss: jax.Array):
        return end_epoch_update(state, val_loss, plateau, plateau_enabled, schedule, min_delta)

    return jax.jit(end_epoch, donate_argnums=0)
