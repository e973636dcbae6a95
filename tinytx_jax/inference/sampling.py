"""The one sampler: how a token is picked from logits, for the REPL, sampling and serving.

The rules: temperature 0, top_k 1, or top_p at or near 0 is greedy (the argmax); otherwise
the logits are divided by the temperature, cut to the `top_k` most likely (0: off), then
to the smallest set of most likely tokens whose probability reaches `top_p` (always at
least the most likely one), and a token is drawn from what is left. Every draw has its own
key, so a reply's n-th token depends only on its seed and n, never on other requests.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tinytx_jax.text.vocabulary import Vocabulary

GREEDY_TOP_P = 1e-6  # top_p at or below this keeps only the most likely token: greedy


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How tokens are picked; temperature 0 means greedy (the seed's decoding)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = 200

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1 or self.top_p <= GREEDY_TOP_P


def sample_token(
    logits_V: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    top_k: int,
    nucleus: bool = True,
) -> jax.Array:
    """One token id from `[V]` logits; `temperature` and `top_p` may be traced values.
    `nucleus=False` promises `top_p >= 1` (no cut), so the sort it needs is not compiled."""
    greedy = jnp.argmax(logits_V).astype(jnp.int32)
    scaled_V = logits_V.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    if 0 < top_k < scaled_V.shape[0]:
        kth_largest = jax.lax.top_k(scaled_V, top_k)[0][-1]
        scaled_V = jnp.where(scaled_V < kth_largest, -jnp.inf, scaled_V)
    if nucleus:
        scaled_V = jnp.where(top_p < 1, top_p_cut(scaled_V, top_p), scaled_V)
    sampled = jax.random.categorical(key, scaled_V).astype(jnp.int32)
    return jnp.where((temperature > 0) & (top_p > GREEDY_TOP_P) & (top_k != 1), sampled, greedy)


def top_p_cut(scaled_V: jax.Array, top_p: jax.Array) -> jax.Array:
    """The logits outside the smallest set of most likely tokens whose probability
    reaches `top_p` (always at least the most likely one) set to -inf."""
    descending_V = jnp.sort(scaled_V)[::-1]
    probs_V = jax.nn.softmax(descending_V)
    kept = jnp.maximum(jnp.sum(jnp.cumsum(probs_V) - probs_V < top_p), 1)
    return jnp.where(scaled_V < descending_V[kept - 1], -jnp.inf, scaled_V)


def pick(logits_V: jax.Array, key: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """`sample_token` with a fixed config; a greedy one compiles to a plain argmax."""
    if cfg.greedy:
        return jnp.argmax(logits_V).astype(jnp.int32)
    return sample_token(
        logits_V, key, jnp.float32(cfg.temperature), jnp.float32(cfg.top_p), cfg.top_k
    )


def sample_rows(
    logits_NxV: jax.Array,
    seeds_N: jax.Array,
    draws_N: jax.Array,
    temperatures_N: jax.Array,
    top_p_N: jax.Array,
    top_k: int,
) -> jax.Array:
    """One token per row, each row with its own seed, draw number, temperature and top-p:
    row i's token is drawn with `fold_in(key(seeds_N[i]), draws_N[i])`. The top-p sort
    runs only when some row cuts (under vmap a per-row skip would still compute it)."""

    def rows(nucleus: bool) -> jax.Array:
        def row(logits_V, seed, draw, temperature, top_p):
            key = jax.random.fold_in(jax.random.key(seed), draw)
            return sample_token(logits_V, key, temperature, top_p, top_k, nucleus)

        return jax.vmap(row)(logits_NxV, seeds_N, draws_N, temperatures_N, top_p_N)

    return jax.lax.cond(jnp.any(top_p_N < 1), lambda: rows(True), lambda: rows(False))


def usable_stop_texts(stop_texts: tuple[str, ...], vocab: Vocabulary) -> tuple[str, ...]:
    """The stop texts a model of `vocab` can produce at all."""
    return tuple(t for t in stop_texts if t and not vocab.unknown_chars(t))


def stop_prefixes(stop_texts: tuple[str, ...]) -> frozenset[str]:
    """Every proper beginning of a stop text: what a reply may not show yet."""
    return frozenset(stop[:n] for stop in stop_texts for n in range(1, len(stop)))


def held_back(text: str, prefixes: frozenset[str]) -> int:
    """How many trailing characters of `text` could still become a stop text."""
    longest = min(max(map(len, prefixes), default=0), len(text))
    return next((n for n in range(longest, 0, -1) if text[-n:] in prefixes), 0)
