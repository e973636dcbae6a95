"""The modern recipe's options: each does what it says, and a run with all of them learns."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.test_model import VOCAB, apply, init
from tests.test_model import random_tokens as tokens
from tinytx_jax.model import attention
from tinytx_jax.model.config import ModelConfig
from tinytx_jax.model.transformer import TinyTransformer
from tinytx_jax.training import optim, train

MODERN = dict(
    vocab_size=VOCAB,
    d_model=32,
    n_heads=2,
    mlp=True,
    pre_norm=True,
    position="rope",
    qk_norm=True,
    mlp_activation="relu2",
    logit_softcap=15.0,
)


def test_rotary_scores_depend_only_on_the_distance():
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, 8))
    scores = [
        float(
            jnp.sum(attention.rotate(q, jnp.array([p + 5])) * attention.rotate(k, jnp.array([p])))
        )
        for p in (0, 7, 100)
    ]
    np.testing.assert_allclose(scores, scores[0], rtol=1e-4)
    assert not np.isclose(float(jnp.sum(q * k)), scores[0])


def test_modern_model_is_causal_has_no_position_table_and_caps_its_logits():
    model, params = init(ModelConfig(**MODERN))
    assert "pos_embed" not in params
    x = tokens((2, 24))
    changed = x.at[:, 10:].set((x[:, 10:] + 1) % VOCAB)
    before, after = (apply(model, {"params": params}, t) for t in (x, changed))
    np.testing.assert_array_equal(before[:, :10], after[:, :10])
    assert not np.allclose(before[:, 10:], after[:, 10:])
    big = jax.tree.map(lambda p: p * 50, params)
    assert float(jnp.abs(apply(model, {"params": big}, x)).max()) <= 15.0


def test_cached_decoding_with_rotary_positions_equals_the_full_forward():
    model, params = init(ModelConfig(**MODERN))
    x = tokens((1, 12))
    full = apply(model, {"params": params}, x)
    _, variables = apply(
        model, {"params": params}, jnp.zeros((1, 1), jnp.int32), decode_start=0, mutable=("cache",)
    )
    cache = jax.tree.map(jnp.zeros_like, variables["cache"])
    first, variables = apply(
        model, {"params": params, "cache": cache}, x[:, :8], decode_start=0, mutable=("cache",)
    )
    rest, _ = apply(
        model,
        {"params": params, "cache": variables["cache"]},
        x[:, 8:],
        decode_start=jnp.int32(8),
        mutable=("cache",),
    )
    np.testing.assert_allclose(jnp.concatenate([first, rest], 1), full, atol=2e-5)


def test_zero_initialised_outputs_start_each_block_as_the_identity():
    _, params = init(ModelConfig(**MODERN, zero_init_outputs=True))
    block = params["block_0"]
    assert (
        not block["attention"]["out"]["kernel"].any() and not block["mlp"]["fc_out"]["kernel"].any()
    )
    assert block["attention"]["query"]["kernel"].any()


def test_relu_squared_is_not_gelu():
    relu2, params = init(ModelConfig(**MODERN))
    gelu = TinyTransformer(ModelConfig(**{**MODERN, "mlp_activation": "gelu"}))
    x = tokens((1, 8))
    assert not np.allclose(apply(relu2, {"params": params}, x), apply(gelu, {"params": params}, x))


def test_muon_orthogonalises_hidden_matrices_and_leaves_the_rest_to_adam():
    _, params = init(ModelConfig(**MODERN))
    specs = optim.muon_dimensions(params)
    flat = {
        jax.tree_util.keystr(p): s
        for p, s in jax.tree_util.tree_leaves_with_path(
            specs, is_leaf=lambda s: s is None or hasattr(s, "reduction_axis")
        )
    }
    assert flat["['token_embed']"] is None and flat["['head']['kernel']"] is None
    assert flat["['block_0']['attention']['query']['kernel']"] is not None
    tx = optim.make_optimizer(optax.constant_schedule(0.01), 1e9, 0.0, optimizer="muon")

    # Gradients of one dominant direction: a steep spectrum, which Muon flattens.
    def skewed(p):
        noise = 0.1 * jax.random.normal(jax.random.key(3), p.shape)
        return noise + (5 * jnp.outer(p[:, 0], p[0]) / jnp.abs(p).max() ** 2 if p.ndim == 2 else 0)

    grads = jax.jit(lambda p: jax.tree.map(skewed, p))(params)
    updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
    singular = np.linalg.svd(
        np.asarray(updates["block_0"]["mlp"]["fc_in"]["kernel"]), compute_uv=False
    )
    assert singular.min() > 0.3 * singular.max()  # orthogonalised: a flat spectrum
    grad_singular = np.linalg.svd(
        np.asarray(grads["block_0"]["mlp"]["fc_in"]["kernel"]), compute_uv=False
    )
    assert grad_singular.min() < 0.3 * grad_singular.max()


@pytest.mark.parametrize("step, rate", [(0, 0.1), (9, 1.0), (69, 1.0), (85, 0.5), (100, 0.0)])
def test_warmup_stable_decay_schedule(step, rate):
    schedule = optim.wsd_schedule(1.0, 10, 100, 0.0, 0.3)
    assert float(schedule(step)) == pytest.approx(rate, abs=0.02)


def test_a_run_with_the_whole_recipe_learns(small_config, tmp_path):
    config = small_config
    for name, value in MODERN.items():
        if name != "vocab_size":
            config[name] = value
    config.zero_init_outputs = True
    config.optimizer = "muon"
    config.lr_schedule = "wsd"
    config.epochs = 2
    _, history = train.train_and_evaluate(config, str(tmp_path), log=lambda _: None)
    assert history[-1].val_loss < 0.6 * history[0].train_loss
