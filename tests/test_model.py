"""Shapes, causality, initialisation and the optional extras of the transformer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinytx_jax.model.config import ModelConfig
from tinytx_jax.model.transformer import TinyTransformer, empty_kv_cache

VOCAB = 31


@functools.partial(jax.jit, static_argnums=0, static_argnames=("deterministic", "mutable"))
def apply(
    model, variables, tokens, deterministic=True, decode_start=None, mutable=False, rngs=None
):
    """`model.apply` compiled as one program, not run (and compiled) operation by operation."""
    return model.apply(
        variables,
        tokens,
        deterministic=deterministic,
        decode_start=decode_start,
        mutable=mutable,
        rngs=rngs,
    )


def init(config: ModelConfig, length: int = 16):
    model = TinyTransformer(config)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, length), jnp.int32))["params"]
    return model, params


def random_tokens(shape, seed=1):
    return jax.random.randint(jax.random.key(seed), shape, 0, VOCAB)


def test_output_shapes_unbatched_and_batched():
    model, params = init(ModelConfig(vocab_size=VOCAB))
    assert apply(model, {"params": params}, random_tokens((20,))).shape == (20, VOCAB)
    assert apply(model, {"params": params}, random_tokens((3, 20))).shape == (3, 20, VOCAB)


def test_longer_input_uses_only_its_last_max_len_tokens():
    model, params = init(ModelConfig(vocab_size=VOCAB, max_len=8))
    tokens = random_tokens((12,))
    logits = apply(model, {"params": params}, tokens)
    assert logits.shape == (8, VOCAB)
    np.testing.assert_array_equal(logits, apply(model, {"params": params}, tokens[-8:]))


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(vocab_size=VOCAB),
        ModelConfig(vocab_size=VOCAB, n_heads=4, n_layers=2, mlp=True, pre_norm=True),
    ],
)
def test_future_tokens_do_not_change_past_logits(config):
    model, params = init(config)
    tokens = random_tokens((2, 24))
    changed = tokens.at[:, 10:].set((tokens[:, 10:] + 1) % VOCAB)
    before = apply(model, {"params": params}, tokens)
    after = apply(model, {"params": params}, changed)
    np.testing.assert_array_equal(before[:, :10], after[:, :10])
    assert not np.allclose(before[:, 10:], after[:, 10:])


def test_seed_initialisation():
    _, params = init(ModelConfig(vocab_size=VOCAB))
    uniform = [params["token_embed"], params["pos_embed"], params["head"]["kernel"]]
    attention = params["block_0"]["attention"]
    uniform += [attention[n]["kernel"] for n in ("query", "key", "value", "out")]
    for weight in uniform:
        assert float(jnp.abs(weight).max()) <= 0.02
        assert float(weight.min()) < -0.015 and float(weight.max()) > 0.015
    np.testing.assert_array_equal(params["head"]["bias"], 0.0)
    norm = params["block_0"]["norm_0"]
    np.testing.assert_array_equal(norm["scale"], 1.0)
    np.testing.assert_array_equal(norm["bias"], 0.0)
    assert params["pos_embed"].shape == (512, 64)
    assert "mlp" not in params["block_0"]


def test_seed_parameter_count():
    _, params = init(ModelConfig(vocab_size=VOCAB))
    count = sum(p.size for p in jax.tree.leaves(params))
    assert count == 31 * 64 + 512 * 64 + 4 * 64 * 64 + 64 * 31 + 31 + 2 * 64


def test_matches_a_hand_written_seed_forward():
    model, params = init(ModelConfig(vocab_size=VOCAB))
    tokens = random_tokens((9,))
    attn = params["block_0"]["attention"]
    h = params["token_embed"][tokens] + params["pos_embed"][:9]
    q, k, v = (h @ attn[n]["kernel"] for n in ("query", "key", "value"))
    scores = q @ k.T / jnp.sqrt(64.0)
    scores = jnp.where(jnp.tril(jnp.ones((9, 9), bool)), scores, -1e9)
    y = h + jax.nn.softmax(scores, axis=-1) @ v @ attn["out"]["kernel"]
    y = (y - y.mean(-1, keepdims=True)) / jnp.sqrt(y.var(-1, keepdims=True) + 1e-5)
    expected = y @ params["head"]["kernel"] + params["head"]["bias"][None]
    np.testing.assert_allclose(apply(model, {"params": params}, tokens), expected, atol=2e-5)


def test_dropout_is_active_only_when_training():
    model, params = init(ModelConfig(vocab_size=VOCAB, dropout=0.5))
    tokens = random_tokens((16,))
    eval_a = apply(model, {"params": params}, tokens)
    eval_b = apply(model, {"params": params}, tokens)
    np.testing.assert_array_equal(eval_a, eval_b)
    train = apply(
        model, {"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.key(3)}
    )
    assert not np.allclose(train, eval_a)


def test_gpt_style_options_shape_the_parameters():
    cfg = ModelConfig(
        vocab_size=40,
        d_model=64,
        n_layers=4,
        mlp=True,
        pre_norm=True,
        init="gpt2",
        tie_embeddings=True,
        bias=False,
    )
    model, params = init(cfg, 8)
    assert "head" not in params  # tied: the output layer is the token embedding
    leaves = jax.tree_util.tree_leaves_with_path(params)
    assert not [p for p, _ in leaves if "bias" in jax.tree_util.keystr(p)]
    embed = params["token_embed"]
    assert abs(float(embed.std()) - 0.02) < 0.002 and abs(float(embed.mean())) < 0.002
    residual = jnp.concatenate(
        [params[f"block_{i}"]["attention"]["out"]["kernel"].ravel() for i in range(4)]
        + [params[f"block_{i}"]["mlp"]["fc_out"]["kernel"].ravel() for i in range(4)]
    )
    assert abs(float(residual.std()) - 0.02 / (2 * 4) ** 0.5) < 0.0005
    tokens = jnp.arange(8)[None] % 40
    logits = apply(model, {"params": params}, tokens)
    assert logits.shape == (1, 8, 40)


def test_seed_model_keeps_its_parameters():
    _, params = init(ModelConfig(vocab_size=31), 8)
    assert "bias" in params["head"] and float(jnp.abs(params["token_embed"]).max()) <= 0.02


CAPTURED = {
    "seed": ModelConfig(vocab_size=23),
    "gpt": ModelConfig(vocab_size=23, n_layers=3, n_heads=4, mlp=True, pre_norm=True),
    "modern": ModelConfig(
        vocab_size=23, n_layers=2, n_heads=2, position="rope", qk_norm=True, logit_softcap=15.0
    ),
}


@pytest.mark.parametrize("name", CAPTURED)
def test_sown_attention_is_a_causal_distribution_and_changes_no_logit(name):
    config = CAPTURED[name]
    model, params = init(config, 21)
    tokens = jax.random.randint(jax.random.key(3), (2, 21), 0, config.vocab_size)
    plain = apply(model, {"params": params}, tokens)
    captured, state = apply(model, {"params": params}, tokens, mutable=("intermediates",))
    np.testing.assert_allclose(captured, plain, rtol=1e-6, atol=1e-6)
    found = state["intermediates"]
    for i in range(config.n_layers):
        weights = np.asarray(found[f"block_{i}"]["attention"]["attention"][0])
        assert weights.shape == (2, config.n_heads, 21, 21)
        np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
        assert not np.triu(weights, k=1).any()  # nothing above the diagonal: the future
    lens = sorted(k for k in found if k.startswith("lens_"))
    assert lens == [f"lens_{i}" for i in range(config.n_layers - 1)]


def test_the_last_blocks_lens_would_be_the_logits():
    """The logit lens reads a residual stream out as the model reads its last one: fed the
    last block's output, it gives the model's logits (checked by sowing one block fewer)."""
    config = CAPTURED["gpt"]
    tokens = jax.random.randint(jax.random.key(4), (1, 12), 0, config.vocab_size)
    model, params = init(config, 12)
    shallow_config = ModelConfig(**{**config.__dict__, "n_layers": 2})
    shallow = {k: v for k, v in params.items() if k != "block_2"}
    logits = apply(TinyTransformer(shallow_config), {"params": shallow}, tokens)
    _, state = apply(model, {"params": params}, tokens, mutable=("intermediates",))
    np.testing.assert_allclose(state["intermediates"]["lens_1"][0], logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("position", "heads"), [("learned", 1), ("rope", 2)])
def test_a_decode_step_with_a_start_per_row_equals_each_rows_full_forward(position, heads):
    """The serving step: rows at different positions, each writing its own cache slot,
    the cache holding more rows than are stepped (the idle slot stays untouched)."""
    config = ModelConfig(vocab_size=VOCAB, max_len=16, n_heads=heads, d_model=16, position=position)
    model, params = init(config)
    tokens = random_tokens((3, 10))
    lengths = jnp.array([4, 9, 6])

    @jax.jit
    def prefill_then_step(cache):  # prompts padded to 9, as the server pads them
        _, filled = apply(
            model,
            {"params": params, "cache": cache},
            tokens[:, :9],
            decode_start=0,
            mutable=("cache",),
        )
        next_B = jnp.take_along_axis(tokens, lengths[:, None], axis=1)
        return apply(
            model,
            {"params": params, "cache": filled["cache"]},
            next_B,
            decode_start=lengths,
            mutable=("cache",),
        )

    cache = empty_kv_cache(model, params, rows=4)
    stepped_Bx1xV, variables = prefill_then_step(cache)
    full_BxTxV = apply(model, {"params": params}, tokens)  # causal: row r's first
    for row, length in enumerate(lengths.tolist()):  # length + 1 tokens are its own
        np.testing.assert_allclose(stepped_Bx1xV[row, 0], full_BxTxV[row, length], atol=2e-5)
    idle_after = jax.tree.map(lambda c: c[3], variables["cache"])
    assert not any(jax.tree.leaves(jax.tree.map(jnp.any, idle_after)))
