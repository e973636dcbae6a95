"""Warm-up, clipping, plateau halving and early stopping behave as the seed's schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from tinytx_jax.run_config import RunConfig
from tinytx_jax.training import optim, stopping
from tinytx_jax.training.metrics import EpochMetrics
from tinytx_jax.training.steps import make_end_epoch
from tinytx_jax.training.task import build_task


@pytest.mark.parametrize(
    "step, rate", [(0, 2.5e-6), (99, 2.5e-4), (199, 5e-4), (200, 5e-4), (10_000, 5e-4)]
)
def test_warmup_rates(step, rate):
    assert float(optim.warmup_schedule(5e-4, 200)(step)) == pytest.approx(rate, rel=1e-6)


def test_optimizer_applies_the_warmup_rate_to_its_first_update():
    tx = optim.make_optimizer(optim.warmup_schedule(5e-4, 200), clip_norm=1.0, weight_decay=0.0)
    params = {"w": jnp.zeros(3)}
    updates, _ = tx.update({"w": jnp.full(3, 0.1)}, tx.init(params), params)
    # Adam's first step moves each weight by the rate itself.
    np.testing.assert_allclose(updates["w"], -2.5e-6, rtol=1e-3)


def test_gradients_are_really_clipped():
    tx = optim.make_optimizer(optim.warmup_schedule(5e-4, 200), clip_norm=1.0, weight_decay=0.0)
    params = {"w": jnp.zeros(4)}
    _, state = tx.update({"w": jnp.full(4, 100.0)}, tx.init(params), params)
    first_moment = state[1][0].mu["w"]  # (1 - b1) * clipped gradient
    assert float(jnp.linalg.norm(first_moment)) == pytest.approx(0.1, rel=1e-5)


def scripted_run(val_losses, **overrides):
    """Feed validation losses through the per-epoch bookkeeping; return rates and states."""
    config = default.get_config()
    config.update(overrides)
    task = build_task(RunConfig.from_flat(config))
    state = task.initial_state(config.seed).replace(step=jnp.array(10_000))
    end_epoch = make_end_epoch(
        task.plateau, task.run.optim.plateau_enabled, task.schedule, optim.PLATEAU_MIN_DELTA
    )
    rates, states = [], []
    for loss in val_losses:
        state, lr = end_epoch(state, jnp.float32(loss))
        rates.append(float(lr))
        states.append(jax.device_get(state))
    return rates, states


def test_plateau_halves_after_50_epochs_and_stops_after_150():
    config = default.get_config()
    # 0.9 - 5e-7 is not better by more than 1e-6, so it does not reset the count.
    losses = [1.0, 0.9] + [0.9 - 5e-7] + [0.95] * 149
    rates, states = scripted_run(losses)
    assert rates[:51] == pytest.approx([5e-4] * 51)
    assert rates[51] == pytest.approx(2.5e-4)  # the 50th epoch without improvement
    assert rates[101] == pytest.approx(1.25e-4)  # optax halves again after 50 more
    assert [int(s.epochs_since_best) for s in states[:4]] == [0, 0, 1, 2]
    assert float(states[-1].best_val_loss) == pytest.approx(0.9)
    metrics = EpochMetrics(152, 0.1, 0.95, 0.5, 8159, rates[-1])
    settings = RunConfig.from_flat(config).train
    for state, stops in ((states[-2], False), (states[-1], True)):
        reason = stopping.stop_reason(
            metrics, state.epochs_since_best, state.best_val_loss, settings
        )
        assert (reason is not None) == stops
    assert "Early stopping at epoch 152" in reason


def test_improvement_resets_the_plateau_count():
    rates, states = scripted_run([1.0] + [1.0] * 40 + [0.5] + [0.5] * 40)
    assert min(rates) == pytest.approx(5e-4)
    assert int(states[-1].epochs_since_best) == 40


def test_rate_never_falls_below_min_lr():
    rates, _ = scripted_run([1.0] * 30, plateau_patience=1)
    assert min(rates) == pytest.approx(1e-5)
    assert rates[5] == pytest.approx(5e-4 / 2**5)


def test_plateau_transform_uses_the_seed_criterion():
    plateau = optim.make_plateau(5e-4, 0.5, 1, 1e-5)
    state = plateau.init({})
    _, state = plateau.update({}, state, value=jnp.float32(1.0))
    _, state = plateau.update({}, state, value=jnp.float32(1.0 - 2e-6))
    assert float(state.scale) == 1.0
    _, state = plateau.update({}, state, value=jnp.float32(1.0 - 2.5e-6))
    assert float(state.scale) == 0.5
    assert isinstance(plateau, optax.GradientTransformationExtraArgs)


def test_weight_decay_on_matrices_spares_biases_and_scales():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2), "scale": jnp.ones(2)}
    tx = optim.make_optimizer(lambda _: 0.1, 1.0, 0.5, decay_matrices_only=True)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(updates["kernel"]).max()) > 0  # decayed
    assert float(jnp.abs(updates["bias"]).max()) == 0 == float(jnp.abs(updates["scale"]).max())
