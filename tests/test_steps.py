"""The pure jitted functions, tested directly: one train step, the epoch scan's windows."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tinytx_jax.model.config import ModelConfig
from tinytx_jax.model.transformer import TinyTransformer
from tinytx_jax.scoring.loss import cross_entropy
from tinytx_jax.training import optim
from tinytx_jax.training.state import init_train_state
from tinytx_jax.training.steps import train_step

VOCAB = 11


@functools.cache
def tiny_state(lr: float = 1e-2):
    model = TinyTransformer(ModelConfig(vocab_size=VOCAB, d_model=16, max_len=8))
    tx = optim.make_optimizer(optim.warmup_schedule(lr, 0), clip_norm=1.0, weight_decay=0.0)
    plateau = optim.make_plateau(lr, 0.5, 10, lr / 100)
    return model, tx, jax.jit(lambda: init_train_state(model, tx, plateau, seed=0))()


def batch(seed=0):
    tokens_BxW = jax.random.randint(jax.random.key(seed), (2, 9), 0, VOCAB)
    return tokens_BxW[:, :-1], tokens_BxW[:, 1:]


def test_repeated_steps_on_one_batch_drive_its_loss_down():
    model, tx, state = tiny_state()
    inputs_BxT, targets_BxT = batch()
    step = jax.jit(
        lambda s: train_step(s, inputs_BxT, targets_BxT, None, jax.random.key(1), model, tx)
    )
    state, first = step(state)
    for _ in range(30):
        state, loss = step(state)
    assert int(state.step) == 31
    assert float(loss) < 0.5 * float(first)


def test_plateau_scale_zero_freezes_the_parameters():
    model, tx, state = tiny_state()
    frozen = state.replace(plateau_state=state.plateau_state._replace(scale=jnp.float32(0)))
    inputs_BxT, targets_BxT = batch()
    step = jax.jit(
        lambda s: train_step(s, inputs_BxT, targets_BxT, None, jax.random.key(1), model, tx)
    )
    after, _ = step(frozen)
    jax.tree.map(np.testing.assert_array_equal, after.params, state.params)


def test_weighted_loss_counts_only_weighted_targets():
    model, tx, state = tiny_state()
    inputs_BxT, targets_BxT = batch()
    weights_BxT = jnp.zeros((2, 8)).at[:, 5:].set(1.0)
    step = jax.jit(
        lambda s: train_step(s, inputs_BxT, targets_BxT, weights_BxT, jax.random.key(1), model, tx)
    )
    _, loss = step(state)
    logits_BxTxV = jax.jit(model.apply)({"params": state.params}, inputs_BxT)
    expected = cross_entropy(logits_BxTxV, targets_BxT)[:, 5:].mean()
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
