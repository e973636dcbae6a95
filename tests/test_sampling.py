"""KV-cached decoding equals the seed's uncached decoding; sampling options behave."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinytx_jax.inference import generation, sampling, trained
from tinytx_jax.model.config import ModelConfig
from tinytx_jax.model.transformer import TinyTransformer
from tinytx_jax.text import dialogs, vocabulary


def random_model(max_len=512, **extra):
    model = TinyTransformer(ModelConfig(vocab_size=31, max_len=max_len, **extra))
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return model, params


def vocab():
    return vocabulary.Vocabulary.from_text(dialogs.builtin_corpus(1))


@pytest.mark.parametrize("prompt_len", [1, 40, 64, 65, 130])
def test_cached_equals_uncached_on_untrained_weights(prompt_len):
    model, params = random_model()
    prompt = np.asarray(jax.random.randint(jax.random.key(prompt_len), (prompt_len,), 0, 31))
    generator = generation.Generator(
        model, params, vocab(), sampling.SamplingConfig(max_new_tokens=24), stop_texts=()
    )
    cached, _ = generator.generate_tokens(prompt)
    np.testing.assert_array_equal(
        cached, generation.generate_uncached(model, params, prompt, 24, ())
    )


def test_cached_equals_uncached_past_max_len_with_heads_and_layers():
    model, params = random_model(max_len=64, n_heads=4, n_layers=2, mlp=True)
    prompt = np.arange(50, dtype=np.int32) % 31
    generator = generation.Generator(
        model, params, vocab(), sampling.SamplingConfig(max_new_tokens=30), stop_texts=()
    )
    cached, truncated = generator.generate_tokens(prompt)
    assert truncated and len(cached) == 30
    np.testing.assert_array_equal(
        cached, generation.generate_uncached(model, params, prompt, 30, ())
    )


def test_cached_equals_uncached_on_trained_weights(trained_workdir):
    model = trained.load_trained(trained_workdir, log=lambda _: None)
    generator = generation.Generator(
        model.model, model.params, model.vocab, sampling.SamplingConfig()
    )
    for user, expected in dialogs.BUILTIN_DIALOGS:
        prompt = model.vocab.encode(dialogs.render_prompt(user))
        cached, _ = generator.generate_tokens(prompt)
        reference = generation.generate_uncached(
            model.model, model.params, prompt, 200, generator.stop_tokens
        )
        np.testing.assert_array_equal(cached, reference)
        assert model.vocab.decode(cached) == expected + dialogs.ASSISTANT_END


def test_prefix_cache_equals_uncached_with_history_and_past_max_len():
    model, params = random_model(max_len=64)
    prefix = np.arange(10, dtype=np.int32) % 31
    generator = generation.Generator(
        model, params, vocab(), sampling.SamplingConfig(max_new_tokens=30), stop_texts=()
    )
    generator.cache_prefix(vocab().decode(prefix))
    for extra in (1, 20, 40):
        prompt = np.concatenate([prefix, np.arange(extra, dtype=np.int32) % 29])
        cached, _ = generator.generate_tokens(prompt)
        reference = generation.generate_uncached(model, params, prompt, 30, ())
        np.testing.assert_array_equal(cached, reference)


def test_every_chat_prompt_starts_with_the_system_prefix():
    assert dialogs.render_prompt("x", "S").startswith(dialogs.system_prefix("S"))
    assert dialogs.render_prompt("x", "S", (("a", "b"),)).startswith(dialogs.system_prefix("S"))


def test_bucket_lengths():
    lengths = [generation.bucket_length(n, 512) for n in (1, 20, 33, 64, 65, 97, 300, 512)]
    assert lengths == [32, 32, 64, 64, 96, 128, 320, 512]
    assert generation.bucket_length(40, 32) == 32


LOGITS = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))


def draw(cfg, count=400):
    keys = jax.random.split(jax.random.key(cfg.seed), count)
    return np.asarray(jax.vmap(lambda k: sampling.pick(LOGITS, k, cfg))(keys))


def test_zero_temperature_and_top_k_one_are_greedy():
    assert set(draw(sampling.SamplingConfig(temperature=0.0))) == {0}
    assert set(draw(sampling.SamplingConfig(temperature=1.0, top_k=1))) == {0}


def test_top_p_at_or_near_zero_is_greedy_at_any_temperature():
    for top_p in (0.0, 1e-9, 1e-6):
        assert set(draw(sampling.SamplingConfig(temperature=1.0, top_p=top_p))) == {0}
        rows = sampling.sample_rows(
            jnp.tile(LOGITS, (400, 1)),
            jnp.arange(400, dtype=jnp.uint32),
            jnp.zeros(400, jnp.int32),
            jnp.full(400, 2.0),
            jnp.full(400, top_p),
            0,
        )
        assert set(np.asarray(rows).tolist()) == {0}


def test_the_engine_rows_and_the_repl_draw_by_the_same_rule():
    """sample_rows (serving) and pick (REPL, sample mode) give the same token for the same
    key, whatever the temperature, top-k and top-p."""
    for temperature, top_k, top_p in ((0.7, 0, 1.0), (1.0, 2, 1.0), (1.3, 0, 0.8), (0.0, 0, 1.0)):
        cfg = sampling.SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
        seeds, draws = jnp.arange(64, dtype=jnp.uint32), jnp.arange(64, dtype=jnp.int32) % 5
        rows = sampling.sample_rows(
            jnp.tile(LOGITS, (64, 1)),
            seeds,
            draws,
            jnp.full(64, temperature),
            jnp.full(64, top_p),
            top_k,
        )
        keys = jax.vmap(lambda s, d: jax.random.fold_in(jax.random.key(s), d))(seeds, draws)
        picked = jax.vmap(lambda k, c=cfg: sampling.pick(LOGITS, k, c))(keys)
        np.testing.assert_array_equal(np.asarray(rows), np.asarray(picked))


def test_rows_that_cut_and_rows_that_do_not_sample_together_as_each_alone():
    top_p = jnp.array([1.0, 0.7, 1.0, 0.9] * 16)
    seeds, draws = jnp.arange(64, dtype=jnp.uint32), jnp.zeros(64, jnp.int32)
    together = sampling.sample_rows(jnp.tile(LOGITS, (64, 1)), seeds, draws, jnp.ones(64), top_p, 0)
    for row in range(4):
        cfg = sampling.SamplingConfig(temperature=1.0, top_p=float(top_p[row]))
        alone = sampling.pick(LOGITS, jax.random.fold_in(jax.random.key(seeds[row]), 0), cfg)
        assert int(together[row]) == int(alone)


def test_top_k_and_top_p_restrict_the_support():
    assert set(draw(sampling.SamplingConfig(temperature=1.0))) == {0, 1, 2, 3}
    assert set(draw(sampling.SamplingConfig(temperature=1.0, top_k=2))) == {0, 1}
    assert set(draw(sampling.SamplingConfig(temperature=1.0, top_p=0.7))) == {0, 1}
    assert set(draw(sampling.SamplingConfig(temperature=1.0, top_p=0.9))) == {0, 1, 2}


def test_a_fixed_seed_reproduces_the_sample():
    model, params = random_model()
    prompt = np.arange(20, dtype=np.int32) % 31

    def sample(seed):
        cfg = sampling.SamplingConfig(temperature=1.0, seed=seed, max_new_tokens=40)
        return generation.Generator(model, params, vocab(), cfg, stop_texts=()).generate_tokens(
            prompt
        )[0]

    np.testing.assert_array_equal(sample(3), sample(3))
    assert not np.array_equal(sample(3), sample(4))
